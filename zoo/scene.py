"""A scene's probabilities band by band, top to bottom, while its pixels are still being read:
`zoo.predict.Segmenter.probabilities` cut along the rows its overlap-tiles already produce.

`Segmenter` predicts an image larger than its tile in overlapping tiles on a fixed grid (each
scale on its own grid, over the image resized by that scale), and keeps each tile's centre.
A row of tiles therefore finishes a band of rows for good. `probability_bands` runs the same
grids row of tiles by row of tiles, over the same reflect-padded canvas (as row and column
indices into the image, so no padded copy is made), and yields each band as soon as every
scale has finished it: the tiles' inputs, the tiles and the kept centres are the Segmenter's,
so the bands put together are its probabilities (to the bit where a scale halves the image
exactly; where it does not, the banded resize back differs by float rounding, ~1e-5). A
reader fills the image (`RowSource`) in another thread meanwhile, and whatever comes after the
probabilities (threshold, outlines) can work on one band while the network runs the next.

A scale other than 1 starts once the image is whole (`RowSource.finish` resizes it, in the
reader's thread): its tiles cover twice the rows of scale 1's, and the first band waits for
its first row of tiles.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from zoo.predict import TTA_VIEWS, Segmenter, reflect_pad, resize, round_up, scaled_size


class RowSource:
    """An H x W x 3 uint8 image that one thread fills top to bottom (`filled`, then `finish`)
    while another reads the rows already there (`wait`)."""

    def __init__(self, height: int, width: int):
        self.image = np.empty((height, width, 3), np.uint8)
        self._rows = 0
        self._scaled: dict[float, np.ndarray] | None = None
        self._error: BaseException | None = None
        self._changed = threading.Condition()

    @classmethod
    def of(cls, image: np.ndarray, scales=(1.0,)) -> "RowSource":
        """A source already whole."""
        source = cls(0, 0)
        source.image = image
        source.finish(scales)
        return source

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape[:2]

    def filled(self, rows: int) -> None:
        """Rows [0, rows) are in place."""
        with self._changed:
            self._rows = rows
            self._changed.notify_all()

    def finish(self, scales) -> None:
        """Every row is in place: the image resized by each scale other than 1, for its tiles."""
        height, width = self.shape
        scaled = {
            scale: resize(self.image, *scaled_size(height, width, scale)) for scale in scales if scale != 1.0
        }
        with self._changed:
            self._rows, self._scaled = height, scaled
            self._changed.notify_all()

    def failed(self, error: BaseException) -> None:
        """The reader gave up: every wait raises `error`."""
        with self._changed:
            self._error = error
            self._changed.notify_all()

    def wait(self, rows: int) -> np.ndarray:
        """The image, once rows [0, rows) are in place."""
        self._wait_for(lambda: self._rows >= rows)
        return self.image

    def scaled(self, scale: float) -> np.ndarray:
        """The whole image resized by `scale` (scaled_size), once `finish` has made it."""
        if scale == 1.0:
            return self.wait(self.shape[0])
        self._wait_for(lambda: self._scaled is not None)
        return self._scaled[scale]

    def _wait_for(self, ready: Callable[[], bool]) -> None:
        with self._changed:
            while not ready() and self._error is None:
                self._changed.wait()
            if self._error is not None:
                raise self._error


@dataclass
class _Scale:
    """One scale's grid of tiles over its (virtual) canvas, and what it has finished."""

    scale: float
    height: int  # of the image at this scale
    width: int
    rows: np.ndarray | None  # canvas row -> image row (None: the image goes whole, untiled)
    columns: np.ndarray | None
    origins: list[int]  # canvas rows where each row of tiles starts
    probabilities: np.ndarray  # at this scale, filled row of tiles by row of tiles
    done: int = 0  # rows of `probabilities` finished
    next: int = 0  # the next row of tiles

    @property
    def finished(self) -> bool:
        return self.done >= self.height


def _grid(segmenter: Segmenter, scale: float, height: int, width: int) -> _Scale:
    """The rows and columns `Segmenter._tiled` pads an image of this size to, as indices."""
    if scale != 1.0:
        height, width = scaled_size(height, width, scale)
    probabilities = np.zeros((height, width), np.float32)
    tile, step, margin = segmenter.tile, segmenter.tile - segmenter.overlap, segmenter.overlap // 2
    if max(height, width) <= tile:
        return _Scale(scale, height, width, None, None, [0], probabilities)
    rows, columns = (_canvas(size, tile, step, margin) for size in (height, width))
    origins = list(range(0, len(rows) - tile + 1, step))
    return _Scale(scale, height, width, rows, columns, origins, probabilities)


def _canvas(size: int, tile: int, step: int, margin: int) -> np.ndarray:
    """Image index of each canvas index: `Segmenter._tiled`'s two reflect pads, applied to the
    indices (the same np.pad, so the same reflections, however far they reach)."""
    indices = np.pad(np.arange(size), (margin, margin), mode="symmetric")
    covered = _cover(len(indices), tile, step)
    return np.pad(indices, (0, covered - len(indices)), mode="symmetric")


def _cover(size: int, tile: int, step: int) -> int:
    return tile if size <= tile else tile + round_up(size - tile, step)


def network_pixels(segmenter: Segmenter, height: int, width: int) -> int:
    """Pixels the network takes in for an image of this size, every scale and view: the work
    that `probability_bands` reports back row of tiles by row of tiles."""
    total = 0
    for scale in segmenter.scales:
        grid = _grid(segmenter, scale, height, width)
        if grid.rows is None:
            total += round_up(grid.height) * round_up(grid.width)
        else:
            total += len(grid.origins) * _tiles_across(segmenter, grid) * segmenter.tile**2
    return total * len(_views(segmenter))


