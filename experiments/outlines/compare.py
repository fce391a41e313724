"""Raw against regular outlines on the held-out cities, and building F1 against the minimum size.

    python -m experiments.outlines.compare --data ../shared/data/oam_buildings \\
        --folds results/final/folds --out results/outlines

Reads what `python -m training.fit --curve --seeds 0,1,2` keeps of each fold: the held-out
city's probabilities as served, FOLDS/seedN/CITY.probs.npy (float16, one 256 x 256 map a tile,
tiles in the order of `data.folders.scan_folder` filtered to the city, as training.folds
`area_folds` takes them). For every tile and seed: threshold 0.5 (the served rule), outlines as
the server makes them (`zoo.polygons.outlines`, raw or regular, pixel coordinates), each
building's area in m² from the tile's ground resolution (`data.folders.pixel_area_m2`), the
outlines rasterised back (pixel centres) and scored against the true mask: buildings one to
one (`zoo.metrics.BuildingCounts`, IoU >= 0.5) and pixels (`zoo.metrics.Confusion`), for each
minimum area in m² and each minimum mask-pixel count. Counts are summed over tiles and seeds;
a city's scores come from its sums, and the mean is over cities. True buildings are never
filtered: a minimum only leaves predicted ones out, as the server does.

Writes OUT/outlines.json (every count), OUT/README.md (the tables and the defaults they
choose) and OUT/outlines.png (raw and regular outlines on a few tiles).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import shapely
from affine import Affine
from rasterio.features import rasterize

from data import folders
from training.machine import describe as describe_machine
from zoo import polygons
from zoo.metrics import BuildingCounts, Confusion

THRESHOLD = 0.5  # the served model's (results/final/model.json "threshold")
CITIES = ("dar_es_salaam_TZ", "kathmandu_NP", "nairobi_KE")
MIN_AREAS_M2 = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0)
MIN_PIXELS = (0, 16, 32, 64, 128, 256, 512, 1024)
# A minimum within this much mean building F1 of the best is as good: the smallest such wins,
# as it leaves out the fewest real buildings.
TIE = 0.005
SIDE = 256


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.time()
    samples = folders.scan_folder(args.data, check=True)
    counts, checks, examples, tiles, coarsest = {}, {}, {}, {}, 0.0
    for city in args.cities:
        chosen = [sample for sample in samples if sample.area == city]
        images, masks = folders.load_arrays(chosen, SIDE)
        pixel_m2 = np.array([folders.pixel_area_m2(sample.name, SIDE) for sample in chosen])
        coarsest = max(coarsest, float(pixel_m2.max(initial=0.0)))
        counts[city], tiles[city] = {}, len(chosen)
        for seed_dir in sorted(Path(args.folds).glob("seed*")):
            probs = _held_out(seed_dir / f"{city}.probs.npy", len(chosen))
            if probs is None:
                continue
            print(f"{city}, {seed_dir.name}: {len(chosen)} tiles", flush=True)
            tally = score_city(probs, masks, pixel_m2)
            checks[f"{city}/{seed_dir.name}"] = order_check(seed_dir / f"{city}.json", tally["mask"])
            counts[city][seed_dir.name] = tally
            if city not in examples:
                index = example_tile(masks)
                examples[city] = (chosen[index].name, images[index], masks[index], np.float32(probs[index]))
    counts = {city: by_seed for city, by_seed in counts.items() if by_seed}
    if not counts:
        raise SystemExit(f"no CITY.probs.npy under {args.folds}/seed*/ for {', '.join(args.cities)}")
    record = summarise(counts, checks, tiles, coarsest, args, time.time() - started)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "outlines.json").write_text(json.dumps(record, indent=1) + "\n")
    from experiments.outlines.report import picture, write_readme

    picture(examples, out / "outlines.png")
    write_readme(record, out / "README.md")
    print(f"wrote {out}/README.md, outlines.json, outlines.png in {time.time() - started:.0f} s")
    return 0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the oam_buildings folder")
    parser.add_argument("--folds", type=Path, default=Path("results/final/folds"))
    parser.add_argument("--out", type=Path, default=Path("results/outlines"))
    parser.add_argument("--cities", nargs="+", default=list(CITIES))
    return parser.parse_args(argv)


def _held_out(path: Path, tiles: int) -> np.ndarray | None:
    if not path.is_file():
        return None
    probs = np.load(path, mmap_mode="r")
    if probs.shape != (tiles, SIDE, SIDE):
        raise SystemExit(f"{path}: shape {probs.shape}, but the city has {tiles} tiles of {SIDE} px")
    return probs


def score_city(probs: np.ndarray, masks: np.ndarray, pixel_m2: np.ndarray) -> dict:
    """Counts summed over the tiles: "mask" (the thresholded mask itself, as training.crossval
    counts it), and for each outline kind, each minimum in m² and in pixels, building counts,
    pixel counts, buildings and vertices."""
    tally = {"mask": BuildingCounts()}
    for kind in KINDS:
        tally[kind] = {
            "m2": {minimum: _Tally() for minimum in MIN_AREAS_M2},
            "pixels": {minimum: _Tally() for minimum in MIN_PIXELS},
        }
    for prob, truth, area in zip(probs, masks, pixel_m2):
        prob = np.asarray(prob, np.float32)
        predicted = (prob >= THRESHOLD).astype(np.uint8)
        tally["mask"].update(truth, predicted)
        raw = polygons.outlines(predicted, prob)
        for kind, outlined in KINDS.items():
            found = outlined(predicted, prob, raw)
            geometries = [footprint.geometry for footprint in found]
            areas_m2 = shapely.area(np.array(geometries, dtype=object)) * area if found else np.zeros(0)
            pixels = np.array([footprint.pixels for footprint in found])
            for minimum, counted in tally[kind]["m2"].items():
                counted.add(truth, geometries, areas_m2 >= minimum)
            for minimum, counted in tally[kind]["pixels"].items():
                counted.add(truth, geometries, pixels >= minimum)
    return tally


class _Tally:
    """What one outline kind at one minimum scores over many tiles."""

    def __init__(self):
        self.buildings, self.pixels, self.count, self.vertices = BuildingCounts(), Confusion(), 0, 0

    def add(self, truth: np.ndarray, geometries: list, kept: np.ndarray) -> None:
        kept_geometries = [geometry for geometry, keep in zip(geometries, kept) if keep]
        drawn = burn(kept_geometries, truth.shape)
        self.buildings.update(truth, drawn)
        self.pixels.update(truth, drawn)
        self.count += len(kept_geometries)
        self.vertices += sum(vertices(geometry) for geometry in kept_geometries)

    def record(self) -> dict:
        b, p = self.buildings, self.pixels
        return {
            "buildings": [b.tp, b.fp, b.fn, b.matched_iou_sum],
            "pixels": [p.tp, p.fp, p.fn, p.tn],
            "outlines": self.count,
            "vertices": self.vertices,
        }


def _served(kind: str):
    def outlined(predicted, prob, raw):
        return raw if kind == "raw" else polygons.outlines(predicted, prob, outline=kind)

    return outlined


def _buildingregulariser(predicted, prob, raw):
    """The raw outlines regularised by the `buildingregulariser` package (its defaults, in
    pixels), for comparison only: it is not a dependency of the product."""
    from buildingregulariser.regularization import regularize_single_polygon

    regular = []
    for footprint in raw:
        pieces = regularize_single_polygon(footprint.geometry, 1.0, True, 15, True, 0.9, True, 0.5)
        geometry = shapely.union_all([piece["geometry"] for piece in pieces])
        regular.append(dataclasses.replace(footprint, geometry=geometry))
    return regular


def _kinds() -> dict:
    """Outline kind -> how to make it from (mask, probabilities, raw footprints): the served
    kinds, and buildingregulariser's where it is installed (see experiments/outlines/README.md)."""
    kinds = {kind: _served(kind) for kind in polygons.OUTLINES}
    if importlib.util.find_spec("buildingregulariser") is not None:
        kinds["buildingregulariser"] = _buildingregulariser
    return kinds


