"""Scores of held-out cities from confusion counts at every candidate threshold.

Counts are (tp, fp, fn, tn) rows, one per threshold of THRESHOLDS; cross-validation records
them per city (ablations.folds), and everything here chooses and scores from them. NumPy
only, so reports read them without loading TensorFlow.
"""
from __future__ import annotations

import numpy as np

from zoo.metrics import Confusion

THRESHOLDS = np.round(np.arange(0.20, 0.81, 0.05), 2)


def building_iou(counts: np.ndarray) -> np.ndarray:
    """Building IoU over the last axis of (..., 4) counts."""
    counts = np.asarray(counts)
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    return np.divide(tp, tp + fp + fn, out=np.zeros(tp.shape), where=(tp + fp + fn) > 0)


def scores(counts) -> dict:
    """Precision, recall, building IoU, mean IoU ... from one (tp, fp, fn, tn) row."""
    return Confusion(*(int(c) for c in counts)).scores()


def leave_one_out(counts_by_city: dict) -> dict[str, dict]:
    """Each city scored at the threshold with the best mean building IoU over the *other*
    cities. counts_by_city: city -> (thresholds, 4)."""
    iou = {city: building_iou(counts) for city, counts in counts_by_city.items()}
    rows = {}
    for city, counts in counts_by_city.items():
        others = [iou[c] for c in counts_by_city if c != city] or [iou[city]]
        best = int(np.argmax(np.mean(others, axis=0)))
        rows[city] = {"threshold": float(THRESHOLDS[best]), **scores(np.asarray(counts)[best])}
    return rows


def best_threshold(counts_by_city: dict) -> float:
    """The threshold with the best mean building IoU over every city."""
    return float(THRESHOLDS[int(np.argmax(np.mean([building_iou(c) for c in counts_by_city.values()], axis=0)))])


def mean_of(rows: dict[str, dict]) -> dict:
    keys = ("precision", "recall", "building_iou", "mean_iou")
    return {k: float(np.mean([r[k] for r in rows.values()])) for k in keys}
