"""python -m experiments.separation.evaluate --data DIR [--run NAME=FOLDER ...] [--out results/separation]

Issue 33's table: each run's held-out probabilities (a cross-validated curve's
folds/seedN/CITY.probs.npy: each city predicted as served by the fold that never saw it) scored
building by building (zoo.metrics.BuildingCounts, the SpaceNet rule) under each way of turning
them into buildings (INFERENCES), and pixel by pixel at the fixed threshold 0.5. Counts are
summed over a run's seeds per city, then each city's scores are averaged; the seed spread is the
range of the per-seed means. Writes OUT/scores.json, OUT/README.md's tables and OUT/outlines.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

from data import folders  # noqa: E402
from training import crossval, heldout  # noqa: E402
from zoo import separate  # noqa: E402
from zoo.files import atomic_path, write_json_atomic  # noqa: E402
from zoo.metrics import BuildingCounts, Confusion  # noqa: E402

# How probabilities become buildings. "threshold": the served mask's 8-connected blobs;
# "split": blobs split by a watershed from cores >= 0.8 (zoo.separate's defaults);
# "split-distance": from cores at least 3 px inside the mask (no probability used).
INFERENCES = {
    "threshold": lambda probs: probs >= heldout.FIXED,
    "split": lambda probs: separate.building_mask(probs, heldout.FIXED),
    "split-distance": lambda probs: separate.building_mask(probs, heldout.FIXED, seeds="distance"),
}
SIZES = {"4m2": ">= 4 m²", "0": "all"}
DEFAULT_RUNS = ("served=results/final", "separation=results/separation/separation")


def city_tiles(data: Path, size: int = 256) -> dict[str, dict]:
    """City -> its tiles in scan_folder order (the order of CITY.probs.npy): samples, masks, the
    minimum building size of each tile (training.crossval.min_pixels_of)."""
    samples = folders.scan_folder(data, check=False)
    cities = {}
    for city in sorted({s.area for s in samples}):
        own = [s for s in samples if s.area == city]
        images, masks = folders.load_arrays(own, size)
        pixel_m2 = np.array([folders.pixel_area_m2(s.name, size) for s in own])
        cities[city] = {"samples": own, "images": images, "masks": masks,
                        "min_pixels": crossval.min_pixels_of(pixel_m2)}  # fmt: skip
    return cities


def seeds_of(folder: Path, cities) -> list[int]:
    """The seeds whose every city's held-out probabilities the run's folds/ holds."""
    seeds = []
    for path in sorted((Path(folder) / "folds").glob("seed*")):
        if all((path / f"{city}.probs.npy").is_file() for city in cities):
            seeds.append(int(path.name[len("seed") :]))
    return sorted(seeds)


def score_run(folder: Path, cities: dict) -> dict:
    """{"pixels": seed -> city -> (tp, fp, fn, tn) at 0.5, "buildings": inference -> seed -> city
    -> size -> (tp, fp, fn, matched IoU sum)}."""
    pixels, buildings = {}, {name: {} for name in INFERENCES}
    for seed in seeds_of(folder, cities):
        pixels[seed] = {}
        for name in INFERENCES:
            buildings[name][seed] = {}
        for city, tiles in cities.items():
            probs = np.load(Path(folder) / "folds" / f"seed{seed}" / f"{city}.probs.npy").astype(np.float32)
            if len(probs) != len(tiles["masks"]):
                raise ValueError(
                    f"{folder}: seed {seed}, {city}: {len(probs)} tiles, the data has {len(tiles['masks'])}"
                )
            confusion = Confusion().update(tiles["masks"], probs >= heldout.FIXED)
            pixels[seed][city] = [confusion.tp, confusion.fp, confusion.fn, confusion.tn]
            for name, inference in INFERENCES.items():
                predicted = np.stack([inference(p) for p in probs])
                buildings[name][seed][city] = crossval.building_counts(
                    predicted, tiles["masks"], tiles["min_pixels"]
                )
            print(f"  {Path(folder).name}: seed {seed}, {city} scored")
    return {"pixels": pixels, "buildings": buildings}


def summary(scores: dict, inference: str, size: str) -> dict:
    """Per city (counts summed over seeds) and mean: building precision, recall, F1, matched IoU,
    pixel building IoU; per seed: the mean over cities of building F1 and pixel building IoU."""
    pixels, counted = scores["pixels"], scores["buildings"][inference]
    seeds = sorted(pixels, key=int)
    cities = sorted(pixels[seeds[0]])
    rows = {}
    for city in cities:
        total = sum((BuildingCounts(*counted[seed][city][size]) for seed in seeds), BuildingCounts())
        pixel = Confusion(*np.sum([pixels[seed][city] for seed in seeds], axis=0).tolist())
        rows[city] = {**total.scores(), "pixel_building_iou": pixel.scores()["building_iou"]}
    mean = {key: float(np.mean([row[key] for row in rows.values()])) for key in rows[cities[0]]}
    per_seed = {
        str(seed): {
            "building_f1": _mean(
                BuildingCounts(*counted[seed][c][size]).scores()["building_f1"] for c in cities
            ),
            "pixel_building_iou": _mean(Confusion(*pixels[seed][c]).scores()["building_iou"] for c in cities),
        }
        for seed in seeds
    }
    return {"seeds": [int(s) for s in seeds], "per_city": rows, "mean": mean, "per_seed": per_seed}


def _mean(values) -> float:
    return float(np.mean(list(values)))


def spread(summary_: dict, key: str) -> float:
    values = [row[key] for row in summary_["per_seed"].values()]
    return float(max(values) - min(values))


# --------------------------------------------------------------------------- the page


def table_lines(summaries: dict) -> list[str]:
    header = ("run", "inference", "buildings", "held-out city", "precision", "recall", "F1", "matched IoU",
              "pixel building IoU")  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (run, inference, size), item in summaries.items():
        for city, row in [*item["per_city"].items(), ("**mean**", item["mean"])]:
            cells = [run, inference, SIZES[size], city] + [
                f"{row[key]:.3f}"
                for key in (
                    "building_precision",
                    "building_recall",
                    "building_f1",
                    "matched_iou",
                    "pixel_building_iou",
                )
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def seed_lines(summaries: dict) -> list[str]:
    lines = [
        "| run | inference | buildings | seed | mean building F1 | mean pixel building IoU |",
        "|---|---|---|---|---|---|",
    ]
    for (run, inference, size), item in summaries.items():
        for seed, row in item["per_seed"].items():
            cells = (
                run,
                inference,
                SIZES[size],
                seed,
                f"{row['building_f1']:.3f}",
                f"{row['pixel_building_iou']:.3f}",
            )
            lines.append("| " + " | ".join(map(str, cells)) + " |")
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
    with atomic_path(path, suffix=".png") as staged:
        figure.savefig(staged, dpi=90)
    plt.close(figure)


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.separation.evaluate", description=__doc__.split("\n\n")[1]
    )
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument(
        "--run", action="append", help="NAME=FOLDER (a curve's folder); default: " + ", ".join(DEFAULT_RUNS)
    )
    parser.add_argument("--out", type=Path, default=Path("results/separation"))
    parser.add_argument("--size", type=int, default=256, help="the side the runs trained at (the budget's)")
    args = parser.parse_args(argv)
    runs = dict(item.split("=", 1) for item in (args.run or DEFAULT_RUNS))
    cities = city_tiles(args.data, args.size)
    scores = {run: score_run(Path(folder), cities) for run, folder in runs.items()}
    write_json_atomic(args.out / "scores.json", scores)
    scored = [run for run in runs if scores[run]["pixels"]]
    summaries = {(run, inference, size): summary(scores[run], inference, size)
                 for run in scored for inference in INFERENCES for size in SIZES}  # fmt: skip
    write_json_atomic(args.out / "summary.json", {" | ".join(key): value for key, value in summaries.items()})
    lines = table_lines(summaries) + [""] + seed_lines(summaries)
    (args.out / "tables.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    outlines_picture(
        cities,
        {run: folder for run, folder in runs.items() if scores[run]["pixels"]},
        args.out / "outlines.png",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
