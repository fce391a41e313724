"""python -m bench.polygons [--data DIR] [--model PATH] [--sides 1024,2048,4096]
                                    [--windows 1024,2048] [--out results]

What outlines cost on a large scene: peak memory and time of `python -m app.predict` (model,
overlap tiles, polygons, GeoJSON) on real georeferenced imagery, and of the polygon step alone
on the scene's true building outlines.

The scene is real: the largest square block of neighbouring XYZ tiles of one zoom in the data
folder (16 x 16 zoom-21 tiles of Nairobi in the OAM data: 4096 x 4096 px), stitched and
written as a GeoTIFF in Web Mercator (EPSG:3857) with the tiles' exact transform, so the
outlines come back in longitude/latitude. Smaller sides are its centre crops. The largest
side is also run in parts (`app.predict --window W` for each of `--windows`), to show that
memory then follows the window, not the scene. Each point runs in its own process, so its peak
memory (the child's maximum resident set) is its own.

Without a model file (`--model`, else the served one) the served architecture is built with
an untrained decoder and the served scales: its memory and time are the served model's, its
outlines are not buildings, and the report says so. Writes OUT/polygons.md and OUT/polygons.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.features import rasterize
from rasterio.warp import transform_geom
from shapely.geometry import shape

from data.folders import read_image, read_mask, tile_position
from training.machine import describe, process_memory_gib
from training.recipe import SERVED
from zoo.files import write_json_atomic, write_text_atomic
from zoo.polygons import footprints_geojson
from zoo.served import served_model_path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
TILE = 256
WEB_MERCATOR_HALF = 20037508.342789244  # metres from the centre to the edge of the XYZ grid


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.polygons", description=__doc__.splitlines()[2])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/oam_buildings")
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="a .keras file (default: the served model, else an untrained one)",
    )
    parser.add_argument("--sides", default="1024,2048,4096")
    parser.add_argument(
        "--windows", default="1024,2048", help="also run the largest side in parts of these sizes"
    )
    parser.add_argument("--out", type=Path, default=REPO / "results")
    parser.add_argument("--polygons-only", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--save-untrained", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# -- the scene ------------------------------------------------------------------------------------


def largest_block(data: Path) -> tuple[int, int, int, int, list[str]]:
    """(zoom, x0, y0, n, names) of the largest n x n block of neighbouring tiles of one zoom and
    one area; names row by row."""
    grids: dict[tuple[str, int], dict[tuple[int, int], str]] = {}
    for path in sorted((data / "images").iterdir()):
        position = tile_position(path.stem)
        if position:
            zoom, x, y = position
            prefix = path.stem.rsplit("_z", 1)[0]
            grids.setdefault((prefix, zoom), {})[(x, y)] = path.name
    best = (0, 0, 0, 0, [])
    for (_, zoom), grid in grids.items():
        for x0, y0 in grid:
            n = 1
            while all((x, y) in grid for x in range(x0, x0 + n + 1) for y in range(y0, y0 + n + 1)):
                n += 1
            if n > best[3]:
                best = (zoom, x0, y0, n, [grid[(x, y)] for y in range(y0, y0 + n) for x in range(x0, x0 + n)])
    if best[3] == 0:
        raise SystemExit(f"no XYZ tiles named PREFIX_zZ_X_Y in {data / 'images'}")
    return best


def write_scene(data: Path, folder: Path, side: int) -> tuple[Path, Path, str]:
    """The centre side x side of the scene as a GeoTIFF (RGB) and its true mask as a GeoTIFF."""
    zoom, x0, y0, n, names = largest_block(data)
    if n * TILE < side:
        raise SystemExit(
            f"the largest block of neighbouring tiles in {data} is {n * TILE} px; asked for {side}"
        )
    count, first = side // TILE, (n - side // TILE) // 2  # the block's centre
    image = np.zeros((side, side, 3), np.uint8)
    mask = np.zeros((side, side), np.uint8)
    for row in range(count):
        for column in range(count):
            name = names[(first + row) * n + first + column]
            window = np.s_[row * TILE : (row + 1) * TILE, column * TILE : (column + 1) * TILE]
            image[window] = read_image(data / "images" / name)
            mask[window] = read_mask(data / "masks" / name)
    span = 2 * WEB_MERCATOR_HALF / 2**zoom
    transform = Affine(
        span / TILE,
        0,
        -WEB_MERCATOR_HALF + (x0 + first) * span,
        0,
        -span / TILE,
        WEB_MERCATOR_HALF - (y0 + first) * span,
    )
    paths = folder / f"scene_{side}.tif", folder / f"truth_{side}.tif"
    for path, bands in zip(paths, (np.moveaxis(image, -1, 0), mask[None] * 255)):
        with rasterio.open(
            path,
            "w",
            driver="GTiff",
            height=side,
            width=side,
            count=len(bands),
            dtype="uint8",
            crs="EPSG:3857",
            transform=transform,
        ) as dataset:
            dataset.write(bands)
    where = f"{names[0].rsplit('_z', 1)[0]}, zoom {zoom}, the {n} x {n} tiles from x {x0}, y {y0}"
    return paths[0], paths[1], where


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


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.polygons_only:
        polygons_only(args.polygons_only)
        return 0
    if args.save_untrained:
        save_untrained(args.save_untrained, args.data)
        return 0
    sides = [int(side) for side in args.sides.split(",")]
    windows = [int(window) for window in args.windows.split(",") if window]
    runs = [(side, None) for side in sides] + [(max(sides), window) for window in windows]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        model, model_text = model_file(args.model, folder, args.data)
        for side, window in runs:
            row, where = measure_scene(args.data, folder, model, side, window)
            rows.append(row)
            _write(args.out, {**header(), "scene": where, "model": model_text}, rows)
            print(
                f"{side} px{f' in parts of {window}' if window else ''}: app.predict "
                f"{row['predict_seconds']:.1f} s, peak {row['predict_peak_gib']:.2f} GiB, "
                f"{row['predicted_outlines']} outlines",
                flush=True,
            )
    return 0


def measure_scene(data: Path, folder: Path, model: Path, side: int, window: int | None) -> tuple[dict, str]:
    """`app.predict` on the scene of `side` px (in parts of `window` px when given), and for
    the whole scene the polygon step alone on its true mask: the report's row, and where the
    scene is."""
    scene, truth, where = write_scene(data, folder, side)
    out = folder / f"scene_{side}.geojson"
    # Without --window the scene is predicted whole up to any side, like the server.
    parted = ["--window", str(window)] if window else ["--window", str(side)]
    seconds, cpu, peak, _ = measured(
        [sys.executable, "-m", "app.predict", str(scene), "--out", str(out), "--model", str(model), *parted]
    )
    collection = json.loads(out.read_text())
    row = {
        "side": side,
        "window": window,
        "parts": (collection.get("parts") or {}).get("count", 1),
        "predict_seconds": seconds,
        "predict_cpu_seconds": cpu,
        "predict_peak_gib": peak,
        "predicted_outlines": collection["count"],
    }
    if window is None:
        _, _, _, text = measured([sys.executable, "-m", "bench.polygons", "--polygons-only", str(truth)])
        alone = json.loads(text.strip().splitlines()[-1])
        row.update({f"truth_{key}": value for key, value in alone.items()})
    return row, where


def header() -> dict:
    return {
        "machine": describe(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m bench.polygons " + " ".join(sys.argv[1:]),
    }


def _write(out: Path, head: dict, rows: list[dict]) -> None:
    """After every point, so an interrupted run keeps what it measured."""
    write_json_atomic(out / "polygons.json", {**head, "rows": rows})
    write_text_atomic(out / "polygons.md", report(head, rows))


def report(header: dict, rows: list[dict]) -> str:
    whole = [row for row in rows if row["window"] is None]
    parted = [row for row in rows if row["window"] is not None]
    lines = [
        "# Outlines on a large scene: memory and time",
        "",
        f"- **Command:** `{header['command']}`",
        f"- **Machine:** {header['machine']}, CPU only; {header['date']}. Other jobs (training, "
        "tests) shared the two cores while this ran, so wall times are upper bounds; CPU time "
        "is inflated less; peak memory is each process's own and is not affected",
        f"- **Scene:** real imagery, {header['scene']}: neighbouring tiles stitched into one "
        "GeoTIFF in EPSG:3857 with their exact transform; smaller sides are its centre crops",
        f"- **Model:** {header['model']}",
        "",
        "`app.predict` is the whole command in its own process: TensorFlow and the model loaded, "
        "the scene read, predicted at every scale in 512 px overlap tiles, outlined, written as "
        "GeoJSON (lon/lat, m²). *Polygons alone* is `zoo.polygons.footprints_geojson` on the "
        "scene's true mask (real building shapes from OpenStreetMap), in another process; *IoU* "
        "is those outlines reprojected back, rasterised onto the scene's grid and compared with "
        "the mask (building IoU, pixel counts over the whole scene).",
        "",
        "## The scene whole",
        "",
        "| side (px) | app.predict wall (s) | its CPU time (s) | its peak memory (GiB) "
        "| outlines predicted "
        "| polygons alone (s) | their peak memory (GiB above what was resident before) "
        "| true outlines | IoU back | true building area (m²) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in whole:
        lines.append(
            f"| {row['side']} | {row['predict_seconds']:.1f} | {row['predict_cpu_seconds']:.1f} | "
            f"{row['predict_peak_gib']:.2f} | {row['predicted_outlines']} | {row['truth_seconds']:.2f} | "
            f"{row['truth_peak_gib'] - row['truth_resident_gib_before']:.2f} | {row['truth_count']} | "
            f"{row['truth_iou']:.4f} | {row['truth_total_area_m2']:.0f} |"
        )
    if len(whole) > 1:
        first, last = whole[0], whole[-1]
        growth = (
            (last["predict_peak_gib"] - first["predict_peak_gib"])
            / (last["side"] ** 2 - first["side"] ** 2)
            * 2**30
        )
        lines += [
            "",
            f"Whole, peak memory grows by about {growth:.0f} bytes a pixel from "
            f"{first['side']} to {last['side']} px (image, probabilities at each scale, "
            "mask, component labels); the model's own working set is bounded by the "
            "512 px tiles.",
        ]
    if parted:
        lines += [
            "",
            "## The largest scene in parts (`app.predict --window W`)",
            "",
            "Each part is predicted with W/16 px of its neighbours around it for context; "
            "buildings a part's edge cuts are joined at the end. Above 4096 px a side "
            "(the default window) a TIFF always goes this way.",
            "",
            "| side (px) | window (px) | parts | app.predict wall (s) | its CPU time (s) "
            "| its peak memory (GiB) | outlines predicted |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for row in parted:
            lines.append(
                f"| {row['side']} | {row['window']} | {row['parts']} | "
                f"{row['predict_seconds']:.1f} | {row['predict_cpu_seconds']:.1f} | "
                f"{row['predict_peak_gib']:.2f} | {row['predicted_outlines']} |"
            )
    if whole:
        lines += ["", f"Areas measured in: {whole[-1]['truth_area_crs']}."]
    return "\n".join(lines + [""])


if __name__ == "__main__":
    sys.exit(main())
