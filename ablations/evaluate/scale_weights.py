"""Where a two-scale decoder trusts its full-size pass: its learned per-pixel weight on one city.

    python -m ablations.evaluate.scale_weights --model results/scaleatt/fit_without_nairobi/model.keras \
        --data ../shared/data/oam_buildings --area nairobi_KE

A two-scale decoder (zoo.config.SCALE_FUSIONS) mixes the logits of the image at full and at
half size with a weight per pixel: 1 trusts the full-size pass, 0 the half-size one. Writes
OUT/scale_weights_AREA.md (the mean weight per zoom level on labelled building and background
pixels, and the building IoU at threshold 0.5) and OUT/scale_weights_AREA.png (RGB, label,
weight and prediction for the tiles with the most labelled building).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ablations.errors import UserFacingError, exit_status

BATCH = 16


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m ablations.evaluate.scale_weights", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a saved two-scale model (model.keras)")
    parser.add_argument("--data", type=Path, default=None, help="data folder (default: synthetic smoke scenes)")
    parser.add_argument("--area", required=True, help="the area whose tiles to look at (e.g. nairobi_KE)")
    parser.add_argument("--budget", default="standard")
    parser.add_argument("--out", type=Path, default=Path("results/scaleatt"))
    parser.add_argument("--tiles", type=int, default=4, help="tiles drawn")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    return exit_status(lambda: run(args))


def run(args) -> None:
    from ablations import studies
    from ablations.data import folders
    from ablations.pipeline import scan_samples
    from zoo import saving
    from zoo.files import write_text_atomic

    model, metadata = saving.load(args.model)
    samples, _, source = scan_samples(studies.BUDGETS[args.budget], args.data)
    chosen = [s for s in samples if s.area == args.area]
    if not chosen:
        raise UserFacingError(f"no tiles of area {args.area!r} in {source}; areas: "
                              f"{', '.join(sorted({s.area for s in samples}))}")
    images, masks = folders.load_arrays(chosen, studies.BUDGETS[args.budget].size)
    weights, probs = weights_and_probabilities(model, images)
    zooms = np.asarray([-1 if s.zoom is None else s.zoom for s in chosen])
    trained_on = ", ".join(metadata.get("data", {}).get("trained_on", []))
    title = f"`{args.model}` (trained on {trained_on or 'unknown'}) on {args.area}, {len(chosen)} tiles"
    stem = args.out / f"scale_weights_{args.area}"
    write_text_atomic(stem.with_suffix(".md"), table(weights, probs, masks, zooms, title))
    draw(images, masks, weights, probs, stem.with_suffix(".png"), title.replace("`", ""), args.tiles)
    print(f"wrote {stem.with_suffix('.md')} and {stem.with_suffix('.png')}")


def weights_and_probabilities(model, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The full-size pass's weight (N, H, W) in [0, 1] at the images' size, and the model's
    building probabilities, for images whose sides are multiples of 32 (the tiles: 256 px)."""
    import keras

    from zoo.predict import resize, sigmoid
    from zoo.unet import decoder_of, encoder_features, has_half_scale

    if not has_half_scale(model):
        raise UserFacingError(f"model {model.name!r} is not a two-scale decoder: it has no scale weight")
    decoder = decoder_of(model)
    probe = keras.Model(decoder.inputs, [decoder.get_layer("scale_weight").output, decoder.output])
    height, width = images.shape[1:3]
    weights, probs = [], []
    for start in range(0, len(images), BATCH):
        taps = encoder_features(model, images[start:start + BATCH].astype(np.float32))
        weight, logits = (np.asarray(o, np.float32)[..., 0] for o in probe.predict_on_batch(taps))
        weights += [resize(w, height, width) for w in weight]
        probs.append(sigmoid(logits))
    return np.clip(np.stack(weights), 0.0, 1.0), np.concatenate(probs)


def table(weights, probs, masks, zooms, title: str) -> str:
    from tabulate import tabulate

    from zoo.metrics import Confusion

    rows = []
    for zoom in sorted(set(zooms.tolist())):
        at = zooms == zoom
        building = masks[at].astype(bool)
        scores = Confusion().update(masks[at], probs[at] >= 0.5).scores()
        rows.append({"zoom": "unknown" if zoom == -1 else zoom, "tiles": int(at.sum()),
                     "weight on building pixels": f"{weights[at][building].mean():.3f}" if building.any() else "",
                     "weight on background pixels": f"{weights[at][~building].mean():.3f}",
                     "share of pixels trusting the half size (< 0.5)": f"{(weights[at] < 0.5).mean():.3f}",
                     "building IoU at 0.5": f"{scores['building_iou']:.3f}",
                     "recall": f"{scores['recall']:.3f}"})
    return (f"# The scale weight of {title}\n\n"
            "1 trusts the full-size pass, 0 the half-size one; an untrained decoder gives 0.5 everywhere.\n\n"
            + tabulate(rows, headers="keys", tablefmt="github", disable_numparse=True) + "\n")


def draw(images, masks, weights, probs, path: Path, title: str, count: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ablations.plots import save_figure_atomic

    most = np.argsort(masks.reshape(len(masks), -1).mean(axis=1))[::-1][:count]
    figure, axes = plt.subplots(len(most), 4, figsize=(10, 2.5 * len(most)), squeeze=False)
    for row, i in zip(axes, most):
        pictures = (images[i], masks[i], weights[i], probs[i] >= 0.5)
        names = ("RGB", "label", "weight of the full size (white 1, black 0)", "prediction at 0.5")
        for axis, picture, name in zip(row, pictures, names):
            axis.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=1)
            axis.set_title(name, fontsize=8)
            axis.axis("off")
    figure.suptitle(title, fontsize=9)
    save_figure_atomic(figure, path)


if __name__ == "__main__":
    sys.exit(main())
