"""Seeded synthetic aerial-like scenes and data folders of them: for tests, never for results."""

from __future__ import annotations

import csv
import os
import pathlib
import shutil
import tempfile
from typing import Sequence

import cv2
import numpy as np
from PIL import Image

__all__ = ["SYNTHETIC_VERSION", "default_synthetic_root", "synthetic_scene", "write_synthetic_folder"]

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
    cv2.fillPoly(canvas, [np.round(outline).astype(np.int32)], value)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Noise in [0, 1] varying over about size/cells pixels: patchy fields, canopy texture."""
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
