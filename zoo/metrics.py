"""The one definition of every metric: pixel confusion counts summed over a whole set.

accuracy = (TP+TN)/all, precision = TP/(TP+FP), recall = TP/(TP+FN),
building IoU = TP/(TP+FP+FN), background IoU = TN/(TN+FN+FP),
mean IoU = (building IoU + background IoU)/2 (what keras.metrics.MeanIoU(num_classes=2) reports),
F1 = 2PR/(P+R).
A ratio whose denominator is zero is 0.0, except per-image IoU, where an image whose truth and
prediction are both empty scores 1.0 (nothing to find, nothing found).

`FORMULAS` holds each metric as (numerator, denominator) of the counts; the numpy
accumulator used by evaluation and the client, and the Keras metric used in training, both
read it, so they cannot drift apart.

Building level (the footprint community's rule: SpaceNet, RAMP, fAIr): the buildings of a mask
are its 8-connected components. A predicted building is a true positive when its IoU with a
still-unmatched true building is at least 0.5, one to one; unmatched predicted buildings are
false positives, unmatched true ones false negatives. `BuildingCounts` sums tp, fp, fn and the
matched IoUs over images like `Confusion`, then: building precision = TP/(TP+FP), building
recall = TP/(TP+FN), building F1 = 2TP/(2TP+FP+FN), matched IoU = mean IoU of the matched pairs
(0.0 when a denominator is zero, as above).
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

FORMULAS = {
    "accuracy": lambda c: (c["tp"] + c["tn"], c["tp"] + c["tn"] + c["fp"] + c["fn"]),
    "precision": lambda c: (c["tp"], c["tp"] + c["fp"]),
    "recall": lambda c: (c["tp"], c["tp"] + c["fn"]),
    "building_iou": lambda c: (c["tp"], c["tp"] + c["fp"] + c["fn"]),
    "background_iou": lambda c: (c["tn"], c["tn"] + c["fp"] + c["fn"]),
    "f1": lambda c: (2 * c["tp"], 2 * c["tp"] + c["fp"] + c["fn"]),  # = 2PR/(P+R)
}
METRIC_NAMES = ("accuracy", "precision", "recall", "building_iou", "mean_iou", "f1")


@dataclasses.dataclass
class Confusion:
    """Pixel confusion counts, int64 so a large evaluation set cannot overflow."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def update(self, truth, prediction) -> Confusion:
        counts = confusion_counts(truth, prediction)
        for key, value in counts.items():
            setattr(self, key, getattr(self, key) + value)
        return self

    def scores(self) -> dict[str, float]:
        counts = dataclasses.asdict(self)
        ratios = {name: _safe_ratio(*formula(counts)) for name, formula in FORMULAS.items()}
        ratios["mean_iou"] = (ratios["building_iou"] + ratios["background_iou"]) / 2
        return {name: ratios[name] for name in METRIC_NAMES}


def confusion_counts(truth, prediction) -> dict[str, int]:
    truth = _as_bool(truth, "truth")
    prediction = _as_bool(prediction, "prediction")
    if truth.shape != prediction.shape:
        raise ValueError(f"truth shape {truth.shape} != prediction shape {prediction.shape}")
    tp = int(np.count_nonzero(truth & prediction))
    fp = int(np.count_nonzero(prediction)) - tp
    fn = int(np.count_nonzero(truth)) - tp
    return {"tp": tp, "fp": fp, "fn": fn, "tn": int(truth.size) - tp - fp - fn}


def per_image_iou(truth, prediction) -> float:
    """Building IoU of one image; 1.0 when truth and prediction are both empty."""
    counts = confusion_counts(truth, prediction)
    union = counts["tp"] + counts["fp"] + counts["fn"]
    return 1.0 if union == 0 else counts["tp"] / union


def iou_distribution(ious) -> dict[str, float]:
    ious = np.asarray(list(ious), dtype=float)
    if ious.size == 0:
        return {"n": 0}
    q10, q25, q50, q75, q90 = np.percentile(ious, [10, 25, 50, 75, 90])
    return {
        "n": int(ious.size),
        "mean": float(ious.mean()),
        "p10": q10,
        "p25": q25,
        "median": q50,
        "p75": q75,
        "p90": q90,
    }


def summarise(pairs) -> dict:
    """Summed-count scores plus the per-image building IoU distribution, for an iterable of
    (truth, prediction) masks: one pass, so predictions can be produced lazily."""
    confusion, ious = Confusion(), []
    for truth, prediction in pairs:
        confusion.update(truth, prediction)
        ious.append(per_image_iou(truth, prediction))
    return {**confusion.scores(), "image_iou": iou_distribution(ious)}


# ---------------------------------------------------------------- building level

BUILDING_MATCH_IOU = 0.5
BUILDING_METRIC_NAMES = ("building_precision", "building_recall", "building_f1", "matched_iou")


