"""Score a running server on a folder of images and masks, from the shell or a notebook.

    python -m app.client --url http://127.0.0.1:8000 --data DIR \
        [--out DIR] [--limit N] [--samples K] [--min-pixels P]

DIR is a data folder as the harness reads it (`data.folders`, the same reader, the
same checks): `images/NAME.ext` (RGB) and `masks/NAME.ext` (one channel, 0/255 or 0/1, same
name and size), PNG, JPEG or TIFF. A missing partner, an unreadable file, a size mismatch or a
non-binary mask stops the run before any request, with the file's path (exit status 1).
Every image goes to URL/inference as JSON; the answers are
scored with zoo.metrics, the same definitions training and the reports use (pixel counts
summed over the whole set; building IoU = TP/(TP+FP+FN), mean IoU = mean of building and
background IoU), plus the distribution of per-image building IoU; and building by building
(zoo.metrics.BuildingCounts: 8-connected outlines matched one to one at IoU >= 0.5, the SpaceNet
rule; buildings under --min-pixels ignored): building precision, recall, F1 and the mean IoU of
the matched buildings. Markdown tables go to stdout; with --out, OUT/metrics.json and K
side-by-side PNGs (RGB | truth | prediction | errors) chosen across the per-image IoU ranking,
worst to best. When no server answers at URL, or it answers with an error, one line says so
(exit status 1).

Notebook use: `evaluate(url, data_dir)` -> dict, `markdown_table(result)`,
`draw_side_by_side(image, truth, prediction)` -> matplotlib Figure.
The data reader imports only numpy and Pillow, so the client needs no TensorFlow.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import orjson
import requests

from data import folders
from data.folders import DataError, read_image, read_mask
from zoo.metrics import BUILDING_MATCH_IOU, BuildingCounts, Confusion, iou_distribution, per_image_iou

METRIC_LABELS = {
    "accuracy": "accuracy",
    "precision": "precision",
    "recall": "recall",
    "building_iou": "building IoU = TP/(TP+FP+FN)",
    "mean_iou": "mean IoU (building and background IoU averaged)",
    "f1": "F1",
}
BUILDING_LABELS = {
    "building_precision": "building precision",
    "building_recall": "building recall",
    "building_f1": "building F1",
    "matched_iou": "matched IoU",
}
BUILDING_RULE = (
    f"buildings: 8-connected outlines, matched one to one at IoU >= {BUILDING_MATCH_IOU}; "
    "building precision = TP/(TP+FP), building recall = TP/(TP+FN), "
    "building F1 = 2TP/(2TP+FP+FN), matched IoU = mean IoU of the matched buildings"
)
# Error overlay colours: TP white, FP red (predicted, not there), FN blue (missed), TN black.
ERROR_COLOURS = {"tp": (255, 255, 255), "fp": (230, 40, 40), "fn": (40, 90, 255), "tn": (0, 0, 0)}


class ServerError(RuntimeError):
    """The server answered, but with an error or a mask of the wrong shape."""


def scan(data_dir, limit: int | None = None) -> list[tuple[str, Path, Path]]:
    """(name, image path, mask path) of the first `limit` pairs by name, every one read and
    checked first (`DataError` naming the bad files)."""
    samples = folders.scan_folder(data_dir, check=False)[:limit]
    folders.check_samples(samples)
    return [(sample.name, sample.image_path, sample.mask_path) for sample in samples]


def predict(url: str, image: np.ndarray, session=None, timeout: float = 300) -> np.ndarray:
    """The server's H x W uint8 0/1 mask for an H x W x 3 uint8 image."""
    body = orjson.dumps(
        {"image": np.ascontiguousarray(image, dtype=np.uint8)}, option=orjson.OPT_SERIALIZE_NUMPY
    )
    response = (session or requests).post(
        f"{url.rstrip('/')}/inference",
        data=body,
        timeout=timeout,
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    )
    if not response.ok:
        raise ServerError(f"{url} answered {response.status_code}: {_error_text(response)}")
    mask = np.asarray(orjson.loads(response.content)["prediction"], dtype=np.uint8)
    if mask.shape != image.shape[:2]:
        raise ServerError(f"{url} returned a {mask.shape} mask for a {image.shape[:2]} image")
    return mask


