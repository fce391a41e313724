"""python -m experiments.adapt.table [--curve results/adapt/curve] [--out results/adapt] [--cli DIR]

The adaptation curve's table and plot from its points (experiments.adapt.curve): per city,
mode and K, pixel precision, recall and building IoU from counts summed over the scored tiles
and the seeds, building F1 (outlines matched at IoU 0.5), at the fixed threshold 0.5 and at
each half of the scored ground's threshold chosen on the other half; the seed spread; the mean
over cities; and what a point cost. Writes OUT/README.md, OUT/table.json and OUT/curve.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only: no display here
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

from training.heldout import THRESHOLDS, building_iou, scores, threshold_index  # noqa: E402
from zoo.files import save_figure_atomic, write_json_atomic, write_text_atomic  # noqa: E402
from zoo.metrics import BuildingCounts  # noqa: E402

RULES = ("fixed", "crossfit")  # threshold 0.5; threshold chosen on the other half of the scored ground
MODE_NAMES = {
    "adapt": "fine-tuned on K labelled tiles",
    "scratch": "decoder trained on the K tiles alone (from scratch)",
    "unlabelled": "self-training on the unlabelled front ground (inductive)",
    "transductive": "self-training on the whole city, scored tiles included (transductive)",
    "both": "K labelled tiles + self-training on the front ground",
    "replay": "K labelled tiles, a quarter of each batch replayed from the parent's own cities",
    "tutorial": "the TensorFlow tutorial's recipe trained on the K tiles alone (its own model, end to end)",
}
# Building F1 over every building ("0") and over those of at least 4 m² on both sides ("4m2"),
# the project's headline (docs/unet.md): small blobs are mostly noise, and footprint users drop them.
SIZES = ("0", "4m2")
TARGET_K = 64
TARGETS = {"lift_k64": 0.10, "precision_recall": 0.75, "lift_unlabelled": 0.03, "minutes_k64": 5.0}


def load_points(folder: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(Path(folder).glob("*/seed*/*.json"))]


def pixel_counts(point: dict, rule: str) -> np.ndarray:
    """(tp, fp, fn, tn) over the scored ground under a threshold rule."""
    if rule == "fixed":
        return np.sum([np.asarray(c)[threshold_index()] for c in point["counts"]], axis=0)
    picks = [threshold_index(t) for t in point["crossfit_thresholds"]]
    return np.sum([np.asarray(c)[i] for c, i in zip(point["counts"], picks)], axis=0)


def row_of(points: list[dict], rule: str) -> dict:
    """Scores of one (city, mode, K) from its seeds' summed counts, and each seed's building IoU."""
    points = sorted(points, key=lambda p: p["binding"]["seed"])
    counts = np.sum([pixel_counts(p, rule) for p in points], axis=0)
    per_seed = [float(building_iou(pixel_counts(p, rule))) for p in points]
    pixel = scores(counts)
    return {
        "precision": pixel["precision"], "recall": pixel["recall"], "building_iou": pixel["building_iou"],
        "building_f1": building_f1(points, rule, "0"), "building_f1_4m2": building_f1(points, rule, "4m2"),
        "seeds": [p["binding"]["seed"] for p in points], "seed_iou": per_seed,
        "spread": [min(per_seed), max(per_seed)],
    }  # fmt: skip


def building_f1(points: list[dict], rule: str, size: str) -> float:
    """Building F1 from the outline matches (found, predicted, true) summed over the seeds."""
    summed = np.sum([p["buildings"][rule][size] for p in points], axis=0)
    return BuildingCounts(*(int(v) for v in summed[:3]), float(summed[3])).scores()["building_f1"]


def rows(points: list[dict]) -> dict:
    """city -> mode -> K -> rule -> row, and the cost of each (mode, K)."""
    grouped: dict = {}
    for point in points:
        b = point["binding"]
        grouped.setdefault(b["city"], {}).setdefault(b["mode"], {}).setdefault(b["k"], []).append(point)
    return {
        city: {mode: {k: {rule: row_of(ps, rule) for rule in RULES} | {"cost": cost_of(ps)}
                      for k, ps in sorted(by_k.items())} for mode, by_k in by_mode.items()}
        for city, by_mode in grouped.items()
    }  # fmt: skip


def cost_of(points: list[dict]) -> dict:
    return {
        "train_seconds": float(np.mean([p["train_seconds"] for p in points])),
        "run_seconds": float(np.mean([p["run_seconds"] for p in points])),
        "peak_rss_gib": float(max(p["peak_rss_gib"] for p in points)),
        "pool_tiles": float(np.mean([p["pool_tiles"] for p in points])),
        "scored_tiles": float(np.mean([p["scored_tiles"] for p in points])),
    }


def means(table: dict) -> dict:
    """mode -> K -> rule -> the mean over cities of each score (and which cities it covers)."""
    out: dict = {}
    keys = ("precision", "recall", "building_iou", "building_f1", "building_f1_4m2")
    for mode in sorted({m for by_mode in table.values() for m in by_mode}):
        ks = sorted({k for by_mode in table.values() for k in by_mode.get(mode, {})})
        for k in ks:
            cities = [c for c in sorted(table) if k in table[c].get(mode, {})]
            out.setdefault(mode, {})[k] = {
                rule: {key: float(np.mean([table[c][mode][k][rule][key] for c in cities])) for key in keys}
                | {
                    "cities": cities,
                    "spread": seed_spread([table[c][mode][k][rule] for c in cities]),
                    "seed_means": seed_means([table[c][mode][k][rule] for c in cities]),
                }
                for rule in RULES
            }
            out[mode][k]["cost"] = {
                "run_seconds": max(table[c][mode][k]["cost"]["run_seconds"] for c in cities),
                "train_seconds": max(table[c][mode][k]["cost"]["train_seconds"] for c in cities),
                "peak_rss_gib": max(table[c][mode][k]["cost"]["peak_rss_gib"] for c in cities),
            }
    return out


def seed_spread(city_rows: list[dict]) -> list[float]:
    """Min-max over the seeds of the mean over cities of building IoU (seeds every city has)."""
    per_seed = list(seed_means(city_rows).values())
    return [float(min(per_seed)), float(max(per_seed))] if per_seed else [float("nan")] * 2


def seed_means(city_rows: list[dict]) -> dict[int, float]:
    """seed -> the mean over cities of that seed's building IoU (seeds every city has)."""
    common = set.intersection(*(set(r["seeds"]) for r in city_rows))
    return {
        s: float(np.mean([r["seed_iou"][r["seeds"].index(s)] for r in city_rows])) for s in sorted(common)
    }


