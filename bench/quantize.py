"""`python -m bench.quantize [--data DIR] [--folds DIR] [--model PATH] [--out results/int8]`

What post-training int8 quantization costs and gains: each cross-validation fold's decoder (a
model that never saw its city, `training.crossval`: FOLDS/CITY.weights.h5) exported as the float
LiteRT model and as a full-integer one (`zoo.export.quantized_tflite`, calibrated on
CALIBRATION_TILES tiles of the fold's training cities), both run as served (`zoo.predict`:
scales, threshold) over the held-out city's tiles: building IoU (pixel counts summed over the
city), building F1 (one building matched at IoU >= 0.5), and how many pixels change. Then the
served model, float and int8, timed in turns on one 512 px tile and on a 2048 px scene.

The rule (issue 35): int8 is served by default only if it loses under MAX_IOU_LOSS building IoU
(mean over the held-out cities) and runs at least MIN_SPEEDUP times faster. Writes
OUT/README.md and OUT/int8.json.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from data import folders  # noqa: E402
from training.crossval import BUILDING_MIN_M2, building_counts, min_pixels_of  # noqa: E402
from training.machine import OtherWork, describe  # noqa: E402
from training.recipe import SERVED  # noqa: E402
from zoo import export, runtimes, saving, unet  # noqa: E402
from zoo.files import write_json_atomic, write_text_atomic  # noqa: E402
from zoo.predict import Segmenter  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CALIBRATION_TILES = 100
MAX_IOU_LOSS = 0.005
MIN_SPEEDUP = 1.5
TILE_ROUNDS = 20
SCENE_ROUNDS = 3
SERVED_SIZE = 256  # the tiles' side as trained (training.recipe budgets)
SIZE = f"{BUILDING_MIN_M2:g}m2"  # the buildings building F1 counts (training.crossval's sizes)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.quantize", description=__doc__.split("\n\n")[1])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/oam_buildings")
    parser.add_argument("--folds", type=Path, default=REPO / "results/final/folds/seed0")
    parser.add_argument("--model", type=Path, default=REPO / "results/final/model.keras")
    parser.add_argument("--out", type=Path, default=REPO / "results/int8")
    parser.add_argument("--limit", type=int, default=None, help="at most this many held-out tiles a city")
    return parser.parse_args(argv)


def calibration_tiles(samples, seed: int = 0) -> np.ndarray:
    """CALIBRATION_TILES of `samples`, drawn at random (seeded), as uint8 RGB."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(samples), min(CALIBRATION_TILES, len(samples)), replace=False)
    images, _ = folders.load_arrays([samples[i] for i in sorted(chosen)], SERVED_SIZE)
    return images


def litert_pair(model, folder: Path, calibration) -> dict[str, Path]:
    """The float LiteRT file `zoo.export` writes, and the int8 one, for a Keras model."""
    saved = folder / "saved_model"
    export.lowered(model).export(saved, format="tf_saved_model", verbose=False)
    paths = {"float": folder / "float.tflite", "int8": folder / "int8.tflite"}
    paths["float"].write_bytes(export.float_tflite(saved))
    paths["int8"].write_bytes(export.quantized_tflite(saved, calibration))
    return paths


def fold_model(weights: Path):
    model = unet.build(SERVED.decoder)
    unet.decoder_of(model).load_weights(weights)
    return model


def held_out_scores(path: Path, images, masks, min_pixels: dict) -> tuple[dict, np.ndarray]:
    """Building IoU and building F1 (buildings of at least BUILDING_MIN_M2 on the ground, as
    cross-validation counts them) of the tiles predicted as served through `path`."""
    segmenter = Segmenter(
        None,
        threshold=SERVED.threshold,
        scales=SERVED.scales,
        tta=SERVED.tta,
        forward=runtimes.LiteRTForward(path),
    )
    predicted = np.stack([segmenter.predict(image) for image in images]).astype(bool)
    truth = masks.astype(bool)
    tp = int((predicted & truth).sum())
    fp, fn = int((predicted & ~truth).sum()), int((~predicted & truth).sum())
    found, extra, missed, _ = building_counts(predicted, truth, min_pixels)[SIZE]
    scores = {
        "building_iou": tp / max(tp + fp + fn, 1),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "building_f1": 2 * found / max(2 * found + extra + missed, 1),
        "buildings": [found, extra, missed],
    }
    return scores, predicted


