"""How much the regular outlines' settings matter: `zoo.outlines` MIN_EDGE, RECTANGLE_FILL and
MIN_IOU varied one at a time, on one held-out city and seed (every other tile).

    python -m experiments.outlines.sweep --data ../shared/data/oam_buildings \\
        --folds results/final/folds --out results/outlines

Scored as `experiments.outlines.compare` scores (same threshold, rasterised back, buildings of at
least 4 m²). Writes OUT/sweep.md. A look at one city only, so that the settings are not chosen
on the cities the comparison reports.
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

import numpy as np
from tabulate import tabulate

from data import folders
from experiments.outlines import compare
from training.machine import describe as describe_machine
from zoo import outlines

SETTINGS = [  # (MIN_EDGE, RECTANGLE_FILL, MIN_IOU); the first is zoo.outlines' own
    (3.0, 0.85, 0.8),
    (2.0, 0.85, 0.8),
    (5.0, 0.85, 0.8),
    (3.0, 0.8, 0.8),
    (3.0, 0.9, 0.8),
    (3.0, 0.85, 0.7),
    (3.0, 0.85, 0.9),
]
MIN_AREA_M2 = 4.0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--folds", type=Path, default=Path("results/final/folds"))
    parser.add_argument("--out", type=Path, default=Path("results/outlines"))
    parser.add_argument("--city", default="dar_es_salaam_TZ")
    parser.add_argument("--seed", default="seed0")
    args = parser.parse_args(argv)
    samples = [s for s in folders.scan_folder(args.data, check=False) if s.area == args.city]
    pick = np.arange(0, len(samples), 2)
    _, masks = folders.load_arrays([samples[i] for i in pick], compare.SIDE)
    probs = np.load(args.folds / args.seed / f"{args.city}.probs.npy", mmap_mode="r")[pick]
    pixel_m2 = np.array([folders.pixel_area_m2(samples[i].name, compare.SIDE) for i in pick])
    compare.MIN_AREAS_M2, compare.MIN_PIXELS = (MIN_AREA_M2,), (0,)
    rows = [_row("raw", None, compare.score_city(probs, masks, pixel_m2)["raw"])]
    for setting in SETTINGS:
        outlines.MIN_EDGE, outlines.RECTANGLE_FILL, outlines.MIN_IOU = setting
        rows.append(_row("regular", setting, compare.score_city(probs, masks, pixel_m2)["regular"]))
    args.out.mkdir(parents=True, exist_ok=True)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = [
        "# Regular outlines: how much their settings matter",
        "",
        f"`python -m experiments.outlines.sweep --data {args.data} --folds {args.folds} --out {args.out}` "
        f"({date}; {describe_machine()}): {args.city}, {args.seed}, every other tile ({len(pick)}), "
        f"buildings of at least {MIN_AREA_M2:g} m², scored as in [README.md](README.md).",
        "",
        tabulate(rows, headers="keys", tablefmt="github"),
        "",
    ]
    (args.out / "sweep.md").write_text("\n".join(text))
    print("\n".join(text))
    return 0


def _row(kind: str, setting, tally: dict) -> dict:
    counted = tally["m2"][MIN_AREA_M2]
    scores = counted.buildings.scores()
    pixels = counted.pixels
    edge, fill, iou = setting or ("", "", "")
    return {
        "outline": kind,
        "MIN_EDGE (px)": edge,
        "RECTANGLE_FILL": fill,
        "MIN_IOU": iou,
        "building F1": f"{scores['building_f1']:.3f}",
        "matched IoU": f"{scores['matched_iou']:.3f}",
        "pixel building IoU": f"{pixels.tp / max(pixels.tp + pixels.fp + pixels.fn, 1):.3f}",
        "vertices / building": f"{counted.vertices / max(counted.count, 1):.1f}",
    }


if __name__ == "__main__":
    raise SystemExit(main())
