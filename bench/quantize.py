"""`python -m bench.quantize [--data DIR] [--folds DIR] [--model PATH] [--out results/int8]`

What post-training int8 quantization costs and gains: each cross-validation fold's decoder (a
model that never saw its city, `training.crossval`: FOLDS/CITY.weights.h5) exported as the float
LiteRT model and as integer ones (`zoo.export.quantized_tflite`, calibrated on
CALIBRATION_TILES tiles of the fold's training cities): `int8`, every operation, and
`int8-decoder`, the decoder's only (the frozen MobileNetV2 encoder kept in float). Each runs as
served (`zoo.predict`: scales, threshold) over the held-out city's tiles: building IoU (pixel
counts summed over the city), building F1 (a building matched at IoU >= 0.5), and how many
pixels change. Then the served model through each, timed in turns on one 512 px tile and on a
2048 px scene.

The rule (issue 35): an integer model is served by default only if it loses under MAX_IOU_LOSS
building IoU (mean over the held-out cities) and runs at least MIN_SPEEDUP times faster on the
scene (wall and CPU time). Writes OUT/README.md and OUT/int8.json (`bench.quantize_report`).
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

from bench.quantize_report import report  # noqa: E402
from bench.scene import write_scene  # noqa: E402
from data import folders  # noqa: E402
from training.crossval import BUILDING_MIN_M2, building_counts, min_pixels_of  # noqa: E402
from training.machine import OtherWork, describe  # noqa: E402
from training.recipe import SERVED  # noqa: E402
from zoo import export, runtimes, saving, unet  # noqa: E402
from zoo.files import write_json_atomic, write_text_atomic  # noqa: E402
from zoo.predict import Segmenter  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CALIBRATION_TILES = 100
TILE_ROUNDS = 20
SCENE_ROUNDS = 5
SERVED_SIZE = 256  # the tiles' side as trained (training.recipe budgets)
SIZE = f"{BUILDING_MIN_M2:g}m2"  # the buildings building F1 counts (training.crossval's sizes)


def _encoder_and_input(name: str) -> bool:
    """Operations outside the decoder (the input, its scaling, the encoder), kept in float; the
    model's output ("StatefulPartitionedCall...") is the decoder's last resize."""
    return f"/{unet.DECODER_NAME}" not in name and not name.startswith("StatefulPartitionedCall")


# Integer variants: which operations stay in float (None: none).
VARIANTS = {"int8": None, "int8-decoder": _encoder_and_input}


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


def litert_models(model, folder: Path, calibration) -> dict[str, Path]:
    """The float LiteRT file `zoo.export` writes, and each integer variant, for a Keras model."""
    saved = folder / "saved_model"
    export.lowered(model).export(saved, format="tf_saved_model", verbose=False)
    paths = {"float": folder / "float.tflite"}
    paths["float"].write_bytes(export.float_tflite(saved))
    for name, keep_float in VARIANTS.items():
        paths[name] = folder / f"{name}.tflite"
        paths[name].write_bytes(export.quantized_tflite(saved, calibration, keep_float))
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
    for city in sorted({sample.area for sample in samples if sample.area}):
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
            paths = litert_models(fold_model(weights), Path(folder), calibration)
            scored = {name: held_out_scores(path, images, masks, min_pixels) for name, path in paths.items()}
        row = {"city": city, "tiles": len(held), "calibration_tiles": len(calibration)}
        row["keras_building_iou"] = keras_iou(args.folds / f"{city}.probs.npy", masks)
        for name, (scores, predicted) in scored.items():
            row[name] = {**scores, "pixels_changed": float((predicted != scored["float"][1]).mean())}
        rows.append(row)
        print(
            f"{city}: building IoU "
            + ", ".join(f"{name} {row[name]['building_iou']:.4f}" for name in scored),
            flush=True,
        )
    return rows


def timed(forward, batch) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    forward(batch)
    return time.perf_counter() - wall, time.process_time() - cpu


def speed(args, samples) -> dict:
    """The served model through the float LiteRT file and each integer variant, timed in turns
    (the order rotating) on one 512 px tile and on a 2048 px scene."""
    from app.inputs import read_image_file

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        model, _ = saving.load(args.model, verify=True)
        paths = litert_models(model, folder, calibration_tiles(samples))
        forwards = {name: runtimes.LiteRTForward(path) for name, path in paths.items()}
        scene, _, where = write_scene(args.data, folder, 2048)
        image = read_image_file(scene).image
        segmenters = {
            name: Segmenter(None, scales=SERVED.scales, tta=SERVED.tta, forward=forward)
            for name, forward in forwards.items()
        }
        tile = np.random.default_rng(0).integers(0, 256, (1, 512, 512, 3)).astype(np.float32)
        times = {"tile_512": {name: [] for name in forwards}, "scene_2048": {name: [] for name in forwards}}
        for name in forwards:  # warm: the interpreters are planned
            forwards[name](tile)
            segmenters[name].probabilities(image)
        names = list(forwards)
        for turn in range(TILE_ROUNDS):
            for name in names[turn % len(names) :] + names[: turn % len(names)]:
                times["tile_512"][name].append(timed(forwards[name], tile))
        for turn in range(SCENE_ROUNDS):
            for name in names[turn % len(names) :] + names[: turn % len(names)]:
                times["scene_2048"][name].append(timed(segmenters[name].probabilities, image))
    return {**times, "scene": where}


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
        "variants": list(VARIANTS),
        "served": {"scales": list(SERVED.scales), "tta": SERVED.tta, "threshold": SERVED.threshold},
        "min_m2": BUILDING_MIN_M2,
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
