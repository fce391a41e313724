"""Image/mask folders in, checked samples, leak-free splits, augmentation and tf.data out.

A data folder holds `images/NAME.ext` (RGB) and `masks/NAME.ext` (one channel, 0/255 or 0/1,
same name and size), plus an optional `index.csv` with a `file` column and, usefully, `area`
and `zoom` columns. Tiles named `{prefix}_z{Z}_{X}_{Y}` are XYZ web-map tiles; every zoom level
of the same ground shares a *ground group* (its zoom-19 ancestor tile), and splits move whole
groups, because a zoom-20 tile is a downsampled view of the zoom-21 tiles under it.

Only numpy and Pillow are imported here at module level; OpenCV, albumentations and TensorFlow
are imported inside the functions that need them, so reports and the CLI stay cheap to start.
"""
from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import os
import pathlib
import re
import shutil
import tempfile
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import albumentations
    import tensorflow as tf

__all__ = [
    "AUGMENTATIONS",
    "DataError",
    "EXTENSIONS",
    "GROUP_ZOOM",
    "SYNTHETIC_VERSION",
    "Sample",
    "Split",
    "augment_pair",
    "augmentation",
    "check_samples",
    "default_synthetic_root",
    "ground_group",
    "limit",
    "load_arrays",
    "read_image",
    "read_mask",
    "scan_folder",
    "split_samples",
    "synthetic_scene",
    "tf_dataset",
    "write_synthetic_folder",
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


# --------------------------------------------------------------------------- reading files


def read_image(path) -> np.ndarray:
    """An RGB image as uint8 HxWx3. Alpha is dropped; grayscale is refused (the encoder wants colour)."""
    path = pathlib.Path(path)
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
        f"{images[stem]}: no mask with this name in {root / 'masks'}" for stem in sorted(images.keys() - masks.keys())
    ]
    lonely_masks = [
        f"{masks[stem]}: no image with this name in {root / 'images'}" for stem in sorted(masks.keys() - images.keys())
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
            raise DataError(f"{path}: line {line} names {row['file']!r}, not found in {path.parent / 'images'}")
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
            raise DataError(f"{index_path}: zoom {row['zoom']!r} of {row['file']!r} is not a number") from None
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
    import cv2

    # Area averaging avoids aliasing when shrinking; bilinear is the smooth choice when growing.
    shrinking = image.shape[0] * image.shape[1] > size * size
    image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    # Nearest keeps the mask binary; interpolated labels would invent half-buildings.
    mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)
    return image, mask


# --------------------------------------------------------------------------- splits