def markdown(table: dict, mean: dict, points: list[dict], cli: Path) -> str:
    seeds = sorted({p["binding"]["seed"] for p in points})
    machine = points[0]["machine"] if points else "?"
    lines = [
        "# Adapting the served model to a city it never saw",
        "",
        f"Made by `python -m experiments.adapt.curve` and `python -m experiments.adapt.table` "
        f"(experiments/adapt/README.md); {len(points)} points, seeds {seeds}; {machine}.",
        "Parent: each city's cross-validation fold decoder (trained on the other two cities). Scores on "
        "the city's scored ground (whole ground groups no adaptation touched), pixel counts summed over "
        "tiles and seeds; served at scales 1 + 0.5. `0.5`: fixed threshold; `other half`: each half of "
        "the scored ground at the threshold best on the other half. Spread: min-max over the seeds of "
        "building IoU (for the means, of the mean over cities). Building F1: outlines matched at IoU 0.5, "
        "all sizes and ≥ 4 m² on both sides. Cost: one point's seconds (mean over seeds; for the means, "
        "the slowest city) and peak memory of its process.",
        "",
        "![building IoU against K](curve.png)",
        "",
        "## Mean over the held-out cities",
        "",
        header(),
    ]
    for mode, by_k in mean.items():
        for k, by_rule in by_k.items():
            for rule in RULES:
                r, cost = by_rule[rule], by_rule["cost"]
                note = f"{cost_note(cost)}; {len(r['cities'])} cities"
                lines.append(table_row(mode, k, rule, r, note))
    lines += ["", "## The issue's targets (mean over the cities, seeds pooled)", "", *verdicts(mean)]
    for city, by_mode in sorted(table.items()):
        lines += ["", f"## {city}", "", header()]
        for mode, by_k in by_mode.items():
            for k, by_rule in by_k.items():
                for rule in RULES:
                    r = by_rule[rule]
                    note = cost_note(by_rule["cost"])
                    lines.append(table_row(mode, k, rule, r, note))
    lines += ["", "Modes: " + "; ".join(f"`{m}` {text}" for m, text in MODE_NAMES.items()) + "."]
    lines += command_costs(cli)
    return "\n".join(lines) + "\n"


