"""python -m ablations.evaluate.scales --data DIR [--model PATH] [--val-area AREA] [--out DIR] [--apply]

Does a saved model get better when it also sees the image at coarser scales, and when it
sees the ground around a tile?

The studies score each 256 px tile on its own, at its own resolution. But at 7 cm/px one
of Nairobi's roofs can fill a tile: no edge, no ground, nothing the model learned from the
small houses of the training cities. `zoo.predict.Segmenter(scales=...)` also predicts the
image shrunk (0.5: twice the ground per pixel) and averages the probabilities. This command
scores every validation and test tile for each set of scales in two settings:

- `alone`: the tile by itself, as a client sending single tiles gets it;
- `with neighbours`: the tile inside its real neighbours, 128 px of them at each scale
  (128 px at full size, 256 px at 1/2, 512 px at 1/4), as a client sending a whole image gets
  it. Neighbours come only from the same split; a missing one is the tile mirrored.

Each row's threshold is chosen on validation. The selected row is the best validation
building IoU with neighbours (users send images of places, not 18 m squares); test is
reported for every row. With --apply, the selected scales and threshold are written into
the model's metadata ("inference"), which the server then uses. Writes OUT/README.md and
OUT/inference.json.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from ablations.data import folders, splits  # noqa: E402
from zoo.served import served_model_path  # noqa: E402

NEIGHBOUR_PX = 128  # neighbouring pixels each side, counted after scaling
SCALE_SETS = {
    "1": (1.0,),
    "1/2": (0.5,),
    "1/4": (0.25,),
    "1 + 1/2": (1.0, 0.5),
    "1/2 + 1/4": (0.5, 0.25),
    "1 + 1/2 + 1/4": (1.0, 0.5, 0.25),
}
SETTINGS = ("alone", "with neighbours")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m ablations.evaluate.scales", description=__doc__.split("\n\n")[1])
    parser.add_argument("--data", type=Path, required=True, help="images/ + masks/ + index.csv with areas")
    parser.add_argument("--model", type=Path, default=served_model_path(),
                        help="default: the served model (results/MODEL, else the decoder_variants selection)")
    parser.add_argument("--test-area", help="as given to ablations.run (default: the middle-sized area)")
    parser.add_argument("--val-area", help="as given to ablations.run (default: ground groups)")
    parser.add_argument("--out", type=Path, default=Path("results/inference"))
    parser.add_argument("--apply", action="store_true",
                        help="write the selected scales and threshold into the model's metadata")
    return parser.parse_args(argv)


class Neighbourhood:
    """Tiles of one split by (area, zoom, x, y), so a tile's neighbours can be laid around it."""

    def __init__(self, samples):
        self.by_position, self.cache = {}, {}
        for sample in samples:
            position = folders.tile_position(sample.name)
            if position:
                self.by_position[(sample.area, *position)] = sample
        self.position_of = {s.name: k for k, s in self.by_position.items()}

    def image(self, sample) -> np.ndarray:
        if sample.name not in self.cache:
            self.cache[sample.name] = folders.read_image(sample.image_path)
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


def margin_for(scale: float, setting: str) -> int:
    return 0 if setting == "alone" else int(round(NEIGHBOUR_PX / scale))


def view_probabilities(segmenter, neighbourhood, sample, scale: float, margin: int) -> np.ndarray:
    canvas = neighbourhood.canvas(sample, margin)
    probs = segmenter.probabilities_at(canvas, scale)
    return probs[margin:probs.shape[0] - margin, margin:probs.shape[1] - margin]  # the tile, whatever its size


class Views:
    """Every tile's probabilities per (scale, margin), computed once and shared by the sets."""

    def __init__(self, segmenter, samples):
        self.segmenter, self.samples = segmenter, samples
        self.neighbourhood = Neighbourhood(samples)
        self.cache, self.ms = {}, {}

    def get(self, scale: float, margin: int) -> np.ndarray:
        if (scale, margin) not in self.cache:
            started = time.perf_counter()
            self.cache[scale, margin] = np.stack([
                view_probabilities(self.segmenter, self.neighbourhood, s, scale, margin) for s in self.samples])
            self.ms[scale, margin] = (time.perf_counter() - started) * 1000 / len(self.samples)
        return self.cache[scale, margin]

    def averaged(self, scales, setting: str) -> tuple[np.ndarray, float]:
        views = [(scale, margin_for(scale, setting)) for scale in scales]
        probs = np.mean([self.get(*view) for view in views], axis=0)
        return probs, sum(self.ms[view] for view in views)


