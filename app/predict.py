"""`python -m app.predict IMAGE --out footprints.geojson`: the buildings of one image, as GeoJSON.

    python -m app.predict IMAGE [--out FILE.geojson] [--mask MASK.png] [--model PATH]
                          [--tolerance PX] [--min-area PX]

IMAGE is a GeoTIFF (outlines in WGS84 longitude/latitude, areas in m² measured in the image's
own projected CRS, see `zoo.polygons`) or any TIFF, PNG or JPEG (outlines in pixels; the
collection's `why_pixels` says why). The model is the served one (`app.model`: --model,
$ZOO_MODEL, results/MODEL), run with its own scales and threshold, so the outlines are those
of the mask `POST /inference` gives for the same image.

Any size is taken: `zoo.predict` runs a scene larger than 512 px in overlapping 512 px tiles,
so the model's working memory does not grow with the scene; the scene's own arrays (image,
probabilities, mask, labels) do, linearly. `results/polygons.md` measures peak memory and time
on a 4096 x 4096 GeoTIFF (`python -m ablations.bench.polygons`).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import orjson

from app.inputs import InputError, read_image_file
from app.model import ENV, ModelUnavailable, load_segmenter, model_name, resolve_model_path
from zoo.polygons import DEFAULT_MIN_AREA, DEFAULT_TOLERANCE, footprints_geojson


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m app.predict",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("image", type=Path, help="a GeoTIFF, TIFF, PNG or JPEG")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the GeoJSON (default: IMAGE with .geojson)")
    parser.add_argument("--mask", type=Path, default=None, help="also write the mask, 0/255 PNG")
    parser.add_argument("--model", help=f"a .keras file (default: ${ENV}, else results/MODEL)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help=f"outline simplification, pixels (default {DEFAULT_TOLERANCE:g})")
    parser.add_argument("--min-area", type=float, default=DEFAULT_MIN_AREA,
                        help=f"smallest building kept, pixels (default {DEFAULT_MIN_AREA:g})")
    return parser.parse_args(argv)


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


def main(argv=None) -> int:
    args = parse_args(argv)
    out = args.out or args.image.with_suffix(".geojson")
    try:
        upload = read_image_file(args.image)
        segmenter = load_segmenter(resolve_model_path(args.model))
    except (InputError, ModelUnavailable, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    started = time.perf_counter()
    height, width = upload.image.shape[:2]
    collection, mask = footprints(segmenter, upload, args.tolerance, args.min_area,
                                  image={"file": args.image.name, "height": height,
                                         "width": width})
    _write_atomic(out, orjson.dumps(collection))
    if args.mask:
        from PIL import Image

        mask_path = args.mask
        with _atomic(mask_path) as tmp:
            Image.fromarray(mask * 255).save(tmp, format="PNG")
    area = (f"{collection['total_area_m2']:.1f} m² (measured in {collection['area_crs']})"
            if collection["georeferenced"] else
            f"{collection['total_area_px']:.0f} px² ({collection['why_pixels']})")
    print(f"{collection['count']} buildings, {area}, {height} x {width} px in "
          f"{time.perf_counter() - started:.1f} s -> {out}")
    return 0


def _write_atomic(path: Path, data: bytes) -> None:
    with _atomic(path) as tmp:
        tmp.write_bytes(data)


def _atomic(path: Path):
    from zoo.files import atomic_path

    return atomic_path(path, suffix=path.suffix)


if __name__ == "__main__":
    sys.exit(main())
