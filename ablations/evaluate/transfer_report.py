"""OUT/README.md of `python -m ablations.evaluate.transfer`: the variants side by side.

Every number is a held-out city's, at settings chosen on the *other* cities: the epoch and
threshold for a plain row (ablations.final.curve_record), the threshold for a row with
test-time flips or an ensemble (scored at the last epoch). Reads only JSON: no TensorFlow.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from ablations.heldout import (FIXED, at_threshold, leave_one_out, mean_of, recorded_views, serving_options,
                               summed_counts)

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
              "`flips, 0.5` = the same with the four flips averaged (last epoch); `rot180`, `transpose`: the "
              "image and one other view (its half turn, its mirror across the diagonal); `dihedral`: all eight "
              "rotations and flips; `VIEWS@1+0.5`: those views at scales 1 and 0.5 (the image also predicted at "
              "half size), the probabilities averaged.", "",
              "## Summary (building IoU per held-out city)", "",
              tabulate(summary, headers="keys", tablefmt="github", disable_numparse=True), ""]
    lines += _seeds_section(curves, rows_of, variants)
    lines += _label_noise_section(curves)
    lines += _ensemble_section(out, ensembles, base)
    lines += ["## Every row", "", tabulate(detail, headers="keys", tablefmt="github", disable_numparse=True), "",
              f"Machine: {next(iter(curves.values()))['machine']}. Epochs: {next(iter(curves.values()))['curve_epochs']} "
              "per fold. A variant is one seed; the same recipe under other seeds (`NAME_seedK`) is pooled "
              "under \"Over seeds\", and the spread of its seeds bounds what a difference can mean.", ""]
    return "\n".join(lines)


def _summary_cells(rows: dict[str, dict], selected_rows: dict[str, dict] | None) -> dict[str, str]:
    """A summary row's cells: building IoU per city, the means, and the difference from the
    base variant (`selected` for an ensemble) served the same way (blank without it)."""
    mean = mean_of(rows)
    versus = "" if selected_rows is None else f"{mean['building_iou'] - mean_of(selected_rows)['building_iou']:+.3f}"
    return {**{city: f"{row['building_iou']:.3f}" for city, row in rows.items()},
            "mean P": f"{mean['precision']:.3f}", "mean R": f"{mean['recall']:.3f}",
            "mean building IoU": f"{mean['building_iou']:.3f}", "vs base served alike": versus}


SEED_SUFFIX = re.compile(r"_seed(\d+)$")


def seed_groups(curves: dict) -> dict[str, dict[int, str]]:
    """Recipe name -> {seed: variant name} for every recipe run under two seeds or more."""
    groups: dict[str, dict[int, str]] = {}
    for name, curve in curves.items():
        suffix = SEED_SUFFIX.search(name)  # the name says the seed even where an old curve does not
        seed = int(suffix.group(1)) if suffix else int(curve.get("seed") or 0)
        groups.setdefault(SEED_SUFFIX.sub("", name), {})[seed] = name
    return {recipe: dict(sorted(seeds.items())) for recipe, seeds in groups.items() if len(seeds) > 1}


def pooled_options(curves: list[dict]) -> dict[str, dict[str, dict]]:
    """Per-city rows of the serving options that need no epoch choice, on each city's
    confusion counts summed over the curves (the seeds): how `ablations.fit --curve-from`
    given several times pools them. `plain` is left out: it needs an epoch chosen on the other
    cities from the summed counts (ablations.final.pooled_curve), which this JSON-only report
    does not recompute."""
    last = summed_counts(curves, lambda curve: {city: np.asarray(fold["counts"])[-1]
                                                for city, fold in curve["folds"].items()})
    options = {f"plain, {FIXED}": at_threshold(last)}
    for name in recorded_views(curves[0]):
        if all(name in recorded_views(curve) for curve in curves):
            counts = summed_counts(curves, lambda curve: recorded_views(curve)[name])
            options.update({name: leave_one_out(counts), f"{name}, {FIXED}": at_threshold(counts)})
    return options


def _seeds_section(curves: dict, rows_of: dict, variants: dict) -> list[str]:
    """Each recipe over its seeds, set against its base over the same seeds. `rows_of`: each
    variant's serving options, as `render` computed them."""
    from tabulate import tabulate

    groups = seed_groups(curves)
    rows = []
    for recipe, names in groups.items():
        base = groups.get(variants[recipe].base, {}) if recipe in variants else {}
        shared = [seed for seed in names if seed in base]
        base_options = pooled_options([curves[base[seed]] for seed in shared]) if len(shared) > 1 else {}
        own_options = pooled_options([curves[names[seed]] for seed in shared]) if base_options else {}
        for kind, per_city in pooled_options([curves[n] for n in names.values()]).items():
            each = [mean_of(rows_of[n][kind])["building_iou"] for n in names.values()]
            cells = _summary_cells(per_city, None)
            if kind in base_options and kind in own_options:  # compared over the seeds both ran
                cells["vs base served alike"] = _summary_cells(own_options[kind], base_options[kind])["vs base served alike"]
            rows.append({"recipe": recipe, "seeds": ", ".join(map(str, names)), "served as": kind, **cells,
                         "each seed's mean": " / ".join(f"{v:.3f}" for v in each),
                         "its base, same seeds": (f"{variants[recipe].base} ({', '.join(map(str, shared))})"
                                                  if base_options else "")})
    if not rows:
        return []
    return ["## Over seeds (confusion counts summed)", "",
            "A recipe run under several seeds (`NAME`, `NAME_seed1`, ...), each city's counts summed over "
            "its seeds, as `ablations.fit --curve-from` pools them. \"vs base\" compares both over the seeds "
            "they share; a difference smaller than the spread of \"each seed's mean\" is no finding.", "",
            tabulate(rows, headers="keys", tablefmt="github", disable_numparse=True), ""]


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
        record = json.loads(path.read_text())
        for view, by_city in (record.get("views") or {"flips": record["counts"]}).items():  # older: flips only
            counts = {c: np.asarray(v) for c, v in by_city.items()}
            for kind, per_city in ((view, leave_one_out(counts)), (f"{view}, {FIXED}", at_threshold(counts))):
                rows.append({"ensemble (probabilities averaged)": name, "served as": kind,
                             **_summary_cells(per_city, base.get(kind)), "its base": "selected"})
    if not rows:
        return []
    return ["## Ensembles of variants", "", "Each member's held-out probabilities (under each view set, last "
            "epoch) averaged; training cost is the members' sum.", "", tabulate(rows, headers="keys", tablefmt="github", disable_numparse=True), ""]