KINDS = _kinds()


def example_tile(masks: np.ndarray) -> int:
    """A tile worth a picture: the one with the most true buildings of at least 64 px."""
    from zoo.metrics import label_buildings

    return int(np.argmax([label_buildings(mask, 64).max() for mask in masks]))


def burn(geometries: list, shape: tuple[int, int]) -> np.ndarray:
    """The pixels whose centre lies inside an outline (rasterio's rule, pixel coordinates)."""
    if not geometries:
        return np.zeros(shape, np.uint8)
    return rasterize(
        [(g, 1) for g in geometries], out_shape=shape, transform=Affine.identity(), dtype="uint8"
    )


def vertices(geometry) -> int:
    """Corners of an outline: its coordinates less each ring's closing repeat."""
    rings = shapely.get_rings(geometry)
    return int(shapely.get_num_coordinates(geometry)) - len(rings)


def order_check(fold_json: Path, mask_counts: BuildingCounts) -> dict | None:
    """Whether the probabilities line up with the tiles as this script reads them: the fold's
    own building counts (training.crossval, all sizes, the same threshold) against this
    script's on the same masks. float16 storage can move a pixel or two across 0.5."""
    if not fold_json.is_file():
        return None
    recorded = json.loads(fold_json.read_text()).get("buildings") or {}
    option = next(iter(recorded), None)
    if option is None or "0" not in recorded[option]:
        return None
    theirs = recorded[option]["0"]
    ours = [mask_counts.tp, mask_counts.fp, mask_counts.fn, mask_counts.matched_iou_sum]
    return {"option": option, "fold": theirs, "here": ours}