@dataclasses.dataclass(frozen=True)
class Split:
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    description: str  # one sentence for tables and logs: how the split was made

    def __post_init__(self):
        # The one promise a Split makes, checked wherever one is made.
        seen: dict[str, str] = {}
        for part in ("train", "val", "test"):
            for sample in getattr(self, part):
                if seen.setdefault(sample.group, part) != part:
                    raise ValueError(f"ground group {sample.group!r} is in {seen[sample.group]} and {part}")

    def counts(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def split_samples(
    samples: Sequence[Sample],
    test_area: str | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    seed: int = 0,
    val_area: str | None = None,
) -> Split:
    """Train/val/test moving whole ground groups, so no ground is seen in two splits.

    When every sample has an area (from index.csv) and there are at least two areas, the test
    split is one whole area: `test_area`, or by default the middle-sized area by tile count,
    so neither the largest (most training data) nor the smallest (a noisy score) is held out.
    `test_fraction` is then unused. Without areas, test is a seeded random `test_fraction`
    of the tiles taken as whole groups. Either way val is a seeded random `val_fraction` of
    the tiles left after the test split, taken as whole groups; train is the rest.

    With `val_area`, validation is that whole area instead (cross-city validation): selection
    then rewards what transfers to a city the decoder never trained on, which is the question
    a new city asks, rather than what fits the training cities.
    """
    if not samples:
        raise DataError("no samples to split")
    areas = _tiles_per_area(samples)
    if test_area is not None and not areas:
        raise DataError(f"test_area={test_area!r} given but samples have no areas (no 'area' in index.csv?)")
    if test_area is not None and test_area not in areas:
        raise DataError(f"test_area={test_area!r} is not an area of the data; known: {', '.join(sorted(areas))}")
    _check_val_area(val_area, test_area, areas)
    rng = np.random.default_rng(seed)
    unit = _group_word(samples)
    if test_area is not None or len(areas) >= 2:
        test, rest, test_text = _hold_out_area(samples, areas, test_area)
    else:
        test, rest, test_text = _hold_out_groups(samples, test_fraction, rng, unit)
    if val_area is not None:
        val, train, val_text = _hold_out_val_area(rest, val_area)
    else:
        val, train, val_text = _hold_out_val_groups(rest, val_fraction, rng, unit, seed)
    if not train:
        raise DataError(f"too few {unit} to split: nothing left to train on ({len(samples)} samples)")
    return Split(train, val, test, f"{test_text}; {val_text}; train = the other {len(train)} tiles")


def _check_val_area(val_area, test_area, areas) -> None:
    if val_area is None:
        return
    if not areas:
        raise DataError(f"val_area={val_area!r} given but samples have no areas (no 'area' in index.csv?)")
    if val_area not in areas:
        raise DataError(f"val_area={val_area!r} is not an area of the data; known: {', '.join(sorted(areas))}")
    if len(areas) < 3:
        raise DataError(f"val_area needs at least three areas (test, val, train); the data has {len(areas)}")
    if val_area == (test_area or _middle_area(areas)):
        raise DataError(f"val_area={val_area!r} is also the test area; choose another")


def _hold_out_val_area(rest, val_area: str) -> tuple[list, list, str]:
    val = [s for s in rest if s.area == val_area]
    train = [s for s in rest if s.area != val_area]
    return val, train, f"val = area {val_area} ({len(val)} tiles, cross-city)"


def _hold_out_val_groups(rest, fraction: float, rng, unit: str, seed: int) -> tuple[list, list, str]:
    val_groups = _draw_groups(rest, fraction, rng)
    val = [s for s in rest if s.group in val_groups]
    train = [s for s in rest if s.group not in val_groups]
    text = (f"val = {fraction:.0%} of the remaining tiles as random whole {unit} "
            f"({len(val)} tiles, {len(val_groups)} groups, seed {seed})")
    return val, train, text


def _hold_out_area(samples, areas: dict[str, int], test_area: str | None) -> tuple[list, list, str]:
    _require_groups_within_areas(samples)
    why = ""
    if test_area is None:
        test_area = _middle_area(areas)
        why = f", the middle-sized of {len(areas)} areas"
    test = [s for s in samples if s.area == test_area]
    rest = [s for s in samples if s.area != test_area]
    return test, rest, f"test = area {test_area} ({len(test)} tiles{why})"


def _hold_out_groups(samples, fraction: float, rng: np.random.Generator, unit: str) -> tuple[list, list, str]:
    chosen = _draw_groups(samples, fraction, rng)
    test = [s for s in samples if s.group in chosen]
    rest = [s for s in samples if s.group not in chosen]
    text = f"test = {fraction:.0%} of tiles as random whole {unit} ({len(test)} tiles, {len(chosen)} groups)"
    return test, rest, text


def _tiles_per_area(samples: Sequence[Sample]) -> dict[str, int]:
    """Tile count per area, or {} when any sample lacks an area (then areas cannot split)."""
    if any(s.area is None for s in samples):
        return {}
    counts: dict[str, int] = {}
    for sample in samples:
        counts[sample.area] = counts.get(sample.area, 0) + 1
    return counts


def _middle_area(counts: dict[str, int]) -> str:
    by_size = sorted(counts, key=lambda area: (counts[area], area))
    # With two areas this is the smaller one: holding out the larger would starve training.
    return by_size[(len(by_size) - 1) // 2]


def _group_word(samples: Sequence[Sample]) -> str:
    if all(_TILE_NAME.match(s.name) for s in samples):
        return f"zoom-{GROUP_ZOOM} ground groups"
    return "ground groups"


def _require_groups_within_areas(samples: Sequence[Sample]) -> None:
    area_of: dict[str, str] = {}
    for sample in samples:
        if area_of.setdefault(sample.group, sample.area) != sample.area:
            raise DataError(
                f"{sample.image_path}: its ground group {sample.group!r} spans areas "
                f"{area_of[sample.group]} and {sample.area}; one area cannot be held out cleanly"
            )


def _groups(samples: Iterable[Sample]) -> dict[str, list[Sample]]:
    groups: dict[str, list[Sample]] = {}
    for sample in samples:
        groups.setdefault(sample.group, []).append(sample)
    return groups


def _shuffled_group_names(groups: dict[str, list[Sample]], rng: np.random.Generator) -> list[str]:
    # Sorting first makes the shuffle depend on the seed only, not on the input order.
    names = sorted(groups)
    return [names[i] for i in rng.permutation(len(names))]


def _draw_groups(samples: Sequence[Sample], fraction: float, rng: np.random.Generator) -> set[str]:
    """Random whole groups holding as near `fraction` of the samples as whole groups allow."""
    groups = _groups(samples)
    target = fraction * len(samples)
    chosen: set[str] = set()
    taken = 0
    for name in _shuffled_group_names(groups, rng):
        # Stop when the next group would overshoot more than stopping undershoots; but take
        # at least one group when any is asked for, or a small fraction would give nothing.
        if chosen and taken + len(groups[name]) / 2 > target or target <= 0:
            break
        chosen.add(name)
        taken += len(groups[name])
    return chosen


def limit(samples: Sequence[Sample], n: int, seed: int) -> list[Sample]:
    """At most `n` samples, seeded, in name order: each area keeps its share of n, and within
    an area whole ground groups are taken first, the last one cut if needed to reach the share.

    Keeping every area's share means a limited set can still be split by area; cutting a group
    cannot leak, because split_samples then moves whatever is left of it as one group.
    """
    if n < 0:
        raise ValueError(f"limit n must be >= 0, got {n}")
    if n >= len(samples):
        return list(samples)
    rng = np.random.default_rng(seed)
    by_area: dict[str, list[Sample]] = {}
    for sample in samples:
        by_area.setdefault(sample.area or "", []).append(sample)
    shares = _proportional_shares({area: len(members) for area, members in by_area.items()}, n)
    chosen = [s for area in sorted(by_area) for s in _take_groups(by_area[area], shares[area], rng)]
    return sorted(chosen, key=lambda s: s.name)


def _proportional_shares(counts: dict[str, int], n: int) -> dict[str, int]:
    """Split n in proportion to counts; leftover units go to the largest remainders (Hamilton)."""
    total = sum(counts.values())
    exact = {key: n * count / total for key, count in counts.items()}
    shares = {key: int(value) for key, value in exact.items()}
    by_remainder = sorted(counts, key=lambda key: (-(exact[key] - shares[key]), key))
    for key in by_remainder[: n - sum(shares.values())]:
        shares[key] += 1
    return shares


def _take_groups(samples: Sequence[Sample], n: int, rng: np.random.Generator) -> list[Sample]:
    groups = _groups(samples)
    chosen: list[Sample] = []
    did_not_fit: list[str] = []
    for name in _shuffled_group_names(groups, rng):
        if len(chosen) + len(groups[name]) <= n:
            chosen += groups[name]
        else:
            did_not_fit.append(name)
    for name in did_not_fit:  # fill up with part of a group so n is reached exactly
        room = n - len(chosen)
        if room == 0:
            break
        members = groups[name]
        chosen += [members[i] for i in sorted(rng.permutation(len(members))[:room])]
    return chosen


# --------------------------------------------------------------------------- augmentation

AUGMENTATIONS = ("none", "flips", "geometric", "strong", "sensor", "zoom")


def augmentation(name: str, seed: int | None = None) -> "albumentations.Compose":
    """A named albumentations pipeline; the same seed gives the same stream of random choices."""
    if name not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {name!r}; choices: {', '.join(AUGMENTATIONS)}")
    A = _albumentations()
    transforms = []
    if name != "none":
        transforms += _dihedral(A)
    if name in ("geometric", "strong"):
        transforms += _small_affine(A)
    if name == "strong":
        transforms += _photometric(A)
    if name == "sensor":
        transforms += _other_sensor(A)
    if name == "zoom":
        transforms += _closer_view(A)
    return A.Compose(transforms, seed=seed)


def _albumentations():
    # albumentations asks PyPI for a newer version on import: slow or a warning offline.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations

    return albumentations


def _dihedral(A) -> list:
    # A flip and a random quarter turn cover all 8 symmetries of a square evenly: aerial
    # images have no "up". The vertical flip is redundant with them but harmless.
    return [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=1.0)]


def _small_affine(A) -> list:
    import cv2

    # Small scale changes mimic the 7-30 cm spread of ground resolution; reflecting the border
    # keeps texture (and buildings, reflected alike in the mask) instead of black corners.
    return [
        A.Affine(
            scale=(0.9, 1.1),
            rotate=(-15, 15),
            translate_percent=(-0.05, 0.05),
            interpolation=cv2.INTER_LINEAR,
            mask_interpolation=cv2.INTER_NEAREST,
            border_mode=cv2.BORDER_REFLECT_101,
            p=0.7,
        )
    ]


def _photometric(A) -> list:
    # Light changes only: different cameras, sun and haze; roof colour must stay recognisable.
    return [
        A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
        A.HueSaturationValue(hue_shift_limit=5, sat_shift_limit=15, val_shift_limit=10, p=0.3),
        A.RandomGamma(gamma_limit=(85, 115), p=0.3),
        A.OneOf([A.GaussNoise(std_range=(0.01, 0.04)), A.ImageCompression(quality_range=(60, 95))], p=0.3),
    ]


def _other_sensor(A) -> list:
    """An unseen city is also an unseen camera: another ground resolution (7-30 cm across the
    zoom levels here, more elsewhere), blur from resampling or motion, other colour balance
    and compression. Wider scale changes plus resolution loss teach the decoder not to rely
    on the sharpness of the training cities' imagery."""
    import cv2

    resample = {"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_LINEAR}
    return [
        A.Affine(scale=(0.75, 1.33), rotate=(-15, 15), interpolation=cv2.INTER_LINEAR,
                 mask_interpolation=cv2.INTER_NEAREST, border_mode=cv2.BORDER_REFLECT_101, p=0.7),
        A.OneOf([A.Downscale(scale_range=(0.25, 0.6), interpolation_pair=resample),
                 A.GaussianBlur(blur_limit=(3, 7)), A.MotionBlur(blur_limit=(3, 7))], p=0.6),
        A.RandomBrightnessContrast(brightness_limit=0.25, contrast_limit=0.25, p=0.6),
        A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=25, val_shift_limit=15, p=0.5),
        A.RandomGamma(gamma_limit=(75, 130), p=0.4),
        A.OneOf([A.GaussNoise(std_range=(0.01, 0.05)), A.ImageCompression(quality_range=(40, 90))], p=0.4),
    ]


def _closer_view(A) -> list:
    """A closer view of the same ground: the tile shows a 1/4-2/3 wide part of itself,
    enlarged to the full tile (1.5-4x). A 10 m roof at 7 cm/px already spans 140 px; enlarged,
    the training city's houses take the pixel sizes of larger buildings (and of finer
    imagery), so a roof that fills the tile, with no ground or edge in view, is something the
    decoder has seen. The offset reaches the tile's corners; the little it reaches past them
    is reflected, mask alike."""
    import cv2

    return [
        A.Affine(scale=(1.5, 4.0), translate_percent=(-0.25, 0.25), rotate=(-15, 15),
                 interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
                 border_mode=cv2.BORDER_REFLECT_101, p=1.0),
    ]


def augment_pair(pipeline, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Augment one uint8 HxWx3 image and its uint8 HxW {0,1} mask together."""
    out = pipeline(image=image, mask=mask)
    new_image, new_mask = out["image"], out["mask"]
    if new_image.shape != image.shape or new_mask.shape != mask.shape:
        # Quarter turns of a non-square tile change its shape; batches need fixed shapes.
        raise ValueError(f"augmentation changed the size {image.shape} to {new_image.shape}; use square tiles")
    return np.ascontiguousarray(new_image, np.uint8), np.ascontiguousarray(new_mask, np.uint8)


# --------------------------------------------------------------------------- tf.data


def tf_dataset(
    images: np.ndarray,
    masks: np.ndarray,
    batch_size: int,
    pipeline=None,
    shuffle_seed: int | None = None,
    repeat: bool = False,
) -> "tf.data.Dataset":
    """Batches of (float32 images 0..255 NHWC, float32 masks NHW1); the model scales its input.

    No shuffle when `shuffle_seed` is None (evaluation order). The arrays stay in numpy: the
    dataset carries indices, and a batch is gathered (and augmented) by one numpy call.
    """
    import tensorflow as tf

    images, masks = _checked_arrays(images, masks, batch_size)
    height, width = images.shape[1:3]

    def gather(indices):
        return _gather_batch(images, masks, indices, pipeline)

    def to_tensors(indices):
        x, y = tf.numpy_function(gather, [indices], (tf.float32, tf.float32), stateful=pipeline is not None)
        x.set_shape((None, height, width, 3))
        y.set_shape((None, height, width, 1))
        return x, y

    dataset = tf.data.Dataset.range(len(images))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(images), seed=shuffle_seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()  # before batching, so batches stay full across epochs
    return dataset.batch(batch_size).map(to_tensors).prefetch(tf.data.AUTOTUNE)


def _checked_arrays(images: np.ndarray, masks: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    images, masks = np.asarray(images), np.asarray(masks)
    if masks.ndim == 4 and masks.shape[-1] == 1:
        masks = masks[..., 0]
    if images.ndim != 4 or images.shape[-1] != 3 or masks.shape != images.shape[:3]:
        raise ValueError(f"expected images (N,H,W,3) and masks (N,H,W), got {images.shape} and {masks.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return images, masks


def _gather_batch(images, masks, indices, pipeline) -> tuple[np.ndarray, np.ndarray]:
    x, y = images[indices], masks[indices]  # fancy indexing copies, so augmenting in place is safe
    if pipeline is not None:
        for i in range(len(x)):
            x[i], y[i] = augment_pair(pipeline, x[i], y[i])
    return x.astype(np.float32), y[..., None].astype(np.float32)


# --------------------------------------------------------------------------- synthetic scenes

# Bump when synthetic_scene changes, so cached folders of the old generator are not reused.
SYNTHETIC_VERSION = 2
_GROUND_COLOURS = ((150, 122, 92), (166, 152, 104), (98, 122, 72), (188, 172, 142), (122, 104, 82))
# Grey, red tile, brown, white, blue tin, dark grey: grey and dark roofs look like roads on purpose.
_ROOF_COLOURS = ((150, 150, 148), (168, 74, 56), (122, 88, 62), (226, 224, 218), (72, 112, 160), (92, 92, 96))
_ROAD_GREYS = ((128, 128, 124), (140, 136, 128), (104, 104, 102))


def synthetic_scene(rng: np.random.Generator, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """An aerial-like RGB uint8 scene and its building mask (uint8 {0,1}); deterministic per rng state.

    Learnable but not trivially: roads share grey with roofs, vegetation is textured like
    ground, shadows are dark and next to roofs, and about 30 % of scenes have no building.
    """
    scale = size / 256
    image = _ground(rng, size)
    _draw_roads(rng, image, scale)
    _draw_vegetation(rng, image, scale)
    mask = np.zeros((size, size), np.uint8)
    count = 0 if rng.random() < 0.3 else int(rng.integers(1, 13))
    sun = rng.uniform(0, 2 * np.pi)  # one sun per scene, so every shadow falls the same way
    shadow_offset = np.array([np.cos(sun), np.sin(sun)]) * rng.uniform(3, 7) * scale
    for _ in range(count):
        outline = _building_outline(rng, size, scale)
        _draw_shadow(image, outline, shadow_offset)
        _draw_roof(rng, image, outline)
        _fill(mask, outline, 1)
    image += rng.normal(0, rng.uniform(2, 6), image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def _fill(canvas: np.ndarray, outline: np.ndarray, value) -> None:
    import cv2

    cv2.fillPoly(canvas, [np.round(outline).astype(np.int32)], value)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Noise in [0, 1] varying over about size/cells pixels: patchy fields, canopy texture."""
    import cv2

    coarse = rng.random((cells, cells)).astype(np.float32)
    smooth = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    return (smooth - smooth.min()) / max(float(np.ptp(smooth)), 1e-6)


def _ground(rng: np.random.Generator, size: int) -> np.ndarray:
    picks = rng.choice(len(_GROUND_COLOURS), 2, replace=False)
    first, second = (np.array(_GROUND_COLOURS[i], np.float32) for i in picks)
    blend = _smooth_noise(rng, size, int(rng.integers(3, 8)))[..., None]
    grain = rng.normal(0, 7, (size, size, 1)).astype(np.float32)
    return first * (1 - blend) + second * blend + grain


def _draw_roads(rng: np.random.Generator, image: np.ndarray, scale: float) -> None:
    import cv2

    size = image.shape[0]
    for _ in range(int(rng.choice([0, 0, 1, 1, 2]))):
        road = np.zeros((size, size), np.uint8)
        centre = rng.uniform(0, size, 2)
        direction = rng.uniform(0, np.pi)
        reach = np.array([np.cos(direction), np.sin(direction)]) * 2 * size
        ends = [tuple(int(v) for v in centre - reach), tuple(int(v) for v in centre + reach)]
        cv2.line(road, ends[0], ends[1], 1, thickness=max(2, int(rng.uniform(10, 24) * scale)))
        grey = np.array(_ROAD_GREYS[rng.integers(len(_ROAD_GREYS))], np.float32)
        texture = rng.normal(0, 4, (size, size, 1)).astype(np.float32)
        image[road == 1] = (grey + texture)[road == 1]


def _draw_vegetation(rng: np.random.Generator, image: np.ndarray, scale: float) -> None:
    size = image.shape[0]
    canopy = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(0, 7))):
        centre = rng.uniform(0, size, 2)
        for _ in range(int(rng.integers(3, 9))):  # a clump of crowns, not one disc
            crown = centre + rng.normal(0, 12 * scale, 2)
            radius = rng.uniform(5, 16) * scale
            angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
            _fill(canopy, crown + radius * np.stack([np.cos(angles), np.sin(angles)], 1), 1)
    if not canopy.any():
        return
    green = np.array([52, 92, 44], np.float32) + rng.normal(0, 8, 3).astype(np.float32)
    texture = 0.7 + 0.6 * _smooth_noise(rng, size, max(4, size // 6))[..., None]
    image[canopy == 1] = (green * texture)[canopy == 1]


def _building_outline(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """A rotated rectangle or L-shape, float (K, 2) x/y points, centred inside the image."""
    width, height = rng.uniform(16, 60, 2) * scale
    if rng.random() < 0.35:
        cut_x, cut_y = rng.uniform(0.4, 0.7, 2)
        notch_x, notch_y = width * cut_x, height * cut_y
        local = [(0, 0), (width, 0), (width, notch_y), (notch_x, notch_y), (notch_x, height), (0, height)]
    else:
        local = [(0, 0), (width, 0), (width, height), (0, height)]
    points = np.array(local, np.float64) - (width / 2, height / 2)
    angle = rng.uniform(0, np.pi)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return points @ rotation.T + rng.uniform(0, size, 2)


def _draw_shadow(image: np.ndarray, outline: np.ndarray, offset: np.ndarray) -> None:
    size = image.shape[0]
    shadow = np.zeros((size, size), np.uint8)
    # Sweeping the outline along the sun direction gives a solid shadow, not a shifted copy.
    for step in np.linspace(0.25, 1.0, 4):
        _fill(shadow, outline + step * offset, 1)
    image[shadow == 1] *= 0.55


def _draw_roof(rng: np.random.Generator, image: np.ndarray, outline: np.ndarray) -> None:
    size = image.shape[0]
    x0, y0 = np.clip(np.floor(outline.min(0)), 0, size).astype(int)
    x1, y1 = np.clip(np.ceil(outline.max(0)) + 1, 0, size).astype(int)
    if x1 <= x0 or y1 <= y0:
        return
    roof = np.zeros((y1 - y0, x1 - x0), np.uint8)
    _fill(roof, outline - (x0, y0), 1)
    colour = np.array(_ROOF_COLOURS[rng.integers(len(_ROOF_COLOURS))], np.float32)
    colour += rng.normal(0, 8, 3).astype(np.float32)
    # A slight brightness ramp across the roof, as sunlight on a pitched roof.
    yy, xx = np.mgrid[0 : y1 - y0, 0 : x1 - x0].astype(np.float32)
    tilt = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(tilt) * xx + np.sin(tilt) * yy
    ramp = (ramp - ramp.mean()) / max(float(np.abs(ramp - ramp.mean()).max()), 1.0)
    shaded = colour * (1 + 0.1 * ramp)[..., None]
    region = image[y0:y1, x0:x1]
    region[roof == 1] = shaded[roof == 1]


def write_synthetic_folder(
    root,
    n: int = 64,
    size: int = 256,
    seed: int = 0,
    areas: Sequence[str] = ("synth_a", "synth_b", "synth_c"),
) -> pathlib.Path:
    """Write n synthetic tiles as a data folder (images/, masks/ 0/255, index.csv); returns root.

    Written to a temporary sibling and renamed into place, so `root` either is complete or
    does not exist. Refuses to overwrite a non-empty `root` (FileExistsError).
    """
    root = pathlib.Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root}: already exists and is not empty")
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=root.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the finished folder is ordinary data
    try:
        _write_synthetic_tiles(staging, n, size, seed, tuple(areas))
        try:
            if root.exists():
                root.rmdir()  # empty when checked above; a racing writer may fill it since
            os.rename(staging, root)
        except OSError:
            if root.exists():  # another process finished the same folder first
                raise FileExistsError(f"{root}: written meanwhile by another process") from None
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # a no-op after a successful rename
    return root


def _synthetic_tile_names(n: int, areas: tuple[str, ...]) -> list[tuple[str, int, int]]:
    """(area, x, y) zoom-21 tiles in 2x2 blocks, each block inside one zoom-19 ground group."""
    if not areas:
        raise ValueError("areas must name at least one area")
    x0, y0 = 4 * 318_000, 4 * 270_000  # multiples of 4: a block never straddles two groups
    tiles = []
    for i in range(n):
        block, corner = divmod(i, 4)
        area = areas[block % len(areas)]
        column = block // len(areas)
        tiles.append((area, x0 + 4 * column + corner % 2, y0 + corner // 2))
    return tiles


def _write_synthetic_tiles(folder: pathlib.Path, n: int, size: int, seed: int, areas: tuple[str, ...]):
    (folder / "images").mkdir()
    (folder / "masks").mkdir()
    rows = []
    for i, (area, x, y) in enumerate(_synthetic_tile_names(n, areas)):
        # One generator per tile: tile i is the same whatever n is.
        image, mask = synthetic_scene(np.random.default_rng([seed, i]), size)
        file = f"{area}_z21_{x}_{y}.png"
        Image.fromarray(image).save(folder / "images" / file, compress_level=1)
        Image.fromarray(mask * 255).save(folder / "masks" / file, compress_level=1)
        rows.append((file, area, 21, f"{mask.mean():.4f}"))
    with open(folder / "index.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("file", "area", "zoom", "building_frac"))
        writer.writerows(rows)


def default_synthetic_root(n: int, size: int, seed: int) -> pathlib.Path:
    """A cached synthetic data folder under $XDG_CACHE_HOME (or ~/.cache), written if missing."""
    cache = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG spec says a relative path is invalid and must be ignored.
    base = pathlib.Path(cache) if os.path.isabs(cache) else pathlib.Path.home() / ".cache"
    root = base / "building-zoo" / f"synthetic-v{SYNTHETIC_VERSION}-n{n}-s{size}-seed{seed}"
    if not root.is_dir():
        try:
            write_synthetic_folder(root, n=n, size=size, seed=seed)
        except FileExistsError:
            pass  # complete: folders only appear by rename once fully written
    return root
