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
"""
from __future__ import annotations

import dataclasses

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

    def update(self, truth, prediction) -> "Confusion":
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
    return {"n": int(ious.size), "mean": float(ious.mean()), "p10": q10, "p25": q25,
            "median": q50, "p75": q75, "p90": q90}


def summarise(pairs) -> dict:
    """Summed-count scores plus the per-image building IoU distribution, for an iterable of
    (truth, prediction) masks: one pass, so predictions can be produced lazily."""
    confusion, ious = Confusion(), []
    for truth, prediction in pairs:
        confusion.update(truth, prediction)
        ious.append(per_image_iou(truth, prediction))
    return {**confusion.scores(), "image_iou": iou_distribution(ious)}


def _safe_ratio(numerator, denominator) -> float:
    return float(numerator) / float(denominator) if denominator else 0.0


def _as_bool(array, what: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return array.astype(bool)


def keras_metrics(threshold: float = 0.5):
    """Training metrics on logits, one per name in METRIC_NAMES (imported lazily: keras is heavy)."""
    from zoo.keras_metrics import PixelMetric

    return [PixelMetric(name, threshold=threshold) for name in METRIC_NAMES]
