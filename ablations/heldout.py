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


FIXED = 0.5  # the threshold of a probability that means what it says, chosen on no city


def at_threshold(counts_by_city: dict, threshold: float = FIXED) -> dict[str, dict]:
    """Each city scored at one fixed threshold."""
    index = int(np.flatnonzero(np.isclose(THRESHOLDS, threshold))[0])
    return {city: {"threshold": float(threshold), **scores(np.asarray(counts)[index])}
            for city, counts in counts_by_city.items()}


def serving_options(curve: dict) -> dict[str, dict]:
    """Every way to serve a learning curve's recipe, each with its per-city rows (settings
    never chosen on the row's own city) and what it serves: epochs, threshold, views.

    - "plain": epoch and threshold chosen on the other cities (ablations.final.curve_record);
    - "plain, 0.5": the schedule's last epoch at the fixed threshold 0.5;
    - "flips" and "flips, 0.5": the same with test-time flips (last epoch), when recorded."""
    last_epoch = curve["curve_epochs"]
    last = {city: np.asarray(fold["counts"])[-1] for city, fold in curve["folds"].items()}
    options = {
        "plain": {"per_city": curve["per_city"], "epochs": curve["chosen"]["epochs"],
                  "threshold": curve["chosen"]["threshold"], "tta": "none"},
        f"plain, {FIXED}": {"per_city": at_threshold(last), "epochs": last_epoch, "threshold": FIXED, "tta": "none"},
    }
    if curve.get("flips"):
        flips = {city: np.asarray(counts) for city, counts in curve["flips"].items()}
        options["flips"] = {"per_city": leave_one_out(flips), "epochs": last_epoch,
                            "threshold": best_threshold(flips), "tta": "flips"}
        options[f"flips, {FIXED}"] = {"per_city": at_threshold(flips), "epochs": last_epoch,
                                      "threshold": FIXED, "tta": "flips"}
    return options


def best_option(curve: dict) -> tuple[str, dict]:
    """The serving option with the best mean per-city building IoU (the first on a tie)."""
    options = serving_options(curve)
    name = max(options, key=lambda n: (mean_of(options[n]["per_city"])["building_iou"], -list(options).index(n)))
    return name, options[name]
