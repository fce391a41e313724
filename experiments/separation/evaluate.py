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
import datetime
import json
import sys
import time
from pathlib import Path

import cv2
import matplotlib
import numpy as np
from scipy import ndimage

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

from data import folders  # noqa: E402
from training import crossval, heldout  # noqa: E402
from training.machine import describe as describe_machine  # noqa: E402
from zoo import separate  # noqa: E402
from zoo.files import atomic_path, write_json_atomic, write_text_atomic  # noqa: E402
from zoo.metrics import BuildingCounts, Confusion, label_buildings  # noqa: E402

# How probabilities become buildings. "threshold": the served mask's 8-connected blobs;
# "split": blobs split by a watershed from cores >= 0.8 (zoo.separate's defaults, the rule's);
# "split-distance": from cores at least 3 px inside the mask (no probability used).
INFERENCES = {
    "threshold": lambda probs: probs >= heldout.FIXED,
    "split": lambda probs: separate.building_mask(probs, heldout.FIXED),
    "split-distance": lambda probs: separate.building_mask(probs, heldout.FIXED, seeds="distance"),
}
# A secondary inference, added after the served seed 0 was scored: "split-chosen" splits each
# held-out city with the setting of GRID (or none) whose mean building F1 (>= 4 m²) is best on
# the *other* two cities, so nothing is chosen on the city it scores.
GRID = {
    **{f"cores>={level:g}": {"seed_threshold": level} for level in (0.6, 0.7, 0.9)},
    **{f"inside>={radius:g}px": {"seeds": "distance", "core_radius": radius} for radius in (2.0, 5.0)},
    # Blobs without a core are no buildings: precision, where the false ones are unsure.
    **{
        f"cores>={level:g}, sure only": {"seed_threshold": level, "unsure": "drop"}
        for level in (0.7, 0.8, 0.9)
    },
}
for _name, _options in GRID.items():
    INFERENCES[_name] = lambda probs, options=_options: separate.building_mask(
        probs, heldout.FIXED, **options
    )
CHOSEN = "split-chosen"
ORACLE = "split-by-truth"  # a bound: each blob split by the true buildings (split_by_truth)
CANDIDATES = ("threshold", "split", "split-distance", *GRID)
SIZES = {"4m2": ">= 4 m²", "0": "all"}
DEFAULT_RUNS = (
    "served=results/final",
    "separation=results/separation/separation",
    "separation_wide=results/separation/separation_wide",
)


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


def score_run(folder: Path, cities: dict, cache: Path | None = None) -> dict:
    """{"pixels": seed -> city -> (tp, fp, fn, tn) at 0.5, "buildings": inference -> seed -> city
    -> size -> (tp, fp, fn, matched IoU sum)}. A seed's scores are kept in `cache` (beside the
    probabilities' sizes and times), so adding a run or a seed rescores only what is new."""
    pixels, buildings = {}, {name: {} for name in (*INFERENCES, ORACLE)}
    for seed in map(str, seeds_of(folder, cities)):
        paths = [Path(folder) / "folds" / f"seed{seed}" / f"{city}.probs.npy" for city in cities]
        stamp = [[str(p), p.stat().st_size, p.stat().st_mtime] for p in paths]
        kept = cache / f"{str(folder).strip('/').replace('/', '+')}-seed{seed}.json" if cache else None
        if kept and kept.is_file() and json.loads(kept.read_text())["stamp"] == stamp:
            scored = json.loads(kept.read_text())
            if ORACLE not in scored["buildings"]:  # kept before the bound existed
                scored["buildings"][ORACLE] = score_seed(paths, cities, (ORACLE,))["buildings"][ORACLE]
                write_json_atomic(kept, scored)
        else:
            scored = score_seed(paths, cities)
            if kept:
                write_json_atomic(kept, {"stamp": stamp, **scored})
            print(f"  {folder}: seed {seed} scored")
        pixels[seed] = scored["pixels"]
        for name in (*INFERENCES, ORACLE):
            buildings[name][seed] = scored["buildings"][name]
    buildings[CHOSEN] = chosen_on_other_cities(buildings)
    return {"pixels": pixels, "buildings": buildings}


def score_seed(paths: list[Path], cities: dict, names=(*INFERENCES, ORACLE)) -> dict:
    pixels, buildings = {}, {name: {} for name in names}
    for path, (city, tiles) in zip(paths, cities.items()):
        probs = np.load(path).astype(np.float32)
        if len(probs) != len(tiles["masks"]):
            raise ValueError(f"{path}: {len(probs)} tiles, the data has {len(tiles['masks'])} of {city}")
        confusion = Confusion().update(tiles["masks"], probs >= heldout.FIXED)
        pixels[city] = [confusion.tp, confusion.fp, confusion.fn, confusion.tn]
        for name in names:
            if name == ORACLE:
                predicted = np.stack([split_by_truth(p, truth) for p, truth in zip(probs, tiles["masks"])])
            else:
                predicted = np.stack([INFERENCES[name](p) for p in probs])
            buildings[name][city] = crossval.building_counts(predicted, tiles["masks"], tiles["min_pixels"])
    return {"pixels": pixels, "buildings": buildings}


