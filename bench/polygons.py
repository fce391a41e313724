"""python -m bench.polygons [--data DIR] [--model PATH] [--runtime auto] [--sides 1024,2048,4096]
                          [--windows 2048] [--rounds 3] [--out results]

What a whole scene costs through `python -m app.predict` end to end (the process started, the
model loaded, the scene read, predicted at every scale, outlined, written as GeoJSON in lon/lat
and m²): wall and CPU time, megapixels a second, peak memory, and where the time went (its
`--profile` line). Beside it, the in-process forward: `zoo.predict.Segmenter.probabilities` of
the same scene through the same runtime, warmed up, in a process of its own, which is what the
network alone allows; the ratio of the two is what everything else costs. Each measurement is
repeated `--rounds` times, end to end and forward in turns, so both meet the same load; medians
and spreads are reported with the other work on the machine meanwhile (`OtherWork`). Also the
polygon step alone on the scene's true building outlines.

The scene is real (`bench.scene`): 16 x 16 neighbouring zoom-21 tiles stitched into one GeoTIFF
in EPSG:3857 with their exact transform; smaller sides are its centre crops. The largest side is
also run in parts (`app.predict --window W` for each of `--windows`), to show that memory then
follows the window, not the scene. Each point runs in its own process, so its peak memory (the
child's maximum resident set) is its own.

Without a model file (`--model`, else the served one) the served architecture is built with
an untrained decoder and the served scales: its memory and time are the served model's, its
outlines are not buildings, and the report says so. Writes OUT/polygons.md and OUT/polygons.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.features import rasterize
from rasterio.warp import transform_geom
from shapely.geometry import shape

from bench.polygons_report import report
from bench.scene import write_scene
from data.folders import read_image
from training.machine import OtherWork, describe, process_memory_gib
from training.recipe import SERVED
from zoo.files import write_json_atomic, write_text_atomic
from zoo.polygons import footprints_geojson
from zoo.served import served_model_path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
PROFILE = re.compile(r"^profile \(s;[^)]*\): (?P<fields>.*); total (?P<total>[\d.]+)$", re.M)
THROUGH = re.compile(r"MP/s through (?P<runtime>[\w-]+)\)")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.polygons", description=__doc__.split("\n\n")[1])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/oam_buildings")
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="a .keras file (default: the served model, else an untrained one)",
    )
    parser.add_argument("--runtime", default="auto", help="app.predict --runtime (default auto, as served)")
    parser.add_argument("--sides", default="1024,2048,4096")
    parser.add_argument("--windows", default="2048", help="also run the largest side in parts of these sizes")
    parser.add_argument("--rounds", type=int, default=3, help="repeats of each point (medians, spreads)")
    parser.add_argument("--out", type=Path, default=REPO / "results")
    parser.add_argument("--polygons-only", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--forward-only", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--save-untrained", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# -- the model ------------------------------------------------------------------------------------


def model_file(explicit: Path | None, folder: Path, data: Path) -> tuple[Path, str]:
    """The model to measure and how to describe it."""
    chosen = explicit or served_model_path(REPO / "results")
    if chosen.is_file():
        return chosen, f"`{chosen}`"
    # Built in a child: TensorFlow in this process would raise the floor of every child's peak
    # memory (Linux carries a parent's resident high-water mark into the children it forks).
    path = folder / "untrained.keras"
    measured([sys.executable, "-m", "bench.polygons", "--save-untrained", str(path), "--data", str(data)])
    return path, (
        f"**untrained decoder** `{SERVED.decoder.name}` (seed 0, last layer "
        "rescaled so about half the pixels come out building, in speckle: the worst "
        f"case for outlines) with the served scales {list(SERVED.scales)} ({chosen} "
        "is not on this machine): memory and time are the served architecture's; "
        "the outlines are not buildings"
    )


def save_untrained(path: Path, data: Path) -> None:
    """The served architecture, seeded, its last layer rescaled so that the logits spread
    around 0 on real tiles: about half the pixels come out building, in speckle, the worst
    case for the outline step (a fresh decoder's logits all sit near one value)."""
    import keras  # deferred: only this child loads TensorFlow (see model_file)

    from zoo import saving, unet

    keras.utils.set_random_seed(0)
    config = SERVED.decoder
    model = unet.build(config)
    logits = unet.decoder_of(model).get_layer("logits")
    tiles = sorted((data / "images").glob("*.png"))[:4]
    probe = np.stack([read_image(tile) for tile in tiles]).astype("float32")
    raw = keras.ops.convert_to_numpy(model(probe, training=False))
    scale = 2.0 / max(float(raw.std()), 1e-12)
    logits.kernel.assign(logits.kernel * scale)
    logits.bias.assign((logits.bias - float(np.median(raw))) * scale)
    saving.save(
        model,
        path,
        {"config": config.to_dict(), "threshold": SERVED.threshold, "inference": SERVED.serving()},
    )


# -- measuring ------------------------------------------------------------------------------------


def measured(command: list[str]) -> tuple[float, float, float, str]:
    """Wall seconds, CPU seconds (user + system), peak resident GiB of the child, its stdout.
    CPU time is what a machine busy with other jobs inflates least."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(
            command,
            cwd=REPO,
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        output.seek(0)
        text = output.read().decode(errors="replace")
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}):\n{text}")
    return (time.perf_counter() - started, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 2**20, text)


def polygons_only(truth: Path) -> None:
    """Child mode: the polygon step alone on a true mask; prints one JSON line."""
    with rasterio.open(truth) as dataset:
        mask, transform, crs = (dataset.read(1) > 0).astype(np.uint8), dataset.transform, dataset.crs
    before = process_memory_gib()[0]  # resident now: the mask read, libraries loaded
    started = time.perf_counter()
    collection = footprints_geojson(mask, None, transform, crs)
    seconds = time.perf_counter() - started
    back = rasterize(
        [
            (shape(transform_geom("EPSG:4326", crs, feature["geometry"])), 1)
            for feature in collection["features"]
        ],
        out_shape=mask.shape,
        transform=transform,
        dtype="uint8",
    )
    iou = np.logical_and(back, mask).sum() / np.logical_or(back, mask).sum()
    print(
        json.dumps(
            {
                "seconds": seconds,
                "resident_gib_before": before,
                "peak_gib": process_memory_gib()[1],
                "count": collection["count"],
                "iou": float(iou),
                "area_crs": collection["area_crs"],
                "total_area_m2": collection["total_area_m2"],
            }
        )
    )


def forward_only(scene: Path, model: Path, runtime: str) -> None:
    """Child mode: the in-process forward (`Segmenter.probabilities`, every scale) of the scene
    through `runtime`, once to warm up (LiteRT plans its interpreters) and once timed; prints
    one JSON line."""
    from app.inputs import read_image_file
    from app.model import load_segmenter, runtime_of

    image = read_image_file(scene).image
    segmenter = load_segmenter(model, runtime)
    segmenter.probabilities(image)
    wall, cpu = time.perf_counter(), time.process_time()
    segmenter.probabilities(image)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(json.dumps({"seconds": wall, "cpu_seconds": cpu, "runtime": runtime_of(segmenter)}))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.polygons_only:
        polygons_only(args.polygons_only)
        return 0
    if args.forward_only:
        forward_only(args.forward_only, args.model, args.runtime)
        return 0
    if args.save_untrained:
        save_untrained(args.save_untrained, args.data)
        return 0
    sides = [int(side) for side in args.sides.split(",")]
    windows = [int(window) for window in args.windows.split(",") if window]
    runs = [(side, None) for side in sides] + [(max(sides), window) for window in windows]
    rows, whole_run = [], OtherWork()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        model, model_text = model_file(args.model, folder, args.data)
        for side, window in runs:
            row, where = measure_scene(args, folder, model, side, window)
            rows.append(row)
            head = {**header(argv), "scene": where, "model": model_text, "other_work": whole_run.note()}
            _write(args.out, head, rows)
            print(
                f"{side} px{f' in parts of {window}' if window else ''} through {row['runtime']}: "
                f"app.predict {np.median(row['seconds']):.1f} s (median of {len(row['seconds'])}), "
                f"peak {max(row['peak_gib']):.2f} GiB, {row['predicted_outlines']} outlines; other work "
                f"{row['other_cores']:.2f} cores",
                flush=True,
            )
    return 0


def measure_scene(args, folder: Path, model: Path, side: int, window: int | None) -> tuple[dict, str]:
    """`app.predict` on the scene of `side` px (in parts of `window` px when given) and, for the
    whole scene, the in-process forward, in turns, `args.rounds` times; then the polygon step
    alone on its true mask. The report's row, and where the scene is."""
    scene, truth, where = write_scene(args.data, folder, side)
    out = folder / f"scene_{side}.geojson"
    # Without --window the scene is predicted as one window up to any side, like the server.
    command = [sys.executable, "-m", "app.predict", str(scene), "--out", str(out), "--model", str(model)]
    command += ["--runtime", args.runtime, "--profile", "--window", str(window or side)]
    forward = [sys.executable, "-m", "bench.polygons", "--forward-only", str(scene), "--model", str(model)]
    forward += ["--runtime", args.runtime]
    row = {"side": side, "window": window, "seconds": [], "cpu_seconds": [], "peak_gib": [], "profiles": []}
    row.update(forward_seconds=[], forward_cpu_seconds=[])
    other = OtherWork()
    for _ in range(args.rounds):
        seconds, cpu, peak, text = measured(command)
        row["seconds"].append(seconds)
        row["cpu_seconds"].append(cpu)
        row["peak_gib"].append(peak)
        row["profiles"].append(_profile(text))
        row["runtime"] = THROUGH.search(text)["runtime"]
        if window is None:
            *_, text = measured(forward)
            alone = json.loads(text.strip().splitlines()[-1])
            row["forward_seconds"].append(alone["seconds"])
            row["forward_cpu_seconds"].append(alone["cpu_seconds"])
            row["forward_runtime"] = alone["runtime"]
    row["other_cores"] = other.cores()
    collection = json.loads(out.read_text())
    row.update(parts=(collection.get("parts") or {}).get("count", 1), predicted_outlines=collection["count"])
    if window is None:
        _, _, _, text = measured([sys.executable, "-m", "bench.polygons", "--polygons-only", str(truth)])
        alone = json.loads(text.strip().splitlines()[-1])
        row.update({f"truth_{key}": value for key, value in alone.items()})
    return row, where


def _profile(text: str) -> dict:
    """app.predict's --profile line as {part: seconds}."""
    found = PROFILE.search(text)
    if found is None:
        return {}
    fields = dict(field.rsplit(" ", 1) for field in found["fields"].split(", "))
    return {**{name: float(value) for name, value in fields.items()}, "total": float(found["total"])}


def header(argv=None) -> dict:
    return {
        "machine": describe(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m bench.polygons " + " ".join(sys.argv[1:] if argv is None else argv),
    }


def _write(out: Path, head: dict, rows: list[dict]) -> None:
    """After every point, so an interrupted run keeps what it measured."""
    write_json_atomic(out / "polygons.json", {**head, "rows": rows})
    write_text_atomic(out / "polygons.md", report(head, rows))


if __name__ == "__main__":
    sys.exit(main())
