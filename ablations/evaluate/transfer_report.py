"""OUT/README.md of `python -m ablations.evaluate.transfer`: the variants side by side.

Every number is a held-out city's, at settings chosen on the *other* cities: the epoch and
threshold for a plain row (ablations.final.curve_record), the threshold for a row with
test-time flips or an ensemble (scored at the last epoch). Reads only JSON: no TensorFlow.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ablations.heldout import FIXED, at_threshold, leave_one_out, mean_of, serving_options

def load_curves(out: Path, names) -> dict[str, dict]:
    curves = {}
    for name in names:
        path = Path(out) / name / "curve.json"
        if path.is_file():
            curves[name] = json.loads(path.read_text())
    return curves


def variant_rows(curve: dict) -> dict[str, dict[str, dict]]:
    """Per-city rows of every serving option (ablations.heldout.serving_options)."""
    return {name: option["per_city"] for name, option in serving_options(curve).items()}


def render(out: Path, variants: dict, ensembles: list[str]) -> str:
    from tabulate import tabulate

    curves = load_curves(out, variants)
    lines = ["# What transfers to an unseen city: recipe variants under cross-validation by city", "",
             "Written by `python -m ablations.evaluate.transfer`. Each variant changes one thing of the "
             "served recipe (`selected`, or `os2` for an `os2_` variant: the served stride-2 decoder) and runs the final fit's learning curve: per city, one decoder "
             "trained on the other two cities (same seed, same cosine schedule), scored on the held-out "
             "city. Every row's settings are chosen on the *other* cities or on none, never on its own "
             "(see \"served as\" below). Pixel counts summed over the city; building IoU = TP/(TP+FP+FN).", ""]
    if not curves:
        return "\n".join(lines + ["No variant has finished yet.", ""])
    rows_of = {name: variant_rows(curve) for name, curve in curves.items()}
    base = rows_of.get("selected", {})
    summary, detail = [], []
    for name, options in rows_of.items():
        own_base = rows_of.get(variants[name].base, {})
        for kind, rows in options.items():
            summary.append({"variant": name, "served as": kind, **_summary_cells(rows, own_base.get(kind)),
                            "its base": variants[name].base})
            detail += [{"variant": name, "served as": kind, "held-out city": city, "threshold": f"{r['threshold']:.2f}",
                        "precision": f"{r['precision']:.3f}", "recall": f"{r['recall']:.3f}",
                        "building IoU": f"{r['building_iou']:.3f}", "mean IoU": f"{r['mean_iou']:.3f}"}
                       for city, r in rows.items()]
    whys = [f"- `{name}` ({curve['seconds'] / 60:.0f} min for its folds): {curve['why']}" for name, curve in curves.items()]
    lines += ["## Variants", "", *whys, "", "Served as: `plain` = each city at the epoch and threshold chosen on the "
              "other cities; `plain, 0.5` = last epoch at the fixed threshold 0.5 (chosen on no city); `flips` and "
              "`flips, 0.5` = the same with the four flips averaged (last epoch).", "",
              "## Summary (building IoU per held-out city)", "",
              tabulate(summary, headers="keys", tablefmt="github", disable_numparse=True), ""]
    lines += _label_noise_section(curves)
    lines += _ensemble_section(out, ensembles, base)
    lines += ["## Every row", "", tabulate(detail, headers="keys", tablefmt="github", disable_numparse=True), "",
              f"Machine: {next(iter(curves.values()))['machine']}. Epochs: {next(iter(curves.values()))['curve_epochs']} "
              "per fold. One seed per variant: earlier seed spreads (std 0.014-0.036 building IoU on one "
              "city, results/cross_city) bound what a difference can mean.", ""]
    return "\n".join(lines)


def _summary_cells(rows: dict[str, dict], selected_rows: dict[str, dict] | None) -> dict[str, str]:
    """A summary row's cells: building IoU per city, the means, and the difference from the
    base variant (`selected` for an ensemble) served the same way (blank without it)."""
    mean = mean_of(rows)
    versus = "" if selected_rows is None else f"{mean['building_iou'] - mean_of(selected_rows)['building_iou']:+.3f}"
    return {**{city: f"{row['building_iou']:.3f}" for city, row in rows.items()},
            "mean P": f"{mean['precision']:.3f}", "mean R": f"{mean['recall']:.3f}",
            "mean building IoU": f"{mean['building_iou']:.3f}", "vs base served alike": versus}


def _label_noise_section(curves: dict) -> list[str]:
    lines = []
    for name, curve in curves.items():
        if curve.get("recipe", {}).get("edge_band"):
            lines += [f"- `{name}`: what the edge band sets aside: [{name}/edge_band.png]({name}/edge_band.png)"]
        for held_out, fractions in (curve.get("set_aside") or {}).items():
            shares = ", ".join(f"{city} {100 * share:.1f} %" for city, share in fractions.items())
            lines += [f"- `{name}`, fold without {held_out}: label pixels set aside {shares} "
                      f"([picture]({name}/set_aside_{held_out}.png))"]
    return ["## What the label-noise remedies set aside", "", *lines, ""] if lines else []


def _ensemble_section(out: Path, ensembles: list[str], base: dict) -> list[str]:
    """Every ensemble asked for or scored earlier (OUT/ensembles/*.json), served as a variant
    with flips is: at the threshold chosen on the other cities, and at 0.5."""
    from tabulate import tabulate

    folder = Path(out) / "ensembles"
    found = sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []
    rows = []
    for name in dict.fromkeys([*ensembles, *found]):
        path = folder / f"{name}.json"
        if not path.is_file():
            continue
        counts = {c: np.asarray(v) for c, v in json.loads(path.read_text())["counts"].items()}
        for kind, per_city in (("flips", leave_one_out(counts)), (f"flips, {FIXED}", at_threshold(counts))):
            rows.append({"ensemble (probabilities averaged)": name, "served as": kind,
                         **_summary_cells(per_city, base.get(kind)), "its base": "selected"})
    if not rows:
        return []
    return ["## Ensembles of variants", "", "Each member's held-out probabilities (with flips, last epoch) "
            "averaged; training cost is the members' sum.", "", tabulate(rows, headers="keys", tablefmt="github", disable_numparse=True), ""]
