"""Scoring an adapted model on a city's held-out ground, and whether that ground chooses a
better threshold and scales than the parent's.

Pixel counts are summed over the tiles, then scored (zoo.metrics); buildings are matched one
by one (zoo.metrics.BuildingCounts). A held-out choice only replaces the parent's threshold
and scales when it beats them there by CHOICE_MARGIN of building IoU: a few hundred tiles
can rank two close settings either way.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from training.heldout import THRESHOLDS, passes_of
from zoo.metrics import BuildingCounts, Confusion
from zoo.predict import Segmenter

CHOICE_MARGIN = 0.005
# Scale sets a held-out choice may serve (each within the served latency budget of two
# full-size passes a request, training.heldout.SERVED_MAX_PASSES).
CANDIDATE_SCALES = ((1.0,), (1.0, 0.5))


@dataclasses.dataclass(frozen=True)
class Serving:
    threshold: float
    tta: str
    scales: tuple[float, ...]

    def as_metadata(self) -> dict:
        return {"threshold": self.threshold, "tta": self.tta, "scales": list(self.scales)}


def serving_of(metadata: dict) -> Serving:
    inference = metadata.get("inference") or {}
    return Serving(
        float(inference.get("threshold", metadata.get("threshold", 0.5))),
        inference.get("tta", "none"),
        tuple(float(s) for s in inference.get("scales", (1.0,))),
    )


def scale_probabilities(model, images: np.ndarray, tta: str, scales) -> dict[float, np.ndarray]:
    """Scale -> every tile's probabilities predicted at that scale (Segmenter.probabilities_at,
    with the test-time views `tta`), at the tiles' own size."""
    segmenter = Segmenter(model, tta=tta)
    return {
        float(scale): np.stack([segmenter.probabilities_at(image, float(scale)) for image in images])
        for scale in scales
    }


def combined(by_scale: dict[float, np.ndarray], scales) -> np.ndarray:
    """The probabilities served at `scales`: the mean of each scale's (Segmenter.probabilities)."""
    return np.mean([by_scale[float(s)] for s in scales], axis=0)


def pixel_scores(probs: np.ndarray, masks: np.ndarray, threshold: float) -> dict:
    return Confusion().update(masks, probs >= threshold).scores()


def building_scores(probs: np.ndarray, masks: np.ndarray, threshold: float, min_pixels=None) -> dict:
    """Building precision, recall, F1 over the tiles; `min_pixels` (one per tile) drops smaller
    buildings on both sides."""
    counts = BuildingCounts()
    minimum = np.zeros(len(masks), int) if min_pixels is None else np.asarray(min_pixels)
    for truth, prob, pixels in zip(masks, probs, minimum):
        counts.update(truth, prob >= threshold, min_pixels=int(pixels))
    return counts.scores()


def candidate_scales(parent: Serving) -> list[tuple[float, ...]]:
    """The parent's scales first, then the others; only the parent's when it serves test-time
    views (their cost with more scales would leave the latency budget)."""
    if parent.tta != "none":
        return [parent.scales]
    others = [s for s in CANDIDATE_SCALES if s != parent.scales]
    return [parent.scales, *[s for s in others if passes_of({"tta": "none", "scales": s}) <= 2.0]]


def choose_serving(by_scale: dict[float, np.ndarray], masks: np.ndarray, parent: Serving) -> dict:
    """The parent's serving kept, or the scales and threshold (of training.heldout.THRESHOLDS)
    with the best held-out building IoU when it beats the parent's by CHOICE_MARGIN. Returns
    {"serving", "kept" (bool), "parent_setting_iou", "best_iou", "best"}."""
    kept_iou = pixel_scores(combined(by_scale, parent.scales), masks, parent.threshold)["building_iou"]
    best, best_iou = parent, kept_iou
    for scales in candidate_scales(parent):
        probs = combined(by_scale, scales)
        for threshold in THRESHOLDS:
            iou = pixel_scores(probs, masks, float(threshold))["building_iou"]
            if iou > best_iou:
                best, best_iou = Serving(float(threshold), parent.tta, scales), iou
    keep = best_iou < kept_iou + CHOICE_MARGIN
    return {
        "serving": parent if keep else best,
        "kept": keep,
        "parent_setting_iou": kept_iou,
        "best_iou": best_iou,
        "best": best.as_metadata(),
    }


def scored(by_scale: dict[float, np.ndarray], masks: np.ndarray, serving: Serving) -> dict:
    """Pixel and building scores of the tiles under `serving`."""
    probs = combined(by_scale, serving.scales)
    return {
        **pixel_scores(probs, masks, serving.threshold),
        **building_scores(probs, masks, serving.threshold),
    }