def command_costs(folder: Path) -> list[str]:
    """The product command's own cost by K (`python -m training.adapt`, one run each, its
    metadata in FOLDER/*.json): what a user waits for, reading and scoring included."""
    runs = []
    for path in sorted(Path(folder).glob("*.json")):
        adaptation = json.loads(path.read_text()).get("adaptation") or {}
        if "cost" in adaptation:
            runs.append((path.stem, adaptation["binding"], adaptation["cost"]))
    if not runs:
        return []
    lines = [
        "",
        f"## The command's cost ({folder})",
        "",
        "`python -m training.adapt` run as a user runs it, one run per row (the city's first 320 "
        "held-out tiles scored before and after; the machine shared with other work).",
        "",
        "| run | K labelled | unlabelled tiles | training s | wall s | peak GiB |",
        "|---|---|---|---|---|---|",
    ]
    for name, binding, cost in sorted(runs, key=lambda run: (run[1]["tiles"], run[1]["unlabeled_tiles"])):
        lines.append(
            f"| {name} | {binding['tiles']} | {binding['unlabeled_tiles']} | {cost['train_seconds']:.0f} | "
            f"{cost['wall_seconds']:.0f} | {cost['peak_rss_gib']:.2f} |"
        )
    return lines


def header() -> str:
    return (
        "| mode | K | threshold | precision | recall | building IoU | building F1 | F1 ≥ 4 m² | spread "
        "| cost |\n"
        "|---|---|---|---|---|---|---|---|---|---|"
    )


def table_row(mode: str, k: int, rule: str, row: dict, note: str) -> str:
    return f"| {mode} | {k} | {rule_name(rule)} | {fmt(row)} | {spread_text(row)} | {note} |"


def rule_name(rule: str) -> str:
    return "0.5" if rule == "fixed" else "other half"


def fmt(row: dict) -> str:
    keys = ("precision", "recall", "building_iou", "building_f1", "building_f1_4m2")
    return " | ".join(f"{row[k]:.3f}" for k in keys)


def spread_text(row: dict) -> str:
    return f"{row['spread'][0]:.3f}-{row['spread'][1]:.3f}"


def cost_note(cost: dict) -> str:
    return (
        f"{cost['train_seconds']:.0f} s training, {cost['run_seconds']:.0f} s in all, "
        f"{cost['peak_rss_gib']:.1f} GiB"
    )


# The rows each target is read from: (mode, K, what it is, the lift it must reach).
TARGET_ROWS = (
    ("adapt", TARGET_K, f"K = {TARGET_K} labelled tiles", "lift_k64"),
    ("unlabelled", 0, "unlabelled self-training alone (inductive)", "lift_unlabelled"),
    ("transductive", 0, "unlabelled self-training alone (transductive: scored tiles in the pool)",
     "lift_unlabelled"),
    ("both", TARGET_K, f"K = {TARGET_K} labelled tiles + self-training (not a target)", None),
    ("replay", TARGET_K, f"K = {TARGET_K} labelled tiles + replay (not a target)", None),
)  # fmt: skip


def verdicts(mean: dict) -> list[str]:
    """Each target of issue 34 against the mean rows, under both threshold rules: the lift over
    K = 0 of the pooled scores, and its range over the seeds (paired: the same seed's draw)."""
    base, lines = mean.get("adapt", {}).get(0), []
    if base is None:
        return ["No K = 0 points: no verdict."]
    for rule in RULES:
        start = base[rule]
        for mode, k, what, target in TARGET_ROWS:
            row = mean.get(mode, {}).get(k, {}).get(rule)
            if row is None or row["cities"] != base[rule]["cities"]:
                continue
            lift = row["building_iou"] - start["building_iou"]
            paired = [
                row["seed_means"][s] - v for s, v in start["seed_means"].items() if s in row["seed_means"]
            ]
            verdict = (
                "" if target is None else f"; target +{TARGETS[target]:.2f}: {met(lift >= TARGETS[target])}"
            )
            line = (
                f"- {rule_name(rule)}: {what}: building IoU {start['building_iou']:.3f} → "
                f"{row['building_iou']:.3f} ({lift:+.3f}, per seed {min(paired):+.3f} to "
                f"{max(paired):+.3f}{verdict})"
            )
            if mode == "adapt":
                p, r = row["precision"], row["recall"]
                ok = min(p, r) >= TARGETS["precision_recall"]
                line += (
                    f"; precision {p:.3f}, recall {r:.3f} (target ≥ {TARGETS['precision_recall']}: {met(ok)})"
                )
            lines.append(line + ".")
    cost = mean["adapt"].get(TARGET_K, {}).get("cost")
    if cost is not None:
        minutes = cost["run_seconds"] / 60
        lines.append(
            f"- cost: an adaptation with K = {TARGET_K} takes at most {minutes:.1f} min in all (the slowest "
            f"city's mean over seeds; target < {TARGETS['minutes_k64']:.0f}: "
            f"{met(minutes < TARGETS['minutes_k64'])}), peak {cost['peak_rss_gib']:.1f} GiB."
        )
    return lines


