"""python -m ablations.context --data DIR [--model PATH] [--val-area AREA] [--out DIR]

Does a saved model get better when it sees the ground around a tile, and a coarser view?

The studies score each 256 px tile on its own, but the tiles are cut from contiguous imagery
(most have all eight neighbours in the data), and a user sends whole images. At 7 cm/px one
Nairobi roof can fill a tile: no edge, no ground, nothing to say "building". This command
predicts every validation and test tile under several inference schemes, each a set of
views (scale, context margin) whose probabilities are averaged:

- `tile`: the tile alone, as the studies score it (reproduces their numbers);
- `context`: the tile plus `margin` px of its real neighbours on each side;
- `coarse`: the 3x3 neighbourhood at half resolution (more ground per pixel, like zoom - 1);
- `coarser`: the 5x5 neighbourhood at a quarter resolution (like zoom - 2);
- averages of those views.

Neighbours come only from the same split, and a missing neighbour is the tile mirrored.
Each scheme's threshold is chosen on validation; the scheme with the best validation
building IoU is selected; test is reported for all. Writes OUT/README.md and OUT/context.json.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

TILE = 256
SCHEMES = {
    "tile": ((1.0, 0),),
    "context": ((1.0, 128),),
    "coarse": ((0.5, 256),),
    "coarser": ((0.25, 512),),
    "context+coarse": ((1.0, 128), (0.5, 256)),
    "context+coarse+coarser": ((1.0, 128), (0.5, 256), (0.25, 512)),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m ablations.context", description=__doc__.split("\n\n")[1])
    parser.add_argument("--data", type=Path, required=True, help="images/ + masks/ + index.csv with areas")
    parser.add_argument("--model", type=Path, default=Path("results/decoder_variants/best/model.keras"))
    parser.add_argument("--test-area", help="as given to ablations.run (default: the middle-sized area)")
    parser.add_argument("--val-area", help="as given to ablations.run (default: ground groups)")
    parser.add_argument("--out", type=Path, default=Path("results/context"))
    return parser.parse_args(argv)


class Neighbourhood:
    """Tiles of one split by (area, zoom, x, y), so a tile's neighbours can be laid around it."""

    def __init__(self, samples):
        from ablations import data

        self.by_position, self.cache = {}, {}
        for sample in samples:
            match = data._TILE_NAME.match(sample.name)
            if match:
                key = (sample.area, int(match["zoom"]), int(match["x"]), int(match["y"]))
                self.by_position[key] = sample
        self.position_of = {s.name: k for k, s in self.by_position.items()}

    def image(self, sample) -> np.ndarray:
        from ablations import data

        if sample.name not in self.cache:
            self.cache[sample.name] = data.read_image(sample.image_path)
        return self.cache[sample.name]

    def canvas(self, sample, margin: int) -> np.ndarray:
        """The tile with `margin` px of ground on every side, real neighbours where present."""
        centre = self.image(sample)
        if margin == 0:
            return centre
        side = centre.shape[0]
        reach = -(-margin // side)  # neighbours needed on each side
        big = np.pad(centre, ((reach * side,) * 2, (reach * side,) * 2, (0, 0)), mode="symmetric")
        position = self.position_of.get(sample.name)
        if position is not None:
            area, zoom, x, y = position
            for dy in range(-reach, reach + 1):
                for dx in range(-reach, reach + 1):
                    neighbour = self.by_position.get((area, zoom, x + dx, y + dy))
                    if neighbour is not None and (dx or dy):
                        top, left = (dy + reach) * side, (dx + reach) * side
                        big[top:top + side, left:left + side] = self.image(neighbour)
        start = reach * side - margin
        return big[start:start + side + 2 * margin, start:start + side + 2 * margin]


def view_probabilities(segmenter, neighbourhood, sample, scale: float, margin: int) -> np.ndarray:
    canvas = neighbourhood.canvas(sample, margin)
    return segmenter.probabilities_at(canvas, scale)[margin:margin + TILE, margin:margin + TILE]


def scheme_probabilities(segmenter, samples, views) -> tuple[np.ndarray, float]:
    """Probabilities of every tile under the averaged views, and ms per tile."""
    neighbourhood = Neighbourhood(samples)
    started = time.perf_counter()
    out = np.stack([np.mean([view_probabilities(segmenter, neighbourhood, s, scale, margin)
                             for scale, margin in views], axis=0) for s in samples])
    return out, (time.perf_counter() - started) * 1000 / len(samples)


def evaluate(segmenter, split, schemes=SCHEMES, progress=print) -> list[dict]:
    from ablations import data
    from ablations.train import choose_threshold, score

    masks = {name: np.stack([data.read_mask(s.mask_path) for s in getattr(split, name)]) for name in ("val", "test")}
    rows = []
    for scheme, views in schemes.items():
        val_probs, _ = scheme_probabilities(segmenter, split.val, views)
        threshold, _ = choose_threshold(val_probs, masks["val"])
        test_probs, ms = scheme_probabilities(segmenter, split.test, views)
        row = {"scheme": scheme, "views": [list(v) for v in views], "threshold": threshold, "ms_per_tile": ms,
               **{f"val_{k}": v for k, v in score(val_probs, masks["val"], threshold).items()},
               **score(test_probs, masks["test"], threshold),
               "test_by_zoom": _by_zoom(split.test, masks["test"], test_probs >= threshold)}
        progress(f"{scheme}: val building IoU {row['val_building_iou']:.3f}, test {row['building_iou']:.3f} "
                 f"(threshold {threshold:.2f}, {ms:.0f} ms/tile)")
        rows.append(row)
    return rows


def _by_zoom(samples, masks, predicted) -> dict:
    from zoo.metrics import Confusion

    zooms = sorted({s.zoom for s in samples if s.zoom is not None})
    result = {}
    for zoom in zooms:
        chosen = [i for i, s in enumerate(samples) if s.zoom == zoom]
        result[str(zoom)] = Confusion().update(masks[chosen], predicted[chosen]).scores()["building_iou"]
    return result


def select(rows: list[dict]) -> dict:
    return max(rows, key=lambda r: r["val_building_iou"])


def write_report(out: Path, rows: list[dict], header: dict) -> None:
    from tabulate import tabulate

    from zoo.saving import write_json_atomic, write_text_atomic

    best = select(rows)
    zooms = sorted({z for r in rows for z in r["test_by_zoom"]})
    table = [{"scheme": r["scheme"] + (" **(selected)**" if r is best else ""),
              "views (scale, margin px)": ", ".join(f"({s:g}, {m})" for s, m in r["views"]),
              "threshold": f"{r['threshold']:.2f}", "val building IoU": f"{r['val_building_iou']:.3f}",
              "test precision": f"{r['precision']:.3f}", "test recall": f"{r['recall']:.3f}",
              "test building IoU": f"{r['building_iou']:.3f}", "test mean IoU": f"{r['mean_iou']:.3f}",
              **{f"test IoU z{z}": f"{r['test_by_zoom'][z]:.3f}" for z in zooms},
              "ms per tile": f"{r['ms_per_tile']:.0f}"} for r in rows]
    lines = [
        "# Inference with context", "",
        f"`{header['command']}` on {header['machine']}, {header['date']}.",
        f"Model `{header['model']}` ({header['config']}). Split: {header['split']}.", "",
        "Each scheme averages the probabilities of its views; a view is the tile with `margin` px "
        "of its real neighbours on each side (mirrored where a neighbour is missing; neighbours "
        "only from the same split), resized by `scale`, predicted whole, resized back and cropped "
        "to the tile. Thresholds and the selection use validation only; test is the held-out area.", "",
        tabulate(table, headers="keys", tablefmt="github"), "",
        f"Selected by validation building IoU: **{best['scheme']}**.", "",
    ]
    write_text_atomic(out / "README.md", "\n".join(lines))
    write_json_atomic(out / "context.json", {**header, "rows": rows, "selected": best["scheme"]})


def main(argv=None) -> int:
    import datetime

    from ablations import data
    from ablations.machine import describe
    from zoo.predict import Segmenter

    args = parse_args(argv)
    if not args.model.is_file():
        print(f"error: no model at {args.model}", file=sys.stderr)
        return 2
    try:
        samples = data.scan_folder(args.data, check=False)
        split = data.split_samples(samples, test_area=args.test_area, val_area=args.val_area, seed=0)
    except data.DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    segmenter = Segmenter.from_file(args.model)
    rows = evaluate(segmenter, split)
    header = {"command": "python -m ablations.context " + " ".join(sys.argv[1:] if argv is None else argv),
              "machine": describe(), "model": str(args.model), "config": segmenter.metadata.get("config"),
              "split": split.description,
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    write_report(args.out, rows, header)
    print((args.out / "README.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