def _tiles_across(segmenter: Segmenter, grid: _Scale) -> int:
    return (len(grid.columns) - segmenter.tile) // (segmenter.tile - segmenter.overlap) + 1


def _views(segmenter: Segmenter):
    return TTA_VIEWS[segmenter.tta]


def probability_bands(
    segmenter, source: RowSource, on_work: Callable[[int], None] | None = None
) -> Iterator[tuple[int, int, np.ndarray]]:
    """(first row, end row, float32 probabilities of those rows, every column) of the image
    `source` holds, top to bottom, as the network finishes them. `on_work(pixels)` is told
    the network's input after each row of tiles (`network_pixels` is the sum).

    Anything that is not a `zoo.predict.Segmenter` (a stand-in with `probabilities(image)`)
    gives one band, once the image is whole."""
    height, width = source.shape
    if not isinstance(segmenter, Segmenter):
        yield 0, height, segmenter.probabilities(source.wait(height))
        return
    grids = [_grid(segmenter, scale, height, width) for scale in segmenter.scales]
    views = len(_views(segmenter))
    sent = 0
    while sent < height:
        # The scale furthest behind (in the image's rows) runs its next row of tiles.
        grid = min((g for g in grids if not g.finished), key=lambda g: _final_rows(g, height))
        pixels = _run_tile_row(segmenter, source, grid)
        if on_work is not None:
            on_work(pixels * views)
        ready = min(_final_rows(g, height) for g in grids)
        if ready > sent:
            bands = [_band(g, sent, ready, height, width) for g in grids]
            yield sent, ready, bands[0] if len(bands) == 1 else np.mean(bands, axis=0)
            sent = ready


def _run_tile_row(segmenter: Segmenter, source: RowSource, grid: _Scale) -> int:
    """One more row of tiles of `grid` (or its whole image): the network's input pixels.

    Each tile goes through the Segmenter's own `_forward` (test-time views, sigmoid), one tile
    a call: one input shape, so LiteRT plans one interpreter, of one tile's activations rather
    than `batch_size`'s; a tile's result does not depend on its batch (LiteRT and ONNX Runtime:
    the same bits, measured)."""
    tile, step, margin = segmenter.tile, segmenter.tile - segmenter.overlap, segmenter.overlap // 2
    if grid.rows is None:
        image = source.scaled(grid.scale)
        padded = reflect_pad(image, round_up(grid.height), round_up(grid.width))
        grid.probabilities[:] = segmenter._forward(padded[None])[0, : grid.height, : grid.width]
        grid.done, grid.next = grid.height, 1
        return padded.shape[0] * padded.shape[1]
    y = grid.origins[grid.next]
    rows = grid.rows[y : y + tile]
    image = source.wait(int(rows.max()) + 1) if grid.scale == 1.0 else source.scaled(grid.scale)
    band = image[_as_slice(rows)]
    kept = slice(y, min(y + step, grid.height))  # image rows this row of tiles finishes
    xs = [index * step for index in range(_tiles_across(segmenter, grid))]

    for x in xs:
        probabilities = segmenter._forward(band[None, :, _as_slice(grid.columns[x : x + tile])])[0]
        columns = slice(x, min(x + step, grid.width))
        grid.probabilities[kept, columns] = probabilities[
            margin : margin + kept.stop - kept.start, margin : margin + columns.stop - columns.start
        ]
    grid.done, grid.next = kept.stop, grid.next + 1
    return tile * tile * len(xs)


def _as_slice(indices: np.ndarray):
    """A run of consecutive indices as a slice (a view, no copy), else the indices themselves
    (where the reflect padding turns back)."""
    if indices[-1] - indices[0] == len(indices) - 1 and np.all(np.diff(indices) == 1):
        return slice(int(indices[0]), int(indices[-1]) + 1)
    return indices


def _final_rows(grid: _Scale, height: int) -> int:
    """Rows of the image (at scale 1) that `grid`'s finished rows determine completely: its
    own at scale 1, else those whose bilinear resize back reads only finished rows."""
    if grid.finished:
        return height
    if grid.scale == 1.0:
        return grid.done
    ratio, support = grid.height / height, max(1.0, grid.height / height)
    rows = int(grid.done / ratio)
    while rows > 0 and _last_read(rows, ratio, support) > grid.done:
        rows -= 1
    return rows


def _last_read(rows: int, ratio: float, support: float) -> int:
    """The end of the source rows Pillow's bilinear resize reads for output rows [0, rows)."""
    centre = (rows - 0.5) * ratio
    return int(centre + support + 0.5)


def _band(grid: _Scale, first: int, end: int, height: int, width: int) -> np.ndarray:
    """Rows [first, end) of `grid`'s probabilities resized to the image: `resize` of the
    whole map, cut (Pillow's `box` places the rows exactly where the whole resize puts them)."""
    if grid.scale == 1.0:
        return grid.probabilities[first:end]
    ratio, support = grid.height / height, max(1.0, grid.height / height)
    low = max(0, int((first + 0.5) * ratio - support + 0.5) - 1)
    high = min(grid.height, _last_read(end, ratio, support) + 1)
    picture = Image.fromarray(grid.probabilities[low:high])
    # end * ratio may round past the map's last row where the scale does not divide the size
    top, bottom = first * ratio - low, (grid.height if end == height else end * ratio) - low
    box = (0.0, top, float(grid.width), min(bottom, float(high - low)))
    return np.asarray(picture.resize((width, end - first), Image.BILINEAR, box=box), np.float32)
