"""The final fit's figures: its cross-validated learning curve and sample predictions."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only: no display here
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

from data import folders
from training import folds
from zoo.files import save_figure_atomic
from zoo.predict import Segmenter


def learning_curve(curve: dict, path: Path) -> None:
    """Training building IoU (each fold's, on its training tiles) and held-out building IoU
    (each fold's city and their mean, at the best threshold of each epoch) by epoch."""
    figure, ax = plt.subplots(figsize=(6.4, 3.8))
    epochs = np.arange(1, curve["curve_epochs"] + 1)
    for city, fold in curve["folds"].items():
        held_out = folds.building_iou(np.asarray(fold["counts"])).max(axis=1)
        (line,) = ax.plot(epochs, held_out, marker="o", markersize=3, label=f"held out: {city}")
        if "building_iou" in fold["history"]:
            ax.plot(
                epochs,
                fold["history"]["building_iou"],
                linestyle=":",
                color=line.get_color(),
                label=f"training (without {city})",
            )
    ax.plot(
        epochs, curve["mean_heldout_building_iou_by_epoch"], color="black", linewidth=2, label="mean held out"
    )
    ax.axvline(curve["chosen"]["epochs"], color="grey", linestyle="--", label="chosen epochs")
    ax.set_xlabel("epoch")
    ax.set_ylabel("building IoU")
    ax.legend(fontsize=6, loc="lower right")
    ax.grid(alpha=0.3)
    save_figure_atomic(figure, path)


def samples(model, inference: tuple, pool, test_samples, size: int, path: Path, tiles: int = 4) -> None:
    """RGB, truth and prediction (as served: `inference` is the threshold, test-time views and
    scales) for a few tiles with buildings: test tiles when there is a test area, else pool
    tiles (which the model trained on, and the title says so)."""
    if test_samples:
        images, masks = folders.load_arrays(test_samples, size)
        where = "test area (never trained on)"
    else:
        images, masks = pool.images, pool.masks[0]
        where = "training tiles (no test area)"
    chosen = [i for i in range(len(images)) if masks[i].mean() > 0.05][:tiles] or list(
        range(min(tiles, len(images)))
    )
    threshold, tta, scales = inference
    segmenter = Segmenter(model, threshold=threshold, tta=tta, scales=tuple(scales))
    figure, axes = plt.subplots(len(chosen), 3, figsize=(5.4, 1.8 * len(chosen)), squeeze=False)
    for row, index in enumerate(chosen):
        panels = [
            ("RGB", images[index]),
            ("truth", masks[index]),
            ("prediction", segmenter.predict(images[index])),
        ]
        for col, (title, panel) in enumerate(panels):
            axes[row, col].imshow(
                panel, cmap=None if panel.ndim == 3 else "gray", vmin=0, vmax=None if panel.ndim == 3 else 1
            )
            axes[row, col].set_axis_off()
            if row == 0:
                axes[row, col].set_title(title, fontsize=7)
    figure.suptitle(where, fontsize=7)
    save_figure_atomic(figure, path)