def evaluate(url: str, data_dir, limit: int | None = None, min_pixels: int = 0) -> dict:
    """Pixel and building metrics of the server at `url` on `data_dir` (first `limit` images;
    buildings under `min_pixels` pixels ignored), JSON-serialisable."""
    pairs = scan(data_dir, limit)
    confusion, buildings, per_image = Confusion(), BuildingCounts(), []
    with requests.Session() as session:
        for name, image_path, mask_path in pairs:
            image, truth = read_image(image_path), read_mask(mask_path).astype(bool)
            start = time.perf_counter()
            prediction = predict(url, image, session)
            seconds = time.perf_counter() - start
            confusion.update(truth, prediction)
            image_buildings = BuildingCounts.of(truth, prediction, min_pixels)
            buildings += image_buildings
            per_image.append(
                {
                    "name": name,
                    "building_iou": per_image_iou(truth, prediction),
                    "buildings": {
                        "tp": image_buildings.tp,
                        "fp": image_buildings.fp,
                        "fn": image_buildings.fn,
                    },
                    "latency_s": seconds,
                }
            )
    return {
        "url": url,
        "data": str(data_dir),
        "images": len(per_image),
        "metrics": confusion.scores(),
        "counts": {"tp": confusion.tp, "fp": confusion.fp, "fn": confusion.fn, "tn": confusion.tn},
        "building_metrics": buildings.scores(),
        "building_counts": {**dataclasses.asdict(buildings), "min_pixels": min_pixels},
        "per_image_building_iou": iou_distribution(r["building_iou"] for r in per_image),
        "latency_s": {
            "median": float(np.median([r["latency_s"] for r in per_image])),
            "total": float(sum(r["latency_s"] for r in per_image)),
        },
        "per_image": per_image,
        "definitions": "pixel counts summed over all images; "
        + "; ".join(METRIC_LABELS.values())
        + "; "
        + BUILDING_RULE,
    }


def markdown_table(result: dict) -> str:
    from tabulate import tabulate

    rows = [(METRIC_LABELS[k], f"{v:.4f}") for k, v in result["metrics"].items()]
    # disable_numparse keeps the 4 decimals: tabulate would otherwise reformat "0.9000".
    summary = tabulate(
        rows,
        headers=[f"metric ({result['images']} images, summed pixels)", "value"],
        tablefmt="github",
        disable_numparse=True,
    )
    spread = result["per_image_building_iou"]
    keys = [k for k in ("mean", "p10", "p25", "median", "p75", "p90") if k in spread]
    distribution = tabulate(
        [[f"{spread[k]:.4f}" for k in keys]],
        tablefmt="github",
        disable_numparse=True,
        headers=[f"per-image building IoU: {k}" if k == keys[0] else k for k in keys],
    )
    return f"{summary}\n\n{distribution}\n\n{building_table(result)}"


def building_table(result: dict) -> str:
    """One row: how many buildings, and the building metrics as columns."""
    from tabulate import tabulate

    counts, scores = result["building_counts"], result["building_metrics"]
    headers = ["true buildings", "predicted", "matched (TP)", *BUILDING_LABELS.values()]
    row = [
        counts["tp"] + counts["fn"],
        counts["tp"] + counts["fp"],
        counts["tp"],
        *(f"{scores[key]:.4f}" for key in BUILDING_LABELS),
    ]
    table = tabulate([row], headers=headers, tablefmt="github", disable_numparse=True)
    ignored = f", under {counts['min_pixels']} pixels ignored" if counts["min_pixels"] else ""
    return (
        f"Buildings over {result['images']} images: 8-connected outlines{ignored}, matched "
        f"one to one at IoU >= {BUILDING_MATCH_IOU}; matched IoU = mean IoU of the matched "
        f"buildings.\n\n{table}"
    )


def pick_samples(result: dict, count: int) -> list[str]:
    """`count` image names spread evenly over the per-image IoU ranking, worst first."""
    ranked = sorted(result["per_image"], key=lambda r: (r["building_iou"], r["name"]))
    if count <= 0 or not ranked:
        return []
    picks = np.unique(np.linspace(0, len(ranked) - 1, min(count, len(ranked))).round().astype(int))
    return [ranked[i]["name"] for i in picks]


