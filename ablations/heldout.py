"""Scores of held-out cities from confusion counts at every candidate threshold.

Counts are (tp, fp, fn, tn) rows, one per threshold of THRESHOLDS; cross-validation records
them per city (ablations.folds), and everything here chooses and scores from them. NumPy
only, so reports read them without loading TensorFlow.
"""
from __future__ import annotations

import numpy as np

from zoo.metrics import Confusion
from zoo.predict import TTA_VIEW_INDICES

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


def recorded_views(curve: dict) -> dict[str, dict]:
    """Test-time view set (zoo.predict's names) -> city -> its last epoch's counts, as a curve
    or a kept fold recorded them. Curves written before view sets had names kept the flips only."""
    if curve.get("views"):
        return curve["views"]
    return {"flips": curve["flips"]} if curve.get("flips") else {}


def summed_counts(curves: list[dict], counts_of) -> dict[str, np.ndarray]:
    """City -> the counts `counts_of(curve)[city]` summed over the curves (the seeds)."""
    return {city: np.sum([np.asarray(counts_of(curve)[city]) for curve in curves], axis=0)
            for city in counts_of(curves[0])}


def serving_options(curve: dict) -> dict[str, dict]:
    """Every way to serve a learning curve's recipe, each with its per-city rows (settings
    never chosen on the row's own city) and what it serves: epochs, threshold, views.

    - "plain": epoch and threshold chosen on the other cities (ablations.final.curve_record);
    - "plain, 0.5": the schedule's last epoch at the fixed threshold 0.5;
    - "VIEWS" and "VIEWS, 0.5" for every test-time view set recorded (last epoch): "flips",
      and with `--views` also "rot180", "transpose", "dihedral"."""
    last_epoch = curve["curve_epochs"]
    last = {city: np.asarray(fold["counts"])[-1] for city, fold in curve["folds"].items()}
    options = {
        "plain": {"per_city": curve["per_city"], "epochs": curve["chosen"]["epochs"],
                  "threshold": curve["chosen"]["threshold"], "tta": "none"},
        f"plain, {FIXED}": {"per_city": at_threshold(last), "epochs": last_epoch, "threshold": FIXED, "tta": "none"},
    }
    for name, counts_by_city in recorded_views(curve).items():
        counts = {city: np.asarray(c) for city, c in counts_by_city.items()}
        options[name] = {"per_city": leave_one_out(counts), "epochs": last_epoch,
                         "threshold": best_threshold(counts), "tta": name}
        options[f"{name}, {FIXED}"] = {"per_city": at_threshold(counts), "epochs": last_epoch,
                                       "threshold": FIXED, "tta": name}
    return options


# The served model's latency budget, in views an image: a single 256 px request must be
# answered within 25 ms on the 2-core machine (issue 16), and one view costs about 6 ms of
# the 20 ms that two take through LiteRT end to end (results/bench.md). `ablations.fit
# --max-views` changes it.
SERVED_MAX_VIEWS = 2


def views_of(option: dict) -> int:
    """How many passes of the network a serving option runs per image: its test-time views."""
    return len(TTA_VIEW_INDICES[option["tta"]])


def best_option(curve: dict, max_views: int | None = None) -> tuple[str, dict]:
    """The serving option with the best mean per-city building IoU (the first on a tie), among
    those that run at most `max_views` views per image (None: any)."""
    options = {name: option for name, option in serving_options(curve).items()
               if max_views is None or views_of(option) <= max_views}
    name = max(options, key=lambda n: (mean_of(options[n]["per_city"])["building_iou"], -list(options).index(n)))
    return name, options[name]
