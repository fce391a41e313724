"""Comparison plots for a study, from its trial records (PNG, written atomically)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.plots import plt
from zoo.files import save_figure_atomic

FIGURES = {
    "tradeoffs.png": "test building IoU against latency and against trainable parameters, Pareto front "
    "marked",
    "metrics.png": "test metrics per configuration, error bars = std across seeds",
    "curves.png": "training curves (loss and training building IoU per epoch)",
    "samples.png": "test tiles: RGB, ground truth, then each configuration's prediction",
}
BAR_METRICS = ("precision", "recall", "building_iou", "mean_iou", "f1")


def write_all(study_dir: Path, frame, summary, records, test_arrays) -> None:
    study_dir = Path(study_dir)
    tradeoffs(summary, study_dir / "tradeoffs.png")
    metric_bars(summary, study_dir / "metrics.png")
    curves(records, study_dir / "curves.png")
    samples(records, summary, test_arrays, study_dir / "samples.png")


def figure_links() -> str:
    return "\n" + "\n".join(f"![{what}]({name})" for name, what in FIGURES.items()) + "\n"


def pareto_front(cost: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """Indices of points no other point beats on both lower cost and higher quality."""
    order = np.lexsort((-quality, cost))
    front, best = [], -np.inf
    for i in order:
        if quality[i] > best:
            front.append(i)
            best = quality[i]
    return np.array(front, dtype=int)


def tradeoffs(summary, path: Path) -> None:
    figure, axes = plt.subplots(1, 2, figsize=(13, 5))
    quality = summary["building_iou"].to_numpy()
    for ax, cost_column, label in (
        (axes[0], "latency_ms", "latency, ms per 256x256 tile (median)"),
        (axes[1], "trainable_params", "trainable parameters"),
    ):
        cost = summary[cost_column].to_numpy(dtype=float)
        ax.scatter(cost, quality, color="tab:blue")
        for x, y, name in zip(cost, quality, summary["variant"]):
            ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        front = pareto_front(cost, quality)
        ax.plot(cost[front], quality[front], "r--", marker="o", mfc="none", label="Pareto front")
        ax.set_xlabel(label)
        ax.set_ylabel("test building IoU")
        ax.grid(alpha=0.3)
        ax.legend()
    save_figure_atomic(figure, path)


def metric_bars(summary, path: Path) -> None:
    figure, ax = plt.subplots(figsize=(max(8, len(summary) * 0.9), 5))
    positions = np.arange(len(summary))
    width = 0.8 / len(BAR_METRICS)
    for k, metric in enumerate(BAR_METRICS):
        errors = summary.get(f"{metric}_std", 0 * summary[metric])
        ax.bar(
            positions + k * width,
            summary[metric],
            width,
            yerr=errors,
            capsize=2,
            label=metric.replace("_", " "),
        )
    ax.set_xticks(positions + 0.4 - width / 2)
    ax.set_xticklabels(summary["variant"], rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("test score (pixels summed over the split)")
    ax.legend(ncol=len(BAR_METRICS), fontsize=8)
    save_figure_atomic(figure, path)


def curves(records, path: Path) -> None:
    figure, axes = plt.subplots(1, 2, figsize=(13, 5))
    for record in records:
        history = record["history"]
        label = f"{record['variant']} s{record['seed']}" + _recipe_tag(record)
        axes[0].plot(history.get("loss", []), label=label)
        axes[1].plot(history.get("building_iou", []), label=label)
    axes[0].set_ylabel("training loss")
    axes[1].set_ylabel("training building IoU")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=6, ncol=2)
    save_figure_atomic(figure, path)


def _recipe_tag(record) -> str:
    recipe = record["recipe"]
    return f" {recipe['loss']}/{recipe['augmentation']}/lr{recipe['learning_rate']:.0e}"


def samples(records, summary, test_arrays, path: Path, tiles: int = 4) -> None:
    """RGB, ground truth, then one prediction per configuration (its first seed's trial)."""
    images, masks = test_arrays
    trials_dir = Path(path).parent / "trials"
    by_id = {r["trial_id"]: r for r in records}
    shown = []
    for _, row in summary.iterrows():
        trial = by_id[row["trial_ids"].split()[0]]
        title = (
            row["variant"]
            if summary["variant"].nunique() == len(summary)
            else row["variant"] + _recipe_tag(trial)
        )
        shown.append((title, np.load(trials_dir / f"{trial['trial_id']}.samples.npy")))
    tiles = min(tiles, len(images), *(len(p) for _, p in shown))
    columns = 2 + len(shown)
    figure, axes = plt.subplots(tiles, columns, figsize=(1.6 * columns, 1.7 * tiles), squeeze=False)
    for row in range(tiles):
        panels = [("RGB", images[row]), ("ground truth", masks[row])]
        panels += [(title, predictions[row]) for title, predictions in shown]
        for col, (title, panel) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(
                panel, cmap=None if panel.ndim == 3 else "gray", vmin=0, vmax=1 if panel.ndim == 2 else None
            )
            ax.set_axis_off()
            if row == 0:
                ax.set_title(title, fontsize=6, rotation=20)
    save_figure_atomic(figure, path)
