"""Image/mask folders in, checked samples and arrays out.

A data folder holds `images/NAME.ext` (RGB) and `masks/NAME.ext` (one channel, 0/255 or 0/1,
same name and size), plus an optional `index.csv` with a `file` column and, usefully, `area`
and `zoom` columns. Tiles named `{prefix}_z{Z}_{X}_{Y}` are XYZ web-map tiles; every zoom level
of the same ground shares a *ground group* (its zoom-19 ancestor tile), which splits move whole
(`data.splits`), because a zoom-20 tile is a downsampled view of the zoom-21 tiles under it.

Only numpy and Pillow are imported at module level; OpenCV only inside the resize that needs it.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import math
import os
import pathlib
import re
from typing import Sequence

import cv2
import numpy as np
from PIL import Image

__all__ = [
    "DataError",
    "EXTENSIONS",
    "GROUP_ZOOM",
    "Sample",
    "check_samples",
    "ground_group",
    "load_arrays",
    "pixel_area_m2",
    "read_image",
    "read_mask",
    "scan_folder",
    "tile_position",
]

EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
# Tiles are grouped under their ancestor at this zoom: the coarsest zoom in the OAM data, so
# one group holds a zoom-19 tile, its 4 zoom-20 children and its 16 zoom-21 grandchildren.
GROUP_ZOOM = 19
_TILE_NAME = re.compile(r"^(?P<prefix>.+)_z(?P<zoom>\d+)_(?P<x>\d+)_(?P<y>\d+)$")
# Enough to show what is wrong without burying the message.
_MAX_LISTED_PROBLEMS = 10


class DataError(ValueError):
    """A data folder problem; the message names the offending file path."""


# --------------------------------------------------------------------------- samples


@dataclasses.dataclass(frozen=True)
class Sample:
    name: str  # file stem, shared by the image and its mask
    image_path: pathlib.Path
    mask_path: pathlib.Path
    area: str | None  # index.csv 'area', else None
    zoom: int | None  # index.csv 'zoom', else parsed from the name, else None
    group: str  # ground group: samples in one group must never be in two splits


def ground_group(name: str, area: str | None = None) -> str:
    """The split unit of a tile: its zoom-19 ancestor for `{prefix}_z{Z}_{X}_{Y}` names, else the name."""
    match = _TILE_NAME.match(name)
    if not match:
        return name
    zoom, x, y = (int(match[key]) for key in ("zoom", "x", "y"))
    # Coarser tiles than GROUP_ZOOM keep their own coordinates (none in the OAM data).
    shift = max(zoom - GROUP_ZOOM, 0)
    return f"{area or match['prefix']}/{x >> shift}_{y >> shift}"


def _zoom_from_name(name: str) -> int | None:
    position = tile_position(name)
    return position[0] if position else None


def tile_position(name: str) -> tuple[int, int, int] | None:
    """(zoom, x, y) of a `{prefix}_z{Z}_{X}_{Y}` tile name in the XYZ grid, else None."""
    match = _TILE_NAME.match(name)
    return (int(match["zoom"]), int(match["x"]), int(match["y"])) if match else None


# The XYZ grid's ground resolution at the equator, zoom 0, for 256 px tiles (metres a pixel).
EQUATOR_METRES_PER_PIXEL = 2 * math.pi * 6378137 / 256


def pixel_area_m2(name: str, side: int = 256) -> float:
    """Ground area in m² of one pixel of the tile `name` (`{prefix}_z{Z}_{X}_{Y}`) read at `side`
    pixels a side; NaN for a name outside the XYZ grid. Web Mercator stretches by 1/cos(latitude),
    so a pixel's ground side is the equator's times cos(latitude of the tile's centre)."""
    position = tile_position(name)
    if position is None:
        return math.nan
    zoom, _, y = position
    latitude = math.atan(math.sinh(math.pi * (1 - 2 * (y + 0.5) / 2**zoom)))
    metres = EQUATOR_METRES_PER_PIXEL * math.cos(latitude) / 2**zoom * 256 / side
    return metres * metres


# --------------------------------------------------------------------------- reading files


def read_image(path) -> np.ndarray:
    """An RGB image as uint8 HxWx3. Alpha is dropped; grayscale is refused (the encoder wants colour)."""
    path = pathlib.Path(path)
    depth = png_bit_depth(path)
    if depth > 8:  # Pillow reads a 16-bit RGB PNG as 8-bit by keeping the high byte, silently
        raise DataError(f"{path}: a {depth}-bit PNG; expected 8-bit RGB (0..255), as the server takes")
    with _open_image(path) as image:
        if image.mode in ("1", "L", "LA", "I", "F") or image.mode.startswith("I;"):
            raise DataError(f"{path}: image is grayscale (mode {image.mode}); expected an RGB image")
        if image.mode == "P":
            # Through RGBA, so a palette with transparency converts without a warning.
            image = image.convert("RGBA")
        pixels = np.asarray(image.convert("RGB") if image.mode != "RGB" else image)
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise DataError(f"{path}: expected 8-bit RGB, got {pixels.dtype} of shape {pixels.shape}")
    return pixels


def png_bit_depth(path) -> int:
    """Bits a sample of a PNG, from its IHDR chunk (the first: byte 24); 8 for any other file."""
    with open(path, "rb") as handle:
        head = handle.read(25)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and len(head) == 25:
        return head[24]
    return 8


def read_mask(path) -> np.ndarray:
    """A building mask as uint8 HxW with values {0, 1}; files may store 0/255 or 0/1."""
    path = pathlib.Path(path)
    with _open_image(path) as image:
        values = _single_channel(np.asarray(image), image.mode, path)
    return _binary_mask(values, path)


def _open_image(path: pathlib.Path) -> Image.Image:
    image = None
    try:
        image = Image.open(path)
        image.load()  # Image.open is lazy: decode now, so a truncated file fails here, named.
    except Exception as error:  # any decoder failure means the file is bad, whatever its type
        if image is not None:
            image.close()
        raise DataError(f"{path}: cannot read as an image ({type(error).__name__}: {error})") from None
    return image


def _single_channel(pixels: np.ndarray, mode: str, path: pathlib.Path) -> np.ndarray:
    if pixels.ndim == 2:
        return pixels
    channels = [pixels[..., c] for c in range(pixels.shape[2])]
    # An opaque alpha carries no label information; masks saved from paint programs have one.
    if mode in ("RGBA", "LA") and np.all(channels[-1] == 255):
        channels = channels[:-1]
    if any(not np.array_equal(channels[0], other) for other in channels[1:]):
        raise DataError(
            f"{path}: mask has {pixels.shape[2]} channels (mode {mode}) that differ; "
            "expected one channel, 0 = background, 255 or 1 = building"
        )
    return channels[0]


def _binary_mask(values: np.ndarray, path: pathlib.Path) -> np.ndarray:
    present = _distinct_values(values)
    if present <= {0, 1}:
        return values.astype(np.uint8, copy=False)
    if present <= {0, 255}:
        return (values == 255).astype(np.uint8)
    shown = ", ".join(str(v) for v in sorted(present)[:8])
    hint = " (JPEG is lossy: save masks as PNG)" if path.suffix.lower() in (".jpg", ".jpeg") else ""
    raise DataError(f"{path}: mask values must be 0/255 or 0/1, found {shown}{hint}")


def _distinct_values(values: np.ndarray) -> set:
    if values.dtype == np.bool_:
        return {int(v) for v in np.unique(values)}
    if values.dtype == np.uint8:
        # A histogram is several times faster than np.unique on 8-bit data.
        return {int(v) for v in np.flatnonzero(np.bincount(values.ravel(), minlength=256))}
    return {v.item() for v in np.unique(values)}


# --------------------------------------------------------------------------- scanning a folder


def scan_folder(root, check: bool = True) -> list[Sample]:
    """Every image/mask pair under `root`, sorted by name. With `check`, every file is read and checked."""
    root = pathlib.Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder does not exist (expected images/ and masks/ inside it)")
    images = _files_by_stem(_subfolder(root, "images"))
    masks = _files_by_stem(_subfolder(root, "masks"))
    if not images:
        raise DataError(f"{root / 'images'}: no image files ({' '.join(EXTENSIONS)})")
    _require_partners(images, masks, root)
    index = _read_index(root / "index.csv", images)
    samples = [_make_sample(stem, images[stem], masks[stem], index.get(stem, {})) for stem in sorted(images)]
    if check:
        check_samples(samples)
    return samples


def check_samples(samples: Sequence[Sample]) -> None:
    """Read every pair and raise one DataError listing the bad files (each named by path)."""
    # Pillow decodes with the GIL released, so threads overlap file reads and decoding.
    workers = min(8, 4 * (os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        problems = [p for p in pool.map(_pair_problem, samples) if p]
    if problems:
        raise DataError(_summarise(problems))


def _pair_problem(sample: Sample) -> str | None:
    try:
        image = read_image(sample.image_path)
        mask = read_mask(sample.mask_path)
    except DataError as error:
        return str(error)
    if image.shape[:2] != mask.shape:
        return (
            f"{sample.mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image "
            f"{sample.image_path} is {image.shape[1]}x{image.shape[0]}"
        )
    return None


def _summarise(problems: list[str]) -> str:
    if len(problems) == 1:
        return problems[0]
    listed = problems[:_MAX_LISTED_PROBLEMS]
    more = len(problems) - len(listed)
    tail = f"\n... and {more} more" if more else ""
    return f"{len(problems)} bad files:\n" + "\n".join(listed) + tail


def _subfolder(root: pathlib.Path, name: str) -> pathlib.Path:
    folder = root / name
    if not folder.is_dir():
        raise DataError(f"{folder}: folder missing (a data folder holds images/ and masks/)")
    return folder


def _files_by_stem(folder: pathlib.Path) -> dict[str, pathlib.Path]:
    found: dict[str, pathlib.Path] = {}
    # Hidden files (.DS_Store, editor backups) are not data; other extensions are ignored too.
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in EXTENSIONS or not path.is_file():
            continue
        if path.stem in found:
            raise DataError(f"{path}: same name as {found[path.stem]}; which one is meant is ambiguous")
        found[path.stem] = path
    return found


def _require_partners(images: dict, masks: dict, root: pathlib.Path) -> None:
    lonely_images = [
        f"{images[stem]}: no mask with this name in {root / 'masks'}"
        for stem in sorted(images.keys() - masks.keys())
    ]
    lonely_masks = [
        f"{masks[stem]}: no image with this name in {root / 'images'}"
        for stem in sorted(masks.keys() - images.keys())
    ]
    if lonely_images or lonely_masks:
        raise DataError(_summarise(lonely_images + lonely_masks))


def _read_index(path: pathlib.Path, images: dict[str, pathlib.Path]) -> dict[str, dict[str, str]]:
    """index.csv rows keyed by file stem; {} when there is no index."""
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8-sig") as handle:  # -sig: spreadsheets add a BOM
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or []]
        if "file" not in columns:
            raise DataError(f"{path}: no 'file' column (columns: {', '.join(columns) or 'none'})")
        rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    index: dict[str, dict[str, str]] = {}
    for line, row in enumerate(rows, start=2):
        stem = pathlib.PurePath(row["file"]).stem
        if stem not in images:
            raise DataError(
                f"{path}: line {line} names {row['file']!r}, not found in {path.parent / 'images'}"
            )
        if stem in index:
            raise DataError(f"{path}: line {line} names {row['file']!r} a second time")
        index[stem] = row
    # Checked strictly: an unlisted image would silently fall outside every area when splitting.
    unlisted = sorted(images.keys() - index.keys())
    if unlisted:
        raise DataError(f"{path}: does not list {len(unlisted)} image(s), e.g. {images[unlisted[0]]}")
    return index


def _make_sample(stem: str, image_path: pathlib.Path, mask_path: pathlib.Path, row: dict[str, str]) -> Sample:
    area = row.get("area") or None
    zoom = _zoom_from_name(stem)
    if row.get("zoom"):
        try:
            zoom = int(float(row["zoom"]))
        except ValueError:
            index_path = image_path.parent.parent / "index.csv"
            raise DataError(
                f"{index_path}: zoom {row['zoom']!r} of {row['file']!r} is not a number"
            ) from None
    return Sample(stem, image_path, mask_path, area, zoom, ground_group(stem, area))


# --------------------------------------------------------------------------- arrays


def load_arrays(samples: Sequence[Sample], size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(N,H,W,3) uint8 images and (N,H,W) uint8 {0,1} masks; `size` resizes to size x size."""
    if not samples:
        side = size or 0
        return np.zeros((0, side, side, 3), np.uint8), np.zeros((0, side, side), np.uint8)
    with concurrent.futures.ThreadPoolExecutor(min(8, 4 * (os.cpu_count() or 1))) as pool:
        pairs = pool.map(lambda s: _read_pair(s, size), samples)
        first_image, first_mask = next(pairs)
        images = np.empty((len(samples), *first_image.shape), np.uint8)
        masks = np.empty((len(samples), *first_mask.shape), np.uint8)
        images[0], masks[0] = first_image, first_mask
        for i, (image, mask) in enumerate(pairs, start=1):
            if image.shape != first_image.shape:
                raise DataError(
                    f"{samples[i].image_path}: size {image.shape[1]}x{image.shape[0]} differs from "
                    f"{samples[0].image_path} ({first_image.shape[1]}x{first_image.shape[0]}); "
                    "pass size= to resize"
                )
            images[i], masks[i] = image, mask
    return images, masks


def _read_pair(sample: Sample, size: int | None) -> tuple[np.ndarray, np.ndarray]:
    image, mask = read_image(sample.image_path), read_mask(sample.mask_path)
    if image.shape[:2] != mask.shape:
        raise DataError(
            f"{sample.mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image "
            f"{sample.image_path} is {image.shape[1]}x{image.shape[0]}"
        )
    if size is not None and image.shape[:2] != (size, size):
        image, mask = _resize_pair(image, mask, size)
    return image, mask


def _resize_pair(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    # Area averaging avoids aliasing when shrinking; bilinear is the smooth choice when growing.
    shrinking = image.shape[0] * image.shape[1] > size * size
    image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    # Nearest keeps the mask binary; interpolated labels would invent half-buildings.
    mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)
    return image, mask
