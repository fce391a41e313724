"""Scores of held-out cities from confusion counts at every candidate threshold.

Counts are (tp, fp, fn, tn) rows, one per threshold of THRESHOLDS; cross-validation records
them per city (training.folds), and everything here chooses and scores from them. NumPy
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
    return float(
        THRESHOLDS[int(np.argmax(np.mean([building_iou(c) for c in counts_by_city.values()], axis=0)))]
    )


def mean_of(rows: dict[str, dict]) -> dict:
    keys = ("precision", "recall", "building_iou", "mean_iou")
    return {k: float(np.mean([r[k] for r in rows.values()])) for k in keys}


FIXED = 0.5  # the threshold of a probability that means what it says, chosen on no city


def threshold_index(threshold: float = FIXED) -> int:
    """The row of a (thresholds, 4) counts array that holds `threshold` (one of THRESHOLDS)."""
    return int(np.flatnonzero(np.isclose(THRESHOLDS, threshold))[0])


def at_threshold(counts_by_city: dict, threshold: float = FIXED) -> dict[str, dict]:
    """Each city scored at one fixed threshold."""
    index = threshold_index(threshold)
    return {
        city: {"threshold": float(threshold), **scores(np.asarray(counts)[index])}
        for city, counts in counts_by_city.items()
    }


def recorded_views(curve: dict) -> dict[str, dict]:
    """Test-time view set (zoo.predict's names) -> city -> its last epoch's counts, as a curve
    or a kept fold recorded them. Curves written before view sets had names kept the flips only."""
    if curve.get("views"):
        return curve["views"]
    return {"flips": curve["flips"]} if curve.get("flips") else {}


SCALES_MARK = "@"  # "transpose@1+0.5": the transpose views at scales 1 and 0.5, averaged


def scales_of(text: str) -> tuple[float, ...]:
    """ "1+0.5" -> (1.0, 0.5): a set of inference scales, each in (0, 1], none repeated."""
    scales = tuple(float(part) for part in text.split("+"))
    if not all(0 < s <= 1 for s in scales) or len(set(scales)) < len(scales):
        raise ValueError(f"{text!r}: scales must be distinct numbers in (0, 1], joined by '+'")
    return scales


def option_of(name: str) -> tuple[str, tuple[float, ...]]:
    """A recorded option's test-time views and scales: "flips" -> ("flips", (1.0,))."""
    views, _, scales = name.partition(SCALES_MARK)
    return views, scales_of(scales) if scales else (1.0,)


def option_name(views: str, scales=(1.0,)) -> str:
    """The name of test-time views at scales: "transpose", "none@1+0.5" (option_of's inverse)."""
    scales = tuple(float(s) for s in scales)
    return views if scales == (1.0,) else f"{views}{SCALES_MARK}{'+'.join(f'{s:g}' for s in scales)}"


def option_names(views: list[str], scale_sets: list[tuple[float, ...]]) -> list[str]:
    """What cross-validation scores besides one view at scale 1: each view set at scale 1, and
    each scale set with no views and with each view set."""
    scale_sets = [scales for scales in scale_sets if tuple(scales) != (1.0,)]
    return [*views, *(option_name(v, scales) for scales in scale_sets for v in ("none", *views))]


def summed_counts(curves: list[dict], counts_of) -> dict[str, np.ndarray]:
    """City -> the counts `counts_of(curve)[city]` summed over the curves (the seeds)."""
    return {
        city: np.sum([np.asarray(counts_of(curve)[city]) for curve in curves], axis=0)
        for city in counts_of(curves[0])
    }


def serving_options(curve: dict) -> dict[str, dict]:
    """Every way to serve a learning curve's recipe, each with its per-city rows (settings
    never chosen on the row's own city) and what it serves: epochs, threshold, views.

    - "plain": epoch and threshold chosen on the other cities (training.fit.curve_record);
    - "plain, 0.5": the schedule's last epoch at the fixed threshold 0.5;
    - "NAME" and "NAME, 0.5" for every option recorded (last epoch): a test-time view set
      ("flips"; at scale 1,
      or at several scales ("none@1+0.5", with `--scales`)."""
    last_epoch = curve["curve_epochs"]
    last = {city: np.asarray(fold["counts"])[-1] for city, fold in curve["folds"].items()}
    per_pass = {}
    options = {
        "plain": {
            "per_city": curve["per_city"],
            "epochs": curve["chosen"]["epochs"],
            "threshold": curve["chosen"]["threshold"],
            "tta": "none",
            "scales": [1.0],
            **per_pass,
        },
        f"plain, {FIXED}": {
            "per_city": at_threshold(last),
            "epochs": last_epoch,
            "threshold": FIXED,
            "tta": "none",
            "scales": [1.0],
            **per_pass,
        },
    }
    for name, counts_by_city in recorded_views(curve).items():
        counts = {city: np.asarray(c) for city, c in counts_by_city.items()}
        tta, scales = option_of(name)
        served = {"epochs": last_epoch, "tta": tta, "scales": list(scales), **per_pass}
        options[name] = {"per_city": leave_one_out(counts), "threshold": best_threshold(counts), **served}
        options[f"{name}, {FIXED}"] = {"per_city": at_threshold(counts), "threshold": FIXED, **served}
    return options


def option_left_out(curve: dict, max_passes: float | None = None) -> dict[str, dict]:
    """Each city scored under the serving option (within `max_passes`) that the *other*
    cities score best on average: city -> {"rule": that option, **its row}. best_option
    chooses one option on every city, so each city's row there helped choose how it is served;
    here nothing is chosen on the row's city, nested all the way down: where an option
    chooses its threshold on the other cities, the other cities' rows that rank it choose
    theirs without the held-out city too. "plain", whose epoch is chosen as well, is left out.
    With three cities, the option is chosen on two."""
    options = {
        name: option
        for name, option in serving_options(curve).items()
        if name != "plain" and (max_passes is None or passes_of(option) <= max_passes)
    }
    recorded = recorded_views(curve)
    rows = {}
    for city in curve["per_city"]:
        others = [c for c in curve["per_city"] if c != city]

        def others_mean(name: str) -> float:
            if name in recorded and others:  # threshold chosen on the other cities: again without `city`
                ranked = leave_one_out({c: np.asarray(recorded[name][c]) for c in others})
            else:
                ranked = {c: options[name]["per_city"][c] for c in (others or [city])}
            return float(np.mean([row["building_iou"] for row in ranked.values()]))

        name = max(options, key=lambda n: (others_mean(n), -list(options).index(n)))
        rows[city] = {"rule": name, "epochs": options[name]["epochs"], **options[name]["per_city"][city]}
    return rows


# The served model's latency budget, in passes of the network an image: a single 256 px
# request must be answered within 25 ms on the 2-core machine (issue 16), and one full-size
# pass costs about 6 ms of the 21 ms that two take through LiteRT end to end
# (results/bench.md). training.fit reads it.
SERVED_MAX_PASSES = 2.0


def passes_of(option: dict) -> float:
    """How much of the network a serving option runs per image, in full-size passes: one per
    test-time view at each scale, a pass at scale s counting s² (its pixels), times what the
    model itself runs on each image it is given."""
    return len(TTA_VIEW_INDICES[option["tta"]]) * sum(s * s for s in option.get("scales", (1.0,)))


def best_option(curve: dict, max_passes: float | None = None) -> tuple[str, dict]:
    """The serving option with the best mean per-city building IoU (the first on a tie), among
    those that cost at most `max_passes` passes per image (None: any)."""
    options = {
        name: option
        for name, option in serving_options(curve).items()
        if max_passes is None or passes_of(option) <= max_passes
    }
    name = max(
        options, key=lambda n: (mean_of(options[n]["per_city"])["building_iou"], -list(options).index(n))
    )
    return name, options[name]