def keras_iou(probs_file: Path, masks) -> float | None:
    """The building IoU of the probabilities cross-validation kept (the Keras model, float16):
    the float LiteRT column must agree with it."""
    if not probs_file.is_file():
        return None
    predicted = np.load(probs_file, mmap_mode="r")[: len(masks)] >= SERVED.threshold
    truth = masks.astype(bool)
    tp = int((predicted & truth).sum())
    return tp / max(tp + int((predicted & ~truth).sum()) + int((~predicted & truth).sum()), 1)


def fold_rows(args, samples) -> list[dict]:
    rows = []
    cities = sorted({sample.area for sample in samples if sample.area})
    for city in cities:
        weights = args.folds / f"{city}.weights.h5"
        if not weights.is_file():
            print(f"{city}: no {weights}, skipped", flush=True)
            continue
        held = [sample for sample in samples if sample.area == city][: args.limit]
        images, masks = folders.load_arrays(held, SERVED_SIZE)
        pixel_m2 = np.array([folders.pixel_area_m2(sample.name, SERVED_SIZE) for sample in held])
        min_pixels = min_pixels_of(pixel_m2)
        calibration = calibration_tiles([sample for sample in samples if sample.area != city])
        with tempfile.TemporaryDirectory() as folder:
            paths = litert_pair(fold_model(weights), Path(folder), calibration)
            scored = {name: held_out_scores(path, images, masks, min_pixels) for name, path in paths.items()}
        row = {"city": city, "tiles": len(held), "calibration_tiles": len(calibration)}
        for name, (scores, _) in scored.items():
            row[name] = scores
        row["pixels_changed"] = float((scored["float"][1] != scored["int8"][1]).mean())
        row["keras_building_iou"] = keras_iou(args.folds / f"{city}.probs.npy", masks)
        rows.append(row)
        print(
            f"{city}: building IoU float {row['float']['building_iou']:.4f}, int8 "
            f"{row['int8']['building_iou']:.4f}; {row['pixels_changed']:.2%} of pixels changed",
            flush=True,
        )
    return rows


def timed(forward, batch, rounds: int) -> list[tuple[float, float]]:
    out = []
    for _ in range(rounds):
        wall, cpu = time.perf_counter(), time.process_time()
        forward(batch)
        out.append((time.perf_counter() - wall, time.process_time() - cpu))
    return out


def speed(args, samples) -> dict:
    """The served model's float and int8 LiteRT files, timed in turns."""
    from app.inputs import read_image_file
    from bench.polygons import write_scene

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        model, _ = saving.load(args.model, verify=True)
        paths = litert_pair(model, folder, calibration_tiles(samples))
        forwards = {name: runtimes.LiteRTForward(path) for name, path in paths.items()}
        scene, _, where = write_scene(args.data, folder, 2048)
        image = read_image_file(scene).image
        segmenters = {
            name: Segmenter(None, scales=SERVED.scales, tta=SERVED.tta, forward=forward)
            for name, forward in forwards.items()
        }
        tile = np.random.default_rng(0).integers(0, 256, (1, 512, 512, 3)).astype(np.float32)
        tile_times = {name: [] for name in forwards}
        scene_times = {name: [] for name in forwards}
        for name, forward in forwards.items():  # warm: the interpreters are planned
            forward(tile)
            segmenters[name].probabilities(image)
        for _ in range(TILE_ROUNDS):
            for name, forward in forwards.items():
                tile_times[name] += timed(forward, tile, 1)
        for _ in range(SCENE_ROUNDS):
            for name, segmenter in segmenters.items():
                scene_times[name] += timed(segmenter.probabilities, image, 1)
    return {"tile_512": tile_times, "scene_2048": scene_times, "scene": where}


def spread(pairs) -> dict:
    walls, cpus = np.array(pairs).T
    return {
        "wall_median": float(np.median(walls)),
        "wall_min": float(walls.min()),
        "wall_max": float(walls.max()),
        "cpu_median": float(np.median(cpus)),
    }