def summarise(counts: dict, checks: dict, tiles: dict, coarsest: float, args, seconds: float) -> dict:
    """The JSON record: each city's sums over seeds, their scores, the means and the defaults."""
    cities = sorted(counts)
    seeds = sorted({seed for by_seed in counts.values() for seed in by_seed})
    per_city = {}
    for city in cities:
        tallies = list(counts[city].values())
        per_city[city] = {"mask": _scores(_sum_buildings([t["mask"] for t in tallies]))}
        for kind in KINDS:
            per_city[city][kind] = {
                rule: {str(minimum): _summed(tallies, kind, rule, minimum) for minimum in grid}
                for rule, grid in (("m2", MIN_AREAS_M2), ("pixels", MIN_PIXELS))
            }
    record = {
        "kinds": list(KINDS),
        "data": str(args.data),
        "folds": str(args.folds),
        "seeds": seeds,
        "cities": cities,
        "tiles": {city: tiles[city] for city in cities},
        "coarsest_pixel_m2": coarsest,
        "threshold": THRESHOLD,
        "per_city": per_city,
        "order_checks": checks,
        "machine": describe_machine(),
        "seconds": round(seconds, 1),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    record["mean"] = _means(per_city)
    record["chosen"] = choose(record["mean"], coarsest)
    return record


def _summed(tallies: list, kind: str, rule: str, minimum) -> dict:
    parts = [t[kind][rule][minimum].record() for t in tallies]
    total = {key: (np.sum([part[key] for part in parts], axis=0).tolist()) for key in ("buildings", "pixels")}
    total.update(outlines=sum(p["outlines"] for p in parts), vertices=sum(p["vertices"] for p in parts))
    tp, fp, fn, _ = total["pixels"]
    scores = BuildingCounts(*total["buildings"]).scores()
    scores["pixel_iou"] = tp / (tp + fp + fn) if tp + fp + fn else 0.0
    scores["vertices_per_building"] = total["vertices"] / total["outlines"] if total["outlines"] else 0.0
    return {**total, "scores": scores}


def _sum_buildings(counts: list[BuildingCounts]) -> BuildingCounts:
    total = BuildingCounts()
    for part in counts:
        total = total + part
    return total


def _scores(counts: BuildingCounts) -> dict:
    return {**counts.scores(), "counts": [counts.tp, counts.fp, counts.fn, counts.matched_iou_sum]}


def _means(per_city: dict) -> dict:
    """Kind -> rule -> minimum -> each score's mean over the cities."""
    first = next(iter(per_city.values()))
    means = {}
    for kind in KINDS:
        means[kind] = {}
        for rule, by_minimum in first[kind].items():
            means[kind][rule] = {
                minimum: {
                    score: float(
                        np.mean([per_city[c][kind][rule][minimum]["scores"][score] for c in per_city])
                    )
                    for score in by_minimum[minimum]["scores"]
                }
                for minimum in by_minimum
            }
    return means


def choose(means: dict, coarsest_pixel_m2: float) -> dict:
    """The defaults the measurement picks: the outline kind with the higher mean building F1
    with no minimum (a tie within TIE goes to the higher pixel IoU), then for that kind the
    smallest minimum in m², and in pixels, within TIE of the best mean building F1.

    The pixel minimum is looked for only among those that keep every building the m² minimum
    keeps at the coarsest ground resolution of the data (`coarsest_pixel_m2`, m² a pixel): a
    plain image says nothing of its resolution, and most tiles here are zoom 21 (about 7.5 cm),
    where F1 keeps rising to 1024 px, which is 6 m² there but 90 m² at zoom 19 (30 cm)."""

    def f1(kind, rule, minimum):
        return means[kind][rule][minimum]["building_f1"]

    raw, regular = (means[kind]["m2"]["0.0"] for kind in ("raw", "regular"))
    if abs(raw["building_f1"] - regular["building_f1"]) >= TIE:
        outline = "regular" if regular["building_f1"] > raw["building_f1"] else "raw"
    else:
        outline = "regular" if regular["pixel_iou"] > raw["pixel_iou"] else "raw"
    chosen = {"outline": outline}
    for rule, name, cast in (("m2", "min_area_m2", float), ("pixels", "min_pixels", int)):
        minimums = sorted(means[outline][rule], key=float)
        if rule == "pixels":
            most = chosen["min_area_m2"] / coarsest_pixel_m2
            minimums = [minimum for minimum in minimums if float(minimum) <= most]
        best = max(f1(outline, rule, minimum) for minimum in minimums)
        smallest = next(m for m in minimums if f1(outline, rule, m) >= best - TIE)
        chosen[name] = cast(float(smallest))
    return chosen


if __name__ == "__main__":
    raise SystemExit(main())