def split_by_truth(probs: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """A bound, not an inference: the mask at 0.5 with each blob split perfectly, every pixel
    given to the nearest true building inside its blob (blobs with none stay whole). What
    separation alone could reach with the model's own pixels."""
    building = probs >= heldout.FIXED
    markers = np.where(building, label_buildings(truth), 0).astype(np.int32)
    _, blobs = cv2.connectedComponents(building.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    seeded = np.zeros(blobs.max() + 1, bool)
    seeded[blobs[markers > 0]] = True
    alone = building & ~seeded[blobs]
    markers[alone] = blobs[alone] + markers.max()
    cost = np.where(building, 0, 255).astype(np.uint8)  # flat: each pixel to the nearest marker
    labels = ndimage.watershed_ift(cost, markers, structure=np.ones((3, 3), bool))
    labels[~building] = 0
    return separate.separated_mask(labels)


def chosen_on_other_cities(buildings: dict, size: str = "4m2") -> dict:
    """Seed -> city -> the counts of the candidate inference whose mean building F1 at `size`
    (counts summed over seeds) is best over the other cities; "rule" names each city's choice."""
    seeds = sorted(buildings["threshold"], key=int)
    if not seeds:
        return {}
    cities = sorted(buildings["threshold"][seeds[0]])

    def f1(name: str, city: str) -> float:
        total = sum((BuildingCounts(*buildings[name][seed][city][size]) for seed in seeds), BuildingCounts())
        return total.scores()["building_f1"]

    chosen = {}
    for city in cities:
        others = [c for c in cities if c != city] or [city]
        chosen[city] = max(
            CANDIDATES, key=lambda name: (_mean(f1(name, c) for c in others), -CANDIDATES.index(name))
        )
    counts = {seed: {city: buildings[chosen[city]][seed][city] for city in cities} for seed in seeds}
    return {**counts, "rule": chosen}


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
    started = time.time()
    runs = dict(item.split("=", 1) for item in (args.run or DEFAULT_RUNS))
    cities = city_tiles(args.data, args.size)
    scores = {run: score_run(Path(folder), cities, args.out / "cache") for run, folder in runs.items()}
    write_json_atomic(args.out / "scores.json", scores)
    scored = [run for run in runs if scores[run]["pixels"]]
    every = (*INFERENCES, CHOSEN, ORACLE)
    summaries = {(run, inference, size): summary(scores[run], inference, size)
                 for run in scored for inference in every for size in SIZES}  # fmt: skip
    write_json_atomic(args.out / "summary.json", {" | ".join(key): value for key, value in summaries.items()})
    shown = {key: value for key, value in summaries.items() if key[1] in SHOWN}
    rules = {run: scores[run]["buildings"][CHOSEN]["rule"] for run in scored}
    outlines_picture(cities, {run: runs[run] for run in scored}, args.out / "outlines.png")
    page = [
        "# Buildings, not blobs: held-out building counts (issue 33)",
        "",
        f"Made by `python -m experiments.separation.evaluate {' '.join(argv or sys.argv[1:])}` on "
        f"{describe_machine()}, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}, "
        f"{time.time() - started:.0f} s; the question, hypothesis and rule: "
        "[experiments/separation/README.md](../../experiments/separation/README.md).",
        "",
        f"Data: {args.data}, cross-validation by city (each city predicted as served, `none@1+0.5`, by "
        "the fold that never saw it; folders: "
        + ", ".join(f"{run} = `{runs[run]}`" for run in scored)
        + "). "
        "Buildings: 8-connected components of the true mask and of the predicted one (after the "
        "inference's split); a prediction is found when its IoU with a still-unmatched true building is "
        "at least 0.5 (SpaceNet); ≥ 4 m² ignores smaller ones on both sides. Counts summed over the "
        "seeds per city, then the mean over cities. Pixel building IoU = TP/(TP+FP+FN) at 0.5 over each "
        "city's pixels, the same for every inference of a run.",
        "",
        "## Verdict",
        "",
        *verdicts(shown),
        "",
        "## Mean over the held-out cities",
        "",
        *mean_lines(shown),
        "",
        "Inferences: `threshold`, the blobs at 0.5 (served today); `split`, a watershed from cores ≥ 0.8 "
        "(`zoo.separate` defaults, the rule's); `split-distance`, from the parts ≥ 3 px inside the mask; "
        f"`{CHOSEN}`, each city split with the setting best on the other two cities (secondary, added "
        f"after the served seed 0 was seen); `{ORACLE}`, a bound and no inference: each blob split "
        "perfectly by the true buildings it covers (what separation alone could reach with the model's "
        "own pixels).",
        "",
        "## Per held-out city (≥ 4 m²)",
        "",
        *city_lines(shown, rules),
        "",
        "## Per seed",
        "",
        *seed_lines(shown),
        "",
        "![per city, the held-out tile with most buildings: truth, the served blobs, each run split]"
        "(outlines.png)",
        "",
    ]
    write_text_atomic(args.out / "README.md", "\n".join(page))
    print("\n".join(page))
    return 0


if __name__ == "__main__":
    sys.exit(main())