def met(ok: bool) -> str:
    return "met" if ok else "**missed**"


# One colour and marker per mode; the threshold rule is the line style.
PLOTTED = {"adapt": ("tab:blue", "o"), "both": ("tab:purple", "^"), "replay": ("tab:pink", "v"),
           "scratch": ("tab:green", "s"), "tutorial": ("tab:gray", "x")}  # fmt: skip
NO_LABELS = {"unlabelled": "tab:olive", "transductive": "tab:orange"}


def plot(table: dict, path: Path) -> None:
    """Building IoU against K per city at the fixed threshold (solid, with the seeds' range)
    and at the other half's threshold (dashed); self-training without labels as levels."""
    cities = sorted(table)
    figure, axes = plt.subplots(1, len(cities), figsize=(4.2 * len(cities), 3.8), sharey=True, squeeze=False)
    for ax, city in zip(axes[0], cities):
        for mode, (colour, marker) in PLOTTED.items():
            by_k = table[city].get(mode)
            if by_k:
                plot_mode(ax, by_k, mode, colour, marker)
        for mode, colour in NO_LABELS.items():
            if 0 in table[city].get(mode, {}):
                ax.axhline(table[city][mode][0]["fixed"]["building_iou"], color=colour, linestyle=":",
                           label=f"{mode} (no labels), 0.5")  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel("K labelled tiles (+1, log)")
        ax.set_title(city, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("building IoU (scored ground)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=4, fontsize=7, frameon=False)
    figure.tight_layout(rect=(0, 0.16, 1, 1))
    save_figure_atomic(figure, path)


def plot_mode(ax, by_k: dict, mode: str, colour: str, marker: str) -> None:
    ks = sorted(by_k)
    fixed = [by_k[k]["fixed"] for k in ks]
    iou = np.array([row["building_iou"] for row in fixed])
    spread = [iou - [row["spread"][0] for row in fixed], [row["spread"][1] for row in fixed] - iou]
    ax.errorbar(np.array(ks) + 1, iou, yerr=spread, color=colour, marker=marker, markersize=4, capsize=2,
                label=f"{mode}, 0.5 (seed range)")  # fmt: skip
    crossfit = [by_k[k]["crossfit"]["building_iou"] for k in ks]
    ax.plot(np.array(ks) + 1, crossfit, color=colour, linestyle="--", alpha=0.6, label=f"{mode}, other half")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.adapt.table", description=__doc__.split("\n\n")[1]
    )
    parser.add_argument("--curve", type=Path, default=Path("results/adapt/curve"))
    parser.add_argument("--out", type=Path, default=Path("results/adapt"))
    parser.add_argument("--cli", type=Path, default=Path("results/adapt/cli"), help="training.adapt runs")
    args = parser.parse_args(argv)
    points = load_points(args.curve)
    if not points:
        print(
            f"error: no points in {args.curve}: run python -m experiments.adapt.curve first", file=sys.stderr
        )
        return 2
    table = rows(points)
    mean = means(table)
    write_json_atomic(
        args.out / "table.json", {"per_city": table, "mean": mean, "thresholds": THRESHOLDS.tolist()}
    )
    write_text_atomic(args.out / "README.md", markdown(table, mean, points, args.cli))
    plot(table, args.out / "curve.png")
    print(f"wrote {args.out / 'README.md'}, table.json and curve.png from {len(points)} points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
