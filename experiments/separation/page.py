"""The page of experiments.separation.evaluate: its verdict by the experiment's rule, the tables
(mean over held-out cities, per city, per seed) and the picture of outlines."""

from __future__ import annotations

from pathlib import Path

import cv2
import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

from experiments.separation.inferences import CHOSEN, INFERENCES, ORACLE  # noqa: E402
from training import crossval  # noqa: E402
from zoo.files import save_figure_atomic  # noqa: E402


def spread(summary_: dict, key: str) -> float:
    values = [row[key] for row in summary_["per_seed"].values()]
    return float(max(values) - min(values))


# --------------------------------------------------------------------------- the page

# The inferences the page shows (summary.json holds every one of INFERENCES).
SHOWN = ("threshold", "split", "split-distance", CHOSEN, ORACLE)
BASELINE = ("served", "threshold")
KEYS = ("building_precision", "building_recall", "building_f1", "matched_iou", "pixel_building_iou")


def _cells(values) -> str:
    return "| " + " | ".join(map(str, values)) + " |"


def mean_lines(summaries: dict) -> list[str]:
    """One row per run and inference: the mean over held-out cities, >= 4 m² and all sizes."""
    header = ("run", "inference", "P ≥ 4 m²", "R ≥ 4 m²", "**F1 ≥ 4 m²**", "matched IoU ≥ 4 m²", "F1 all",
              "pixel building IoU", "seeds")  # fmt: skip
    lines = [_cells(header), "|" + "---|" * len(header)]
    for (run, inference, size), item in summaries.items():
        if size != "4m2":
            continue
        row, every = item["mean"], summaries[(run, inference, "0")]["mean"]
        values = [
            *(f"{row[k]:.3f}" for k in KEYS[:2]),
            f"**{row['building_f1']:.3f}**",
            f"{row['matched_iou']:.3f}",
            f"{every['building_f1']:.3f}",
            f"{row['pixel_building_iou']:.3f}",
        ]
        lines.append(_cells([run, inference, *values, ",".join(map(str, item["seeds"]))]))
    return lines


def city_lines(summaries: dict, rules: dict) -> list[str]:
    header = (
        "run",
        "inference",
        "held-out city",
        "precision",
        "recall",
        "F1",
        "matched IoU",
        "pixel building IoU",
    )
    lines = [_cells(header), "|" + "---|" * len(header)]
    for (run, inference, size), item in summaries.items():
        if size != "4m2":
            continue
        for city, row in item["per_city"].items():
            shown = f"{inference} ({rules[run][city]})" if inference == CHOSEN else inference
            lines.append(_cells([run, shown, city, *(f"{row[k]:.3f}" for k in KEYS)]))
    return lines


def seed_lines(summaries: dict) -> list[str]:
    lines = [
        _cells(("run", "inference", "seed", "mean F1 ≥ 4 m²", "mean pixel building IoU")),
        "|---|---|---|---|---|",
    ]
    for (run, inference, size), item in summaries.items():
        if size == "4m2" and inference in ("threshold", "split"):
            for seed, row in item["per_seed"].items():
                lines.append(
                    _cells(
                        [
                            run,
                            inference,
                            seed,
                            f"{row['building_f1']:.3f}",
                            f"{row['pixel_building_iou']:.3f}",
                        ]
                    )
                )
    return lines


def verdicts(summaries: dict) -> list[str]:
    """The rule of experiments/separation/README.md, against the served recipe's blobs."""
    base = summaries.get((*BASELINE, "4m2"))
    if base is None:
        return ["No served run scored: no verdict."]
    f1, pixels = base["mean"]["building_f1"], base["mean"]["pixel_building_iou"]
    f1_spread, pixel_spread = spread(base, "building_f1"), spread(base, "pixel_building_iou")
    lines = [f"Served recipe (blobs at 0.5): mean F1 ≥ 4 m² **{f1:.3f}** (seed spread {f1_spread:.3f}), "
             f"mean pixel building IoU {pixels:.3f} (seed spread {pixel_spread:.3f}); the target is F1 ≥ "
             f"{2 * f1:.3f}.", ""]  # fmt: skip
    for (run, inference, size), item in summaries.items():
        if size != "4m2" or (run, inference) == BASELINE:
            continue
        if inference == ORACLE:
            bound = item["mean"]["building_f1"]
            lines.append(
                f"- {run}, {ORACLE} (a bound, not an inference): F1 {bound:.3f} ({bound / f1:.2f}x)."
            )
            continue
        gain = item["mean"]["building_f1"] - f1
        drop = pixels - item["mean"]["pixel_building_iou"]
        wins = gain > f1_spread and drop <= pixel_spread
        lines.append(
            f"- {run}, {inference}: F1 {item['mean']['building_f1']:.3f} ({gain:+.3f}; "
            f"{'above' if gain > f1_spread else 'not above'} the spread), pixel building IoU "
            f"{-drop:+.3f} ({'within' if drop <= pixel_spread else 'beyond'} the spread): "
            f"{'**wins**' if wins else 'does not win'}; target "
            f"{'met' if item['mean']['building_f1'] >= 2 * f1 else 'missed'} "
            f"({item['mean']['building_f1'] / max(f1, 1e-9):.2f}x)."
        )
    return lines


def outlines_picture(cities: dict, folders_by_run: dict, path: Path, seed: int = 0) -> None:
    """Per city, its held-out tile with the most true buildings >= 4 m²: RGB with the true outlines,
    the served model's (blobs at 0.5) and each other run's split outlines, seed 0."""
    runs = list(folders_by_run)
    figure, axes = plt.subplots(
        len(cities), 1 + len(runs), figsize=(3.2 * (1 + len(runs)), 3.2 * len(cities))
    )
    axes = np.atleast_2d(axes)
    for row, (city, tiles) in enumerate(cities.items()):
        minimum = tiles["min_pixels"].get("4m2", tiles["min_pixels"]["0"])
        counts = [crossval.building_counts(m[None] > 0, m[None], {"n": minimum[i : i + 1]})["n"][0]
                  for i, m in enumerate(tiles["masks"])]  # fmt: skip
        best = int(np.argmax(counts))
        image, truth = tiles["images"][best], tiles["masks"][best]
        panels = [("truth", truth > 0)]
        for run in runs:
            probs = np.load(Path(folders_by_run[run]) / "folds" / f"seed{seed}" / f"{city}.probs.npy")[best]
            inference = "threshold" if run == "served" else "split"
            panels.append((f"{run} ({inference})", INFERENCES[inference](probs.astype(np.float32))))
        for column, (title, mask) in enumerate(panels):
            axes[row, column].imshow(draw_outlines(image, mask))
            count = int(cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)[0] - 1)
            axes[row, column].set_title(f"{city}: {title}, {count} outlines", fontsize=8)
            axes[row, column].axis("off")
    figure.tight_layout()
    save_figure_atomic(figure, path, dpi=90, bbox_inches=None)


def draw_outlines(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image with each 8-connected building's outline drawn in its own colour."""
    out = image.copy()
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    palette = plt.get_cmap("tab10")
    for label in range(1, count):
        contours, _ = cv2.findContours(
            (labels == label).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
        )
        colour = tuple(int(255 * c) for c in palette(label % 10)[:3])
        cv2.drawContours(out, contours, -1, colour, 1)
    return out