@dataclasses.dataclass
class BuildingCounts:
    """Matched (tp), unmatched predicted (fp) and unmatched true (fn) buildings, and the sum of
    the matched pairs' IoU (for their mean), summed over every image seen."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    matched_iou_sum: float = 0.0

    @classmethod
    def of(cls, truth, prediction, min_pixels: int = 0) -> BuildingCounts:
        """The counts of one image; buildings under `min_pixels` pixels, on either side, are
        ignored (neither found nor missed)."""
        truth_labels = label_buildings(truth, min_pixels, "truth")
        predicted_labels = label_buildings(prediction, min_pixels, "prediction")
        if truth_labels.shape != predicted_labels.shape:
            raise ValueError(f"truth shape {truth_labels.shape} != prediction shape {predicted_labels.shape}")
        matches = match_buildings(truth_labels, predicted_labels)
        return cls(
            tp=len(matches),
            fp=int(predicted_labels.max(initial=0)) - len(matches),
            fn=int(truth_labels.max(initial=0)) - len(matches),
            matched_iou_sum=float(sum(iou for _, _, iou in matches)),
        )

    def update(self, truth, prediction, min_pixels: int = 0) -> BuildingCounts:
        image = BuildingCounts.of(truth, prediction, min_pixels)
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(image, field.name))
        return self

    def __add__(self, other: BuildingCounts) -> BuildingCounts:
        return BuildingCounts(
            **{
                field.name: getattr(self, field.name) + getattr(other, field.name)
                for field in dataclasses.fields(self)
            }
        )

    def scores(self) -> dict[str, float]:
        return {
            "building_precision": _safe_ratio(self.tp, self.tp + self.fp),
            "building_recall": _safe_ratio(self.tp, self.tp + self.fn),
            "building_f1": _safe_ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn),
            "matched_iou": _safe_ratio(self.matched_iou_sum, self.tp),
        }


def label_buildings(mask, min_pixels: int = 0, what: str = "mask") -> np.ndarray:
    """int32 labels of the mask's 8-connected components, 1..n with no gaps; 0 is background,
    and so is every component under `min_pixels` pixels."""
    mask = _as_bool(mask, what)
    if mask.ndim != 2:
        raise ValueError(f"{what} must be H x W or H x W x 1, got shape {mask.shape}")
    if not mask.any():  # also spares OpenCV an empty array
        return np.zeros(mask.shape, np.int32)
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    if min_pixels <= 0:
        return labels
    kept = np.bincount(labels.ravel(), minlength=count) >= min_pixels
    kept[0] = False
    renumbered = np.zeros(count, np.int32)
    renumbered[kept] = np.arange(1, int(kept.sum()) + 1, dtype=np.int32)
    return renumbered[labels]


def overlap_ious(truth_labels, predicted_labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(predicted label, true label, IoU) arrays for every pair of buildings sharing a pixel,
    exact from pixel counts. The contingency table is built from the overlapping pixels alone
    (np.unique of pair codes), so a scene with thousands of buildings never allocates a dense
    predicted x true matrix."""
    truth_labels = np.asarray(truth_labels, np.int64)
    predicted_labels = np.asarray(predicted_labels, np.int64)
    both = (truth_labels > 0) & (predicted_labels > 0)
    true_count = int(truth_labels.max(initial=0)) + 1
    codes, intersections = np.unique(
        predicted_labels[both] * true_count + truth_labels[both], return_counts=True
    )
    predicted, true = np.divmod(codes, true_count)
    unions = (
        np.bincount(predicted_labels.ravel())[predicted]
        + np.bincount(truth_labels.ravel())[true]
        - intersections
    )
    return predicted, true, intersections / unions


def match_buildings(
    truth_labels, predicted_labels, iou_threshold: float = BUILDING_MATCH_IOU
) -> list[tuple[int, int, float]]:
    """One-to-one (predicted label, true label, IoU) matches with IoU >= `iou_threshold`.

    Greedy over the candidate pairs in descending IoU, ties by lower predicted label, then
    lower true label. At the 0.5 threshold the order cannot matter: if a predicted building P
    had IoU >= 0.5 with two true buildings T1 and T2 (disjoint), then |P & Ti| >= |P | Ti| / 2
    >= |P| / 2 for both; the two intersections fit in P only if each is exactly |P| / 2 and
    |P | Ti| = |P|, that is P = T1 | T2. But T1 and T2 are separate 8-connected components, so
    their union is not connected and cannot be the component P. The same holds with the roles
    swapped (and with `min_pixels`, which only drops whole components), so every building has
    at most one candidate. Below 0.5 the order decides, and is the one above.
    """
    predicted, true, ious = overlap_ious(truth_labels, predicted_labels)
    keep = ious >= iou_threshold
    predicted, true, ious = predicted[keep], true[keep], ious[keep]
    matches, used_predicted, used_true = [], set(), set()
    for index in np.lexsort((true, predicted, -ious)):
        p, t = int(predicted[index]), int(true[index])
        if p not in used_predicted and t not in used_true:
            matches.append((p, t, float(ious[index])))
            used_predicted.add(p)
            used_true.add(t)
    return matches


def _safe_ratio(numerator, denominator) -> float:
    return float(numerator) / float(denominator) if denominator else 0.0


def _as_bool(array, what: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return array.astype(bool)


def keras_metrics(threshold: float = 0.5):
    """Training metrics on logits, one per name in METRIC_NAMES (imported lazily: keras is heavy)."""
    from zoo.keras_metrics import PixelMetric  # deferred: Keras is heavy, and it imports this module

    return [PixelMetric(name, threshold=threshold) for name in METRIC_NAMES]
