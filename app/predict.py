"""`python -m app.predict IMAGE --out footprints.geojson`: the buildings of one image, as GeoJSON.

    python -m app.predict IMAGE [--out FILE.geojson] [--mask MASK.png] [--model PATH]
                          [--tta VIEWS] [--tolerance PX] [--min-area PX] [--window PX]

IMAGE is a GeoTIFF (outlines in WGS84 longitude/latitude, areas in m² measured in the image's
own projected CRS, see `zoo.polygons`) or any TIFF, PNG or JPEG (outlines in pixels; the
collection's `why_pixels` says why). The model is the served one (`app.model`: --model,
$ZOO_MODEL, results/MODEL), run with its own scales, test-time views and threshold, so the
outlines are those of the mask `POST /inference` gives for the same image. A batch job that is
not bound by a request's latency may ask for more views (`--tta dihedral`: all eight rotations
and flips at the model's scales, eight times the passes; results/EXPERIMENTS.md, step 23).

Any size is taken, in bounded memory. Up to `--window` (4096) px a side, the image is predicted
whole, exactly as the server does, with `zoo.predict`'s overlapping 512 px tiles. A larger TIFF
is read and predicted part by part: each part of (window - 2 margin) px a side with `margin`
(window / 16) px of its neighbours around it for context, which are then thrown away; buildings
a part's edge cuts are joined at the end (`zoo.polygons.SceneOutlines`). Peak memory is then
that of one window plus the outlines, whatever the scene's size (and 1 byte a pixel more with
--mask). `results/polygons.md` measures both (`python -m bench.polygons`).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import orjson

from app.inputs import TIFF_MAGIC, InputError, read_image_file, tiff_bands, tiff_georeference, to_rgb
from app.model import ENV, ModelUnavailable, load_segmenter, model_name, override_tta, resolve_model_path
from zoo.polygons import (
    DEFAULT_MIN_AREA,
    DEFAULT_TOLERANCE,
    SceneOutlines,
    feature_collection,
    footprints_geojson,
)
from zoo.predict import TTA_CHOICES, TTA_FROM_MODEL

WINDOW = 4096  # the server's largest side: above it, a TIFF is predicted part by part


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m app.predict",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("image", type=Path, help="a GeoTIFF, TIFF, PNG or JPEG")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the GeoJSON (default: IMAGE with .geojson)")
    parser.add_argument("--mask", type=Path, default=None, help="also write the mask, 0/255 PNG")
    parser.add_argument("--model", help=f"a .keras file (default: ${ENV}, else results/MODEL)")
    parser.add_argument("--tta", choices=TTA_CHOICES, default=TTA_FROM_MODEL,
                        help="test-time views (default: the model's, as the server applies them)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help=f"outline simplification, pixels (default {DEFAULT_TOLERANCE:g})")
    parser.add_argument("--min-area", type=float, default=DEFAULT_MIN_AREA,
                        help=f"smallest building kept, pixels (default {DEFAULT_MIN_AREA:g})")
    parser.add_argument("--window", type=int, default=WINDOW,
                        help=f"a TIFF with a side over this is predicted in parts this large "
                             f"(default {WINDOW})")
    args = parser.parse_args(argv)
    if args.window < 64:
        parser.error(f"--window must be at least 64 px, got {args.window}")
    return args


def footprints(segmenter, upload, tolerance: float = DEFAULT_TOLERANCE,
               min_area: float = DEFAULT_MIN_AREA, **members) -> tuple[dict, np.ndarray]:
    """The GeoJSON FeatureCollection of an `app.inputs.Upload`, and its mask."""
    probabilities = segmenter.probabilities(upload.image)
    mask = (probabilities >= segmenter.threshold).astype(np.uint8)  # Segmenter.predict's rule
    collection = footprints_geojson(mask, probabilities, upload.transform, upload.crs,
                                    tolerance, min_area, why_pixels=upload.why_pixels,
                                    model=model_name(segmenter), threshold=segmenter.threshold,
                                    **members)
    return collection, mask


def scene_footprints(segmenter, path: Path, window: int = WINDOW,
                     tolerance: float = DEFAULT_TOLERANCE, min_area: float = DEFAULT_MIN_AREA,
                     keep_mask: bool = False, **members) -> tuple[dict, np.ndarray | None]:
    """The GeoJSON FeatureCollection of a TIFF read and predicted in parts of at most `window`
    px a side, and with `keep_mask` its whole mask (else None)."""
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.windows import Window

    margin = window // 16
    core = window - 2 * margin
    name = str(path)
    with warnings.catch_warnings(), rasterio.open(path) as dataset:
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # reported in why_pixels
        bands = tiff_bands(dataset, name)
        transform, crs, why_pixels = tiff_georeference(dataset, name)
        height, width = dataset.height, dataset.width
        scene = SceneOutlines(height, width, tolerance, min_area)
        whole = np.zeros((height, width), np.uint8) if keep_mask else None
        parts = 0
        for row in range(0, height, core):
            for col in range(0, width, core):
                rows, cols = min(core, height - row), min(core, width - col)
                top, left = max(0, row - margin), max(0, col - margin)
                bottom, right = min(height, row + rows + margin), min(width, col + cols + margin)
                pixels = dataset.read(bands, window=Window(left, top, right - left, bottom - top))
                image = to_rgb(np.moveaxis(pixels, 0, -1), window)
                inside = np.s_[row - top:row - top + rows, col - left:col - left + cols]
                probabilities = segmenter.probabilities(image)[inside]
                mask = (probabilities >= segmenter.threshold).astype(np.uint8)
                scene.add(mask, probabilities, row, col)
                if whole is not None:
                    whole[row:row + rows, col:col + cols] = mask
                parts += 1
    collection = feature_collection(scene.footprints(), transform, crs, why_pixels,
                                    tolerance_px=tolerance, min_area_px=min_area,
                                    model=model_name(segmenter), threshold=segmenter.threshold,
                                    parts={"count": parts, "window": window, "margin": margin},
                                    **members)
    return collection, whole


def main(argv=None) -> int:
    args = parse_args(argv)
    out = args.out or args.image.with_suffix(".geojson")
    try:
        size = _tiff_size(args.image)
        in_parts = size is not None and max(size) > args.window
        upload = None if in_parts else read_image_file(args.image)
        segmenter = override_tta(load_segmenter(resolve_model_path(args.model)), args.tta)
    except (InputError, ModelUnavailable, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    started = time.perf_counter()
    height, width = size if in_parts else upload.image.shape[:2]
    about = {"file": args.image.name, "height": height, "width": width}
    try:
        if in_parts:
            collection, mask = scene_footprints(segmenter, args.image, args.window,
                                                args.tolerance, args.min_area,
                                                keep_mask=args.mask is not None, image=about)
        else:
            collection, mask = footprints(segmenter, upload, args.tolerance, args.min_area,
                                          image=about)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    _write_atomic(out, orjson.dumps(collection))
    if args.mask:
        from PIL import Image

        with _atomic(args.mask) as tmp:
            Image.fromarray(mask * 255).save(tmp, format="PNG")
    area = (f"{collection['total_area_m2']:.1f} m² (measured in {collection['area_crs']})"
            if collection["georeferenced"] else
            f"{collection['total_area_px']:.0f} px² ({collection['why_pixels']})")
    parts = f" in {collection['parts']['count']} parts" if in_parts else ""
    print(f"{collection['count']} buildings, {area}, {height} x {width} px{parts} in "
          f"{time.perf_counter() - started:.1f} s -> {out}")
    return 0


def _tiff_size(path: Path) -> tuple[int, int] | None:
    """(height, width) of a TIFF, read from its header; None for another format."""
    with open(path, "rb") as handle:
        if handle.read(4) not in TIFF_MAGIC:
            return None
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as dataset:
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
