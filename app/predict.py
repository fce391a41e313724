"""`python -m app.predict IMAGE --out footprints.geojson`: the buildings of one image, as GeoJSON.

    python -m app.predict IMAGE [--out FILE.geojson] [--mask MASK.png] [--model PATH]
                          [--runtime auto] [--tta VIEWS] [--outline raw|regular]
                          [--min-area-m2 M2] [--min-pixels PX] [--tolerance PX] [--min-area PX]
                          [--window PX] [--profile]

IMAGE is a GeoTIFF (outlines in WGS84 longitude/latitude, areas in m² measured in the image's
own projected CRS, see `zoo.polygons`) or any TIFF, PNG or JPEG (outlines in pixels; the
collection's `why_pixels` says why). The model is the served one (`app.model`: --model,
$ZOO_MODEL, results/MODEL) through the fastest runtime exported beside it, as the server picks
it (`--runtime auto`: LiteRT, then ONNX Runtime; without an export, Keras, with a note naming
the command that makes one), run with its own scales, test-time views and threshold, so the
mask is the one `POST /inference` gives for the same image. A batch job that is not bound by a
request's latency may ask for more views (`--tta dihedral`: all eight rotations and flips at
the model's scales, eight times the passes; results/EXPERIMENTS.md, step 23). `--outline`,
`--min-area-m2` (georeferenced images) and `--min-pixels` (images in pixels) shape the
outlines as the server's query parameters of the same names do, with its defaults.

Three things run at once: a thread reads the image, the network runs its overlap-tiles row of
tiles by row of tiles (`zoo.scene`: the same tiles, so the same probabilities, as
`zoo.predict.Segmenter` on the whole image), and a thread outlines each band of rows the
network has finished (`zoo.polygons.SceneOutlines`, which joins the buildings a band's edge
cuts). GDAL, LiteRT and ONNX Runtime let go of the GIL while they work (`app.pipeline`);
`--profile` says where the time went. The last line printed gives the megapixels a second,
start to finish, and the runtime.

Any size is taken, in bounded memory. A TIFF up to `--window` (4096) px a side is one window;
a larger one is read and predicted window by window, each part of (window - 2 margin) px a side
with `margin` (window / 16) px of its neighbours around it for context, which are then thrown
away, with a progress line on stderr; the next window is read while the network runs this one.
Peak memory is that of about two windows plus the outlines, whatever the scene's size (and 1
byte a pixel more with --mask). `results/polygons.md` measures time and memory
(`python -m bench.polygons`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from app.inputs import TIFF_MAGIC, InputError, read_image_file, tiff_bands, tiff_georeference
from app.model import (
    ENV,
    RUNTIME_CHOICES,
    RUNTIME_ENV,
    ModelUnavailable,
    load_segmenter,
    model_name,
    override_tta,
    resolve_model_path,
    runtime_of,
)
from app.options import OutlineOptions
from app.pipeline import Profile, Progress, Reader, open_tiff, outline_parts, parts_of
from zoo.polygons import (
    DEFAULT_MIN_AREA,
    DEFAULT_MIN_AREA_M2,
    DEFAULT_MIN_PIXELS,
    DEFAULT_OUTLINE,
    DEFAULT_TOLERANCE,
    OUTLINES,
    SceneOutlines,
    feature_collection,
    is_georeferenced,
)
from zoo.predict import TTA_CHOICES, TTA_FROM_MODEL
from zoo.scene import RowSource

WINDOW = 4096  # the server's largest side: above it, a TIFF is predicted part by part


@dataclass(frozen=True)
class Outlining(OutlineOptions):
    """How the outlines are made: the server's per-request options (`app.options`: outline,
    min_area_m2, min_pixels, by default what the server applies) plus the tracing's own two,
    which the server keeps at `zoo.polygons`' defaults: the simplification tolerance and the
    specks and holes dropped while tracing (both in pixels)."""

    tolerance: float = DEFAULT_TOLERANCE
    min_area: float = DEFAULT_MIN_AREA


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m app.predict", description=__doc__.splitlines()[0])
    parser.add_argument("image", type=Path, help="a GeoTIFF, TIFF, PNG or JPEG")
    parser.add_argument(
        "--out", type=Path, default=None, help="where to write the GeoJSON (default: IMAGE with .geojson)"
    )
    parser.add_argument("--mask", type=Path, default=None, help="also write the mask, 0/255 PNG")
    parser.add_argument("--model", help=f"a .keras file (default: ${ENV}, else results/MODEL)")
    parser.add_argument(
        "--runtime",
        choices=RUNTIME_CHOICES,
        default=os.environ.get(RUNTIME_ENV, "auto"),
        help=f"what runs the network (default: ${RUNTIME_ENV}, else auto: the fastest exported one)",
    )
    parser.add_argument(
        "--tta",
        choices=TTA_CHOICES,
        default=TTA_FROM_MODEL,
        help="test-time views (default: the model's, as the server applies them)",
    )
    parser.add_argument(
        "--outline", choices=OUTLINES, default=DEFAULT_OUTLINE, help=f"default {DEFAULT_OUTLINE}"
    )
    parser.add_argument(
        "--min-area-m2",
        type=float,
        default=DEFAULT_MIN_AREA_M2,
        help=f"georeferenced images: smaller buildings are left out (default {DEFAULT_MIN_AREA_M2:g})",
    )
    parser.add_argument(
        "--min-pixels",
        type=int,
        default=DEFAULT_MIN_PIXELS,
        help=f"images in pixels: buildings of fewer mask pixels are left out (default {DEFAULT_MIN_PIXELS})",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help=f"outline simplification, pixels (default {DEFAULT_TOLERANCE:g})",
    )
    parser.add_argument(
        "--min-area",
        type=float,
        default=DEFAULT_MIN_AREA,
        help=f"specks and holes under this many pixels are dropped while tracing (default "
        f"{DEFAULT_MIN_AREA:g}); buildings are left out by --min-area-m2 or --min-pixels",
    )
    parser.add_argument(
        "--profile", action="store_true", help="print where the time went on stderr (app.pipeline.Profile)"
    )
    parser.add_argument(
        "--window",
        type=int,
        default=WINDOW,
        help=f"a TIFF with a side over this is predicted in parts this large (default {WINDOW})",
    )
    args = parser.parse_args(argv)
    if args.window < 64:
        parser.error(f"--window must be at least 64 px, got {args.window}")
    if args.min_area_m2 < 0 or args.min_pixels < 0:
        parser.error("--min-area-m2 and --min-pixels must be at least 0")
    return args


def footprints(
    segmenter, upload, shape: Outlining | None = None, profile: Profile | None = None, **members
) -> tuple[dict, np.ndarray]:
    """The GeoJSON FeatureCollection of an `app.inputs.Upload` (one window), and its mask."""
    shape = shape or _raw()
    profile = profile or Profile()
    height, width = upload.image.shape[:2]
    started = time.perf_counter()
    source = RowSource.of(upload.image, getattr(segmenter, "scales", (1.0,)))
    profile.read += time.perf_counter() - started
    scene = _scene(height, width, shape, is_georeferenced(upload.transform, upload.crs))
    parts = parts_of(height, width, max(height, width))
    mask = outline_parts(segmenter, parts, [source], scene, True, profile)
    started = time.perf_counter()
    collection = _collection(
        segmenter, scene.footprints(), upload.transform, upload.crs, upload.why_pixels, shape, **members
    )
    profile.join += time.perf_counter() - started
    return collection, mask


def scene_footprints(
    segmenter,
    path: Path,
    window: int = WINDOW,
    tolerance: float = DEFAULT_TOLERANCE,
    min_area: float = DEFAULT_MIN_AREA,
    keep_mask: bool = False,
    shape: Outlining | None = None,
    progress: bool = False,
    profile: Profile | None = None,
    **members,
) -> tuple[dict, np.ndarray | None]:
    """The GeoJSON FeatureCollection of a TIFF read and predicted in parts of at most `window`
    px a side, and with `keep_mask` its whole mask (else None). `shape` overrides `tolerance`
    and `min_area`; `progress` prints a progress line on stderr for a scene of several parts;
    `profile` adds up where the time went."""
    shape = shape or _raw(tolerance, min_area)
    profile = profile or Profile()
    name = str(path)
    with warnings.catch_warnings(), open_tiff(path) as dataset:
        bands = tiff_bands(dataset, name)
        transform, crs, why_pixels = tiff_georeference(dataset, name)
        height, width = dataset.height, dataset.width
        parts = parts_of(height, width, window)
        scene = _scene(height, width, shape, is_georeferenced(transform, crs))
        # The reader thread alone uses the dataset from here until it stops.
        reader = Reader(dataset, name, bands, parts, getattr(segmenter, "scales", (1.0,)), window, profile)
        meter = Progress(segmenter, parts) if progress and len(parts) > 1 else None
        try:
            mask = outline_parts(segmenter, parts, reader.sources(), scene, keep_mask, profile, meter)
        finally:
            reader.stop()
    started = time.perf_counter()
    layout = {"count": len(parts), "window": window, "margin": window // 16 if len(parts) > 1 else 0}
    collection = _collection(
        segmenter, scene.footprints(), transform, crs, why_pixels, shape, parts=layout, **members
    )
    profile.join += time.perf_counter() - started
    return collection, mask


def _raw(tolerance: float = DEFAULT_TOLERANCE, min_area: float = DEFAULT_MIN_AREA) -> Outlining:
    """`zoo.polygons`' own defaults: raw outlines, no building left out for its size (only the
    specks under `min_area` pixels that tracing drops)."""
    return Outlining(outline="raw", min_area_m2=0.0, min_pixels=0, tolerance=tolerance, min_area=min_area)


def _scene(height: int, width: int, shape: Outlining, georeferenced: bool) -> SceneOutlines:
    """As `zoo.polygons.footprints_geojson` outlines: min_pixels applies to an image in pixels
    (a georeferenced one has min_area_m2, applied by `_collection`)."""
    return SceneOutlines(
        height,
        width,
        shape.tolerance,
        shape.min_area,
        outline=shape.outline,
        min_pixels=0 if georeferenced else shape.min_pixels,
    )


def _collection(segmenter, found, transform, crs, why_pixels, shape: Outlining, **members) -> dict:
    """`zoo.polygons.footprints_geojson`'s collection of buildings already outlined: the minimum
    size that applies depends on the image (m² where they are known, else mask pixels)."""
    georeferenced = is_georeferenced(transform, crs)
    return feature_collection(
        found,
        transform,
        crs,
        why_pixels,
        min_area_m2=shape.min_area_m2 if georeferenced else None,
        tolerance_px=shape.tolerance,
        min_area_px=shape.min_area,
        min_pixels=None if georeferenced else shape.min_pixels,
        outline=shape.outline,
        model=model_name(segmenter),
        threshold=segmenter.threshold,
        **members,
    )


def main(argv=None) -> int:
    started = time.perf_counter()
    # From the command line, the process is this command's: its start counts. Called in a
    # process with other work (argv given), it does not.
    before = _since_process_start() if argv is None else 0.0
    args = parse_args(argv)
    out = args.out or args.image.with_suffix(".geojson")
    shape = Outlining(
        outline=args.outline, min_area_m2=args.min_area_m2, min_pixels=args.min_pixels,
        tolerance=args.tolerance, min_area=args.min_area,
    )  # fmt: skip
    try:
        size = _tiff_size(args.image)
        upload = None if size is not None else read_image_file(args.image)
        segmenter = override_tta(load_segmenter(resolve_model_path(args.model), args.runtime), args.tta)
    except (InputError, ModelUnavailable, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    profile = Profile(start=before, load=time.perf_counter() - started)
    height, width = size if size is not None else upload.image.shape[:2]
    about = {"file": args.image.name, "height": height, "width": width}
    try:
        if size is not None:
            collection, mask = scene_footprints(
                segmenter,
                args.image,
                args.window,
                keep_mask=args.mask is not None,
                shape=shape,
                progress=True,
                profile=profile,
                image=about,
            )
        else:
            collection, mask = footprints(segmenter, upload, shape, profile, image=about)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    writing = time.perf_counter()
    _write_atomic(out, orjson.dumps(collection))
    if args.mask:
        from PIL import Image

        with _atomic(args.mask) as tmp:
            Image.fromarray(mask * 255).save(tmp, format="PNG")
    profile.write = time.perf_counter() - writing
    seconds = time.perf_counter() - started + before
    if args.profile:
        print(profile.line(seconds), file=sys.stderr)
    print(_summary(collection, height, width, seconds, runtime_of(segmenter)) + f" -> {out}")
    return 0


def _since_process_start() -> float:
    """Seconds since this process started (Python, imports): end to end includes them. From
    /proc, both counted from boot (psutil's create_time adds the boot time, whole seconds);
    0 where there is no /proc."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            started = int(stat.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
            return max(0.0, float(uptime.read().split()[0]) - started)
    except (OSError, ValueError, IndexError):
        return 0.0


def _summary(collection: dict, height: int, width: int, seconds: float, runtime: str) -> str:
    area = (
        f"{collection['total_area_m2']:.1f} m² ({collection['area_note']})"
        if collection["georeferenced"]
        else f"{collection['total_area_px']:.0f} px² ({collection['why_pixels']})"
    )
    parts = (collection.get("parts") or {}).get("count", 1)
    in_parts = f" in {parts} parts" if parts > 1 else ""
    return (
        f"{collection['count']} buildings, {area}, {height} x {width} px{in_parts} in {seconds:.1f} s "
        f"({height * width / seconds / 1e6:.2f} MP/s through {runtime})"
    )


def _tiff_size(path: Path) -> tuple[int, int] | None:
    """(height, width) of a TIFF, read from its header; None for another format."""
    with open(path, "rb") as handle:
        if handle.read(4) not in TIFF_MAGIC:
            return None
    from rasterio.errors import RasterioIOError

    try:
        with warnings.catch_warnings(), open_tiff(path) as dataset:
            return dataset.height, dataset.width
    except RasterioIOError as error:
        raise InputError(f"file '{path}' is not a readable TIFF ({error})") from None


def _write_atomic(path: Path, data: bytes) -> None:
    with _atomic(path) as tmp:
        tmp.write_bytes(data)


def _atomic(path: Path):
    from zoo.files import atomic_path

    return atomic_path(path, suffix=path.suffix)


if __name__ == "__main__":
    sys.exit(main())
