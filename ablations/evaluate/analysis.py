"""python -m ablations.evaluate.analysis --data DIR [--model PATH] [--out results/error_analysis] [--test-area A]

An error-analysis page for a saved model on the held-out test split: scores per zoom level,
how much of the error sits on building boundaries (the signature of misaligned labels or
soft edges) rather than on whole missed or invented buildings, and the worst tiles drawn
with true positives, false positives and false negatives coloured.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from ablations.data import folders, splits  # noqa: E402
from zoo.served import served_model_path  # noqa: E402

BOUNDARY_PX = 3  # errors within this many pixels of a true building edge count as "boundary"
COLOURS = {"tp": (255, 255, 255), "fp": (230, 40, 40), "fn": (40, 110, 255)}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m ablations.evaluate.analysis", description=__doc__.split("\n\n")[1])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", type=Path, default=served_model_path(),
                        help="default: the served model (results/MODEL, else the decoder_variants selection)")
    parser.add_argument("--out", type=Path, default=Path("results/error_analysis"))
    parser.add_argument("--test-area")
    parser.add_argument("--worst", type=int, default=8, help="tiles drawn per error kind")
    return parser.parse_args(argv)


def near_boundary(mask: np.ndarray, pixels: int = BOUNDARY_PX) -> np.ndarray:
    """Pixels within `pixels` of a building edge (inside or outside)."""
    import cv2

    kernel = np.ones((2 * pixels + 1, 2 * pixels + 1), np.uint8)
    mask = mask.astype(np.uint8)
    return (cv2.dilate(mask, kernel) != cv2.erode(mask, kernel))


def error_breakdown(truth: np.ndarray, predicted: np.ndarray) -> dict:
    """FP and FN pixels split into those on a true boundary band and those away from it."""
    truth, predicted = truth.astype(bool), predicted.astype(bool)
    band = near_boundary(truth)
    fp, fn = predicted & ~truth, truth & ~predicted
    return {"fp_boundary": int((fp & band).sum()), "fp_away": int((fp & ~band).sum()),
            "fn_boundary": int((fn & band).sum()), "fn_away": int((fn & ~band).sum())}


def overlay(image: np.ndarray, truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    out = (image * 0.55).astype(np.uint8)
    truth, predicted = truth.astype(bool), predicted.astype(bool)
    for kind, where in (("tp", truth & predicted), ("fp", predicted & ~truth), ("fn", truth & ~predicted)):
        out[where] = (0.45 * image[where] + 0.55 * np.array(COLOURS[kind])).astype(np.uint8)
    return out


def analyse(segmenter, samples, size: int) -> list[dict]:
    from zoo.metrics import confusion_counts, per_image_iou

    rows = []
    for sample in samples:
        image, truth = folders.load_arrays([sample], size)
        image, truth = image[0], truth[0]
        predicted = segmenter.predict(image)
        rows.append({"name": sample.name, "zoom": sample.zoom, "iou": per_image_iou(truth, predicted),
                     "truth_frac": float(truth.mean()), **confusion_counts(truth, predicted),
                     **error_breakdown(truth, predicted), "image": image, "truth": truth,
                     "predicted": predicted})
    return rows


def scores_by(rows, key) -> list[dict]:
    from zoo.metrics import Confusion

    table = []
    for value in sorted({r[key] for r in rows}, key=str):
        subset = [r for r in rows if r[key] == value]
        confusion = Confusion(*(sum(r[k] for r in subset) for k in ("tp", "fp", "fn", "tn")))
        s = confusion.scores()
        table.append({key: value, "tiles": len(subset), "precision": f"{s['precision']:.3f}",
                      "recall": f"{s['recall']:.3f}", "building IoU": f"{s['building_iou']:.3f}",
                      "mean IoU": f"{s['mean_iou']:.3f}",
                      "median per-image IoU": f"{np.median([r['iou'] for r in subset]):.3f}"})
    return table


def draw(rows, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ablations.plots import save_figure_atomic

    figure, axes = plt.subplots(2, max(1, len(rows)), figsize=(2.2 * max(1, len(rows)), 4.6), squeeze=False)
    for col, row in enumerate(rows):
        axes[0, col].imshow(row["image"])
        axes[0, col].set_title(f"{row['name'][-18:]}\nIoU {row['iou']:.2f}", fontsize=6)
        axes[1, col].imshow(overlay(row["image"], row["truth"], row["predicted"]))
        for ax in axes[:, col]:
            ax.set_axis_off()
    figure.suptitle(f"{title} (white TP, red FP, blue FN)", fontsize=9)
    save_figure_atomic(figure, path)


def main(argv=None) -> int:
    from tabulate import tabulate

    from zoo.predict import Segmenter
    from zoo.files import write_text_atomic

    args = parse_args(argv)
    try:
        segmenter = Segmenter.from_file(args.model)
        split = splits.split_samples(folders.scan_folder(args.data, check=False), test_area=args.test_area, seed=0)
    except (OSError, folders.DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    size = int(segmenter.metadata.get("data", {}).get("size", 256))
    rows = analyse(segmenter, split.test, size)
    args.out.mkdir(parents=True, exist_ok=True)
    totals = {k: sum(r[k] for r in rows) for k in ("tp", "fp", "fn", "fp_boundary", "fp_away", "fn_boundary", "fn_away")}
    kinds = {
        "missed.png": ("most missed building pixels (FN away from any true edge)", "fn_away"),
        "invented.png": ("most invented building pixels (FP away from any true edge)", "fp_away"),
        "boundary.png": ("most error on true building edges", None),
    }
    for name, (title, key) in kinds.items():
        order = sorted(rows, key=lambda r: -(r[key] if key else r["fp_boundary"] + r["fn_boundary"]))
        draw(order[:args.worst], args.out / name, title)
    errors = totals["fp"] + totals["fn"]
    lines = [
        "# Error analysis", "",
        # Only the test split matters here, and it does not depend on how validation is drawn.
        f"Model `{args.model}` (scales {', '.join(f'{x:g}' for x in segmenter.scales)}, threshold "
        f"{segmenter.threshold:.2f}) on the test split: {split.description.split('; ')[0]}.",
        f"Written by `python -m ablations.evaluate.analysis {' '.join(sys.argv[1:] if argv is None else argv)}`.", "",
        "## Scores by zoom level (pixels summed per group)", "",
        tabulate(scores_by(rows, "zoom"), headers="keys", tablefmt="github"), "",
        "## Where the wrong pixels are", "",
        f"Of {errors:,} wrong pixels, {100 * (totals['fp_boundary'] + totals['fn_boundary']) / max(errors, 1):.0f} % "
        f"lie within {BOUNDARY_PX} px of a true building edge (boundary and alignment errors); "
        f"{100 * totals['fn_away'] / max(errors, 1):.0f} % are missed building interior and "
        f"{100 * totals['fp_away'] / max(errors, 1):.0f} % are predicted building far from any labelled one "
        "(a real building without a label, or a false alarm).", "",
        "## The worst tiles", "",
        *[f"![{title}]({name})" for name, (title, _) in kinds.items()], "",
    ]
    write_text_atomic(args.out / "README.md", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