def error_overlay(truth, prediction) -> np.ndarray:
    """H x W x 3 uint8: TP white, FP red, FN blue, TN black."""
    truth, prediction = np.asarray(truth).astype(bool), np.asarray(prediction).astype(bool)
    out = np.zeros(truth.shape + (3,), np.uint8)
    for key, where in (("tp", truth & prediction), ("fp", ~truth & prediction), ("fn", truth & ~prediction)):
        out[where] = ERROR_COLOURS[key]
    return out


def draw_side_by_side(image, truth, prediction, title: str = ""):
    """A matplotlib Figure: RGB | ground truth | prediction | errors."""
    # The Figure class, not pyplot: it renders with Agg whatever backend is configured,
    # keeps no global state, and a notebook still shows it with display(figure).
    from matplotlib.figure import Figure

    iou = per_image_iou(truth, prediction)
    figure = Figure(figsize=(13, 3.6), layout="constrained")
    truth, prediction = np.asarray(truth, np.uint8), np.asarray(prediction, np.uint8)
    panels = [
        (image, "RGB"),
        (truth, "ground truth"),
        (prediction, "prediction"),
        (error_overlay(truth, prediction), "errors: TP white, FP red, FN blue"),
    ]
    for axis, (picture, label) in zip(figure.subplots(1, 4), panels):
        axis.imshow(picture, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        axis.set_title(label, fontsize=10)
        axis.set_axis_off()
    figure.suptitle(f"{title}  building IoU {iou:.3f}".strip())
    return figure


def save_samples(url: str, data_dir, names, out_dir) -> list[Path]:
    paths = {name: (image, mask) for name, image, mask in scan(data_dir)}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for rank, name in enumerate(names):
        image, truth = read_image(paths[name][0]), read_mask(paths[name][1]).astype(bool)
        figure = draw_side_by_side(image, truth, predict(url, image), title=name)
        target = out_dir / f"sample_{rank:02d}_{name}.png"
        figure.savefig(target, dpi=100)
        written.append(target)
    return written


def main(argv=None) -> dict:
    args = _parse_args(argv)
    try:
        return report(args.url, args.data, args.out, args.limit, args.samples, args.min_pixels)
    except (DataError, ServerError) as error:
        raise SystemExit(f"error: {error}") from None
    except requests.ConnectionError:
        raise SystemExit(f"error: no server answers at {args.url} (start one with `python -m app`)") from None
    except requests.Timeout:
        raise SystemExit(f"error: {args.url} accepted the request but did not answer in time") from None


def report(
    url: str, data_dir, out=None, limit: int | None = None, samples: int = 4, min_pixels: int = 0
) -> dict:
    """The tables on stdout and, with `out`, metrics.json and `samples` figures there."""
    result = evaluate(url, data_dir, limit, min_pixels)
    print(markdown_table(result))
    if out:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(result, indent=2))
        for path in save_samples(url, data_dir, pick_samples(result, samples), out):
            print(f"wrote {path}")
        print(f"wrote {out / 'metrics.json'}")
    return result


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m app.client", description="Score a running server on an image/mask folder."
    )
    parser.add_argument("--url", required=True, help="e.g. http://127.0.0.1:8000")
    parser.add_argument("--data", required=True, help="folder with images/ and masks/ (PNG, JPEG or TIFF)")
    parser.add_argument("--out", help="write metrics.json and sample figures here")
    parser.add_argument("--limit", type=int, help="score only the first N images (by name)")
    parser.add_argument("--samples", type=int, default=4, help="side-by-side figures (with --out)")
    parser.add_argument(
        "--min-pixels",
        type=int,
        default=0,
        help="ignore buildings smaller than this, true and predicted (default 0)",
    )
    args = parser.parse_args(argv)
    if not args.url.startswith(("http://", "https://")):
        parser.error(f"--url must start with http:// or https://, got {args.url!r}")
    return args


def _error_text(response) -> str:
    try:
        return response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return response.text[:200]


if __name__ == "__main__":
    main()
