"""python -m experiments.adapt.table [--curve results/adapt/curve] [--out results/adapt]

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
from zoo.files import atomic_path, write_json_atomic, write_text_atomic  # noqa: E402
from zoo.metrics import BuildingCounts  # noqa: E402

RULES = ("fixed", "crossfit")  # threshold 0.5; threshold chosen on the other half of the scored ground
MODE_NAMES = {
    "adapt": "fine-tuned on K labelled tiles",
    "scratch": "decoder trained on the K tiles alone (from scratch)",
    "unlabelled": "self-training on the unlabelled front ground (inductive)",
    "transductive": "self-training on the whole city, scored tiles included (transductive)",
    "both": "K labelled tiles + self-training on the front ground",
    "replay": "K labelled tiles, a quarter of each batch replayed from the parent's own cities",
}
SIZE = "0"  # building F1 over every building ("4m2": those of at least 4 m², where known)


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
    counts = np.sum([pixel_counts(p, rule) for p in points], axis=0)
    buildings = np.sum([p["buildings"][rule][SIZE] for p in points], axis=0)
    per_seed = [float(building_iou(pixel_counts(p, rule))) for p in points]
    pixel = scores(counts)
    found = BuildingCounts(*(int(v) for v in buildings[:3]), float(buildings[3])).scores()
    return {
        "precision": pixel["precision"], "recall": pixel["recall"], "building_iou": pixel["building_iou"],
        "building_f1": found["building_f1"],
        "seeds": sorted(p["binding"]["seed"] for p in points), "seed_iou": per_seed,
        "spread": [min(per_seed), max(per_seed)],
    }  # fmt: skip


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
    keys = ("precision", "recall", "building_iou", "building_f1")
    for mode in sorted({m for by_mode in table.values() for m in by_mode}):
        ks = sorted({k for by_mode in table.values() for k in by_mode.get(mode, {})})
        for k in ks:
            cities = [c for c in sorted(table) if k in table[c].get(mode, {})]
            out.setdefault(mode, {})[k] = {
                rule: {key: float(np.mean([table[c][mode][k][rule][key] for c in cities])) for key in keys}
                | {"cities": cities}
                for rule in RULES
            }
    return out


def markdown(table: dict, mean: dict, points: list[dict]) -> str:
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
        "the scored ground at the threshold best on the other half. Spread: min-max of the seeds' "
        "building IoU. Building F1: outlines matched at IoU 0.5.",
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
                r = by_rule[rule]
                lines.append(f"| {mode} | {k} | {rule_name(rule)} | {fmt(r)} | | {', '.join(r['cities'])} |")
    for city, by_mode in sorted(table.items()):
        lines += ["", f"## {city}", "", header()]
        for mode, by_k in by_mode.items():
            for k, by_rule in by_k.items():
                for rule in RULES:
                    r = by_rule[rule]
                    spread = f"{r['spread'][0]:.3f}-{r['spread'][1]:.3f}"
                    cost = by_rule["cost"]
                    note = f"{cost['train_seconds']:.0f} s training, {cost['run_seconds']:.0f} s in all"
                    lines.append(f"| {mode} | {k} | {rule_name(rule)} | {fmt(r)} | {spread} | {note} |")
    lines += ["", "Modes: " + "; ".join(f"`{m}` {text}" for m, text in MODE_NAMES.items()) + "."]
    return "\n".join(lines) + "\n"


def header() -> str:
    return (
        "| mode | K | threshold | precision | recall | building IoU | building F1 | spread | note |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )


def rule_name(rule: str) -> str:
    return "0.5" if rule == "fixed" else "other half"


def fmt(row: dict) -> str:
    return " | ".join(f"{row[k]:.3f}" for k in ("precision", "recall", "building_iou", "building_f1"))


def plot(table: dict, path: Path) -> None:
    cities = sorted(table)
    figure, axes = plt.subplots(1, len(cities), figsize=(4.2 * len(cities), 3.6), sharey=True, squeeze=False)
    for ax, city in zip(axes[0], cities):
        for mode, style in (("adapt", "-o"), ("scratch", "--s"), ("both", "-.^"), ("replay", "-v")):
            by_k = table[city].get(mode)
            if not by_k:
                continue
            ks = sorted(by_k)
            for rule, alpha in (("fixed", 1.0), ("crossfit", 0.5)):
                iou = [by_k[k][rule]["building_iou"] for k in ks]
                low = [by_k[k][rule]["building_iou"] - by_k[k][rule]["spread"][0] for k in ks]
                high = [by_k[k][rule]["spread"][1] - by_k[k][rule]["building_iou"] for k in ks]
                ax.errorbar(np.array(ks) + 1, iou, yerr=[low, high], fmt=style, alpha=alpha, capsize=2,
                            label=f"{mode}, {rule_name(rule)}", markersize=4)  # fmt: skip
        for mode, colour in (("unlabelled", "tab:green"), ("transductive", "tab:olive")):
            if 0 in table[city].get(mode, {}):
                ax.axhline(table[city][mode][0]["fixed"]["building_iou"], color=colour, linestyle=":",
                           label=f"{mode} (no labels), 0.5")  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel("K labelled tiles (+1, log)")
        ax.set_title(city, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("building IoU (scored ground)")
    axes[0][-1].legend(fontsize=6, loc="lower right")
    save_figure_atomic(figure, path)


def save_figure_atomic(figure, path: Path) -> None:
    # Not training.plots': importing it loads TensorFlow, which a table does not need.
    try:
        with atomic_path(path, suffix=Path(path).suffix) as tmp:
            figure.savefig(tmp, dpi=110, bbox_inches="tight")
    finally:
        plt.close(figure)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.adapt.table", description=__doc__.split("\n\n")[1]
    )
    parser.add_argument("--curve", type=Path, default=Path("results/adapt/curve"))
    parser.add_argument("--out", type=Path, default=Path("results/adapt"))
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
    write_text_atomic(args.out / "README.md", markdown(table, mean, points))
    plot(table, args.out / "curve.png")
    print(f"wrote {args.out / 'README.md'}, table.json and curve.png from {len(points)} points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
