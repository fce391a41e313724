"""A real scene for the benchmarks: the largest square block of neighbouring XYZ tiles of one
zoom in the data folder (16 x 16 zoom-21 tiles of Dar es Salaam in the OAM data: 4096 x 4096 px),
stitched and written as a GeoTIFF in Web Mercator (EPSG:3857) with the tiles' exact transform,
and its true mask beside it; a smaller side is the block's centre crop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

from data.folders import read_image, read_mask, tile_position

TILE = 256
WEB_MERCATOR_HALF = 20037508.342789244  # metres from the centre to the edge of the XYZ grid


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