def report(run: dict) -> str:
    rows, times = run["folds"], run["speed"]
    loss = (
        float(np.mean([r["float"]["building_iou"] - r["int8"]["building_iou"] for r in rows]))
        if rows
        else None
    )
    tile = {name: spread(pairs) for name, pairs in times["tile_512"].items()}
    scene = {name: spread(pairs) for name, pairs in times["scene_2048"].items()}
    gain = scene["float"]["wall_median"] / scene["int8"]["wall_median"]
    cpu_gain = scene["float"]["cpu_median"] / scene["int8"]["cpu_median"]
    serve = loss is not None and loss < MAX_IOU_LOSS and min(gain, cpu_gain) >= MIN_SPEEDUP
    lines = [
        "# int8 LiteRT: held-out building IoU and speed",
        "",
        f"`{run['command']}` on {run['machine']}, {run['date']}. {run['other_work']}",
        "",
        f"Float: the LiteRT file `python -m zoo.export` writes. int8: `zoo.export.quantized_tflite`, "
        f"full-integer (weights and activations), float32 in and out, activation ranges measured on "
        f"{CALIBRATION_TILES} training tiles drawn at random (seed 0) from the fold's training cities "
        f"(for the served model, from every city). Both run as served: scales "
        f"{', '.join(f'{s:g}' for s in SERVED.scales)}, views `{SERVED.tta}`, threshold "
        f"{SERVED.threshold:g}.",
        "",
        f"## Held-out cities ({run['folds_dir']}: each fold's decoder never saw its city)",
        "",
        "Building IoU = TP / (TP + FP + FN), pixel counts summed over the city's tiles; building F1: "
        f"a predicted building matches a true one at IoU >= 0.5, buildings under {BUILDING_MIN_M2:g} m² "
        "on the ground ignored on both sides (as cross-validation counts them).",
        "",
        "| held-out city | tiles | building IoU Keras (cross-validation's) | float | int8 | difference "
        "| building F1 float | int8 | pixels whose class changed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        f, q = r["float"], r["int8"]
        lines.append(
            f"| {r['city']} | {r['tiles']} | {_number(r['keras_building_iou'])} | {f['building_iou']:.4f} "
            f"| {q['building_iou']:.4f} "
            f"| {q['building_iou'] - f['building_iou']:+.4f} | {f['building_f1']:.4f} "
            f"| {q['building_f1']:.4f} | {r['pixels_changed']:.2%} |"
        )
    if rows:
        lines += ["", f"Mean loss of building IoU over the held-out cities: **{loss:+.4f}**."]
    lines += [
        "",
        f"## Speed: the served model (`{run['model']}`), float and int8 in turns",
        "",
        f"One 512 x 512 tile through the network ({TILE_ROUNDS} rounds) and the whole served "
        f"prediction of a 2048 x 2048 scene ({times['scene']}; `Segmenter.probabilities`, "
        f"{SCENE_ROUNDS} rounds), after a warm-up; wall seconds median [min-max] and CPU seconds "
        f"(user + system, all threads) median.",
        "",
        "| what | float wall s | int8 wall s | float CPU s | int8 CPU s | speed-up (wall / CPU) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, measured in (("512 px tile", tile), ("2048 px scene", scene)):
        f, q = measured["float"], measured["int8"]
        lines.append(
            f"| {label} | {f['wall_median']:.3f} [{f['wall_min']:.3f}-{f['wall_max']:.3f}] "
            f"| {q['wall_median']:.3f} [{q['wall_min']:.3f}-{q['wall_max']:.3f}] | {f['cpu_median']:.3f} "
            f"| {q['cpu_median']:.3f} | {f['wall_median'] / q['wall_median']:.2f}x / "
            f"{f['cpu_median'] / q['cpu_median']:.2f}x |"
        )
    verdict = "served by default" if serve else "not served: the float model stays the default"
    lines += [
        "",
        f"Rule: int8 is served by default only if it loses under {MAX_IOU_LOSS} building IoU and is at "
        f"least {MIN_SPEEDUP}x faster. Here: loss {loss:+.4f}, {gain:.2f}x (wall) / {cpu_gain:.2f}x "
        f"(CPU) on the scene: **{verdict}**.",
        "",
    ]
    return "\n".join(lines)


def _number(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def main(argv=None) -> int:
    args = parse_args(argv)
    other = OtherWork()
    samples = folders.scan_folder(args.data, check=False)
    run = {
        "command": "python -m bench.quantize " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": describe(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "folds_dir": os.path.relpath(args.folds, REPO),
        "model": os.path.relpath(args.model, REPO),
        "calibration_tiles": CALIBRATION_TILES,
    }
    run["folds"] = fold_rows(args, samples)
    run["speed"] = speed(args, samples)
    run["other_work"] = other.note()
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "int8.json", run)
    write_text_atomic(args.out / "README.md", report(run))
    print(report(run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