def evaluate(segmenter, split, scale_sets=SCALE_SETS, progress=print) -> list[dict]:
    from ablations.train import choose_threshold, score

    masks = {name: np.stack([folders.read_mask(s.mask_path) for s in getattr(split, name)]) for name in ("val", "test")}
    views = {name: Views(segmenter, getattr(split, name)) for name in ("val", "test")}
    rows = []
    for setting in SETTINGS:
        for label, scales in scale_sets.items():
            val_probs, _ = views["val"].averaged(scales, setting)
            threshold, _ = choose_threshold(val_probs, masks["val"])
            test_probs, ms = views["test"].averaged(scales, setting)
            row = {"setting": setting, "scales": list(scales), "label": label, "threshold": threshold,
                   "ms_per_tile": ms,
                   **{f"val_{k}": v for k, v in score(val_probs, masks["val"], threshold).items()},
                   **score(test_probs, masks["test"], threshold),
                   "test_by_zoom": _by_zoom(split.test, masks["test"], test_probs >= threshold)}
            progress(f"{setting}, scales {label}: val building IoU {row['val_building_iou']:.3f}, "
                     f"test {row['building_iou']:.3f} (threshold {threshold:.2f}, {ms:.0f} ms/tile)")
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
    return max((r for r in rows if r["setting"] == "with neighbours"), key=lambda r: r["val_building_iou"])


def write_report(out: Path, rows: list[dict], header: dict) -> None:
    from tabulate import tabulate

    from zoo.files import write_json_atomic, write_text_atomic

    best = select(rows)
    zooms = sorted({z for r in rows for z in r["test_by_zoom"]})
    table = [{"setting": r["setting"], "scales": r["label"] + (" **(selected)**" if r is best else ""),
              "threshold": f"{r['threshold']:.2f}", "val building IoU": f"{r['val_building_iou']:.3f}",
              "test precision": f"{r['precision']:.3f}", "test recall": f"{r['recall']:.3f}",
              "test building IoU": f"{r['building_iou']:.3f}", "test mean IoU": f"{r['mean_iou']:.3f}",
              **{f"test IoU z{z}": f"{r['test_by_zoom'][z]:.3f}" for z in zooms},
              "ms per tile": f"{r['ms_per_tile']:.0f}"} for r in rows]
    lines = [
        "# Inference at several scales, alone and with neighbouring ground", "",
        f"`{header['command']}` on {header['machine']}, {header['date']}.",
        f"Model `{header['model']}` (`{header['config']}`). Split: {header['split']}.", "",
        "Scales 1/2 and 1/4 predict the image shrunk to half or a quarter of its side and resize "
        "the probabilities back; a set of scales averages them (`zoo.predict.Segmenter(scales=...)`). "
        f"*Alone*: the tile by itself. *With neighbours*: the tile inside {NEIGHBOUR_PX} px (after "
        "scaling) of its real neighbouring ground, mirrored where a neighbour is missing, "
        "neighbours only from the same split. Thresholds and the selection use validation only; "
        "test is the held-out area. ms per tile: this machine, including reading neighbours.", "",
        tabulate(table, headers="keys", tablefmt="github"), "",
        f"Selected by validation building IoU with neighbours: scales **{best['label']}**, "
        f"threshold {best['threshold']:.2f}.", "",
    ]
    write_text_atomic(out / "README.md", "\n".join(lines))
    write_json_atomic(out / "inference.json", {**header, "rows": rows, "selected": best})


def apply_policy(model_path: Path, best: dict, report: Path) -> None:
    """Record the selected scales and threshold in the model's metadata (checksum unchanged:
    it covers the weights file, which this does not touch)."""
    import json

    from zoo.files import write_json_atomic
    from zoo.saving import metadata_path

    path = metadata_path(model_path)
    metadata = json.loads(path.read_text())
    metadata["inference"] = {"scales": best["scales"], "threshold": best["threshold"],
                             "chosen_by": f"ablations.evaluate.scales on the validation split, see {report}",
                             "val_building_iou": best["val_building_iou"]}
    write_json_atomic(path, metadata)


def _config_name(metadata: dict) -> str:
    from zoo.config import DecoderConfig

    config = metadata.get("config")
    return DecoderConfig.from_dict(config).name if config else "unknown decoder"


def main(argv=None) -> int:
    import datetime

    from ablations.machine import describe
    from zoo.predict import Segmenter

    args = parse_args(argv)
    if not args.model.is_file():
        print(f"error: no model at {args.model}", file=sys.stderr)
        return 2
    try:
        samples = folders.scan_folder(args.data, check=False)
        split = splits.split_samples(samples, test_area=args.test_area, val_area=args.val_area, seed=0)
    except folders.DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    segmenter = Segmenter.from_file(args.model, scales=(1.0,))
    rows = evaluate(segmenter, split)
    header = {"command": "python -m ablations.evaluate.scales " + " ".join(sys.argv[1:] if argv is None else argv),
              "machine": describe(), "model": str(args.model), "config": _config_name(segmenter.metadata),
              "split": split.description,
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    write_report(args.out, rows, header)
    if args.apply:
        apply_policy(args.model, select(rows), args.out / "README.md")
    print((args.out / "README.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
