"""What `python -m app.predict` runs at once: a thread reading the image (`Reader`), the network
in the caller's thread (`zoo.scene.probability_bands`), a thread outlining each band the
network has finished (`Outliner`), and a progress line; a scene larger than one window is cut
into `Part`s (`parts_of`), each read with a margin of its neighbours for context. GDAL, LiteRT
and ONNX Runtime let go of the GIL while they work, so the three overlap.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.inputs import InputError
from zoo.polygons import SceneOutlines
from zoo.predict import Segmenter
from zoo.scene import RowSource, network_pixels, probability_bands

READ_ROWS = 256  # rows a read of the reader thread: the network starts on the first ones
BANDS_AHEAD = 4  # bands of rows waiting for the outlines: memory, not speed, bounds it
PROGRESS_EVERY_S = 5.0  # a progress line at most this often (on a terminal: one, rewritten)


@dataclass(frozen=True)
class Part:
    """A window of the scene: the core it predicts (row, col, rows, cols) and the pixels it
    reads around it for context (top, left, bottom, right), in scene pixels."""

    row: int
    col: int
    rows: int
    cols: int
    top: int
    left: int
    bottom: int
    right: int

    @property
    def size(self) -> tuple[int, int]:
        return self.bottom - self.top, self.right - self.left


@dataclass
class Profile:
    """Where a run's seconds went (`--profile` prints it): each thread's busy time, and what the
    network's thread could not hide behind its own work."""

    start: float = 0.0  # the process started: Python and the imports, up to the command's first line
    load: float = 0.0  # the model (and its runtime) loaded
    read: float = 0.0  # reader thread: GDAL reads, checks, the image resized for other scales
    network: float = 0.0  # this thread: rows of tiles, thresholds, bands handed on
    waited: float = 0.0  # this thread, blocked: the outlines BANDS_AHEAD bands behind
    outlines: float = 0.0  # outline thread: tracing and simplifying each band's buildings
    tail: float = 0.0  # the outlines still running once the network was done
    join: float = 0.0  # buildings cut by a band or a part joined, GeoJSON made (lon/lat, m²)
    write: float = 0.0  # GeoJSON (and mask) written

    def line(self, total: float) -> str:
        parts = ", ".join(f"{field} {getattr(self, field):.2f}" for field in self.__dataclass_fields__)
        return f"profile (s; read and outlines run beside the network): {parts}; total {total:.2f}"


def parts_of(height: int, width: int, window: int) -> list[Part]:
    """One part when the scene fits the window, else cores of (window - 2 margin) px, each read
    with `margin` = window / 16 px of its neighbours, row by row."""
    if max(height, width) <= window:
        return [Part(0, 0, height, width, 0, 0, height, width)]
    margin = window // 16
    core = window - 2 * margin
    parts = []
    for row in range(0, height, core):
        for col in range(0, width, core):
            rows, cols = min(core, height - row), min(core, width - col)
            top, left = max(0, row - margin), max(0, col - margin)
            bottom, right = min(height, row + rows + margin), min(width, col + cols + margin)
            parts.append(Part(row, col, rows, cols, top, left, bottom, right))
    return parts


def outline_parts(
    segmenter, parts, sources, scene: SceneOutlines, keep_mask: bool, profile: Profile, meter=None
):
    """The scene's mask (None without `keep_mask`), its parts coming from `sources` as they are
    read: the network runs in this thread, and `scene` outlines each finished band in another
    (`scene.footprints()` then has every building)."""
    whole = np.zeros((scene.height, scene.width), np.uint8) if keep_mask else None
    outliner = Outliner(scene, profile)
    started = time.perf_counter()
    try:
        for part, source in zip(parts, sources):
            inner_top, inner_left = part.row - part.top, part.col - part.left
            columns = slice(inner_left, inner_left + part.cols)
            for first, end, probabilities in probability_bands(segmenter, source, meter and meter.add):
                first_kept, end_kept = max(first, inner_top), min(end, inner_top + part.rows)
                if first_kept >= end_kept:
                    continue
                kept = probabilities[first_kept - first : end_kept - first, columns]
                mask = (kept >= segmenter.threshold).astype(np.uint8)  # Segmenter.predict's rule
                row = part.top + first_kept
                outliner.add(mask, kept, row, part.col)
                if whole is not None:
                    whole[row : row + len(mask), part.col : part.col + part.cols] = mask
            if meter is not None:
                meter.part_done()
    finally:
        network_done = time.perf_counter()
        profile.network += network_done - started - outliner.blocked
        profile.waited += outliner.blocked
        outliner.finish()
        profile.tail += time.perf_counter() - network_done
        if meter is not None:
            meter.close()
    return whole


class Outliner:
    """`SceneOutlines.add` in a thread of its own, band by band, in the order given."""

    def __init__(self, scene: SceneOutlines, profile: Profile):
        self.scene, self.profile, self.blocked = scene, profile, 0.0
        self._bands: queue.Queue = queue.Queue(maxsize=BANDS_AHEAD)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="outlines", daemon=True)
        self._thread.start()

    def add(self, mask, probabilities, row: int, col: int) -> None:
        if self._error is not None:
            raise self._error
        started = time.perf_counter()
        self._bands.put((mask, probabilities, row, col))
        self.blocked += time.perf_counter() - started

    def finish(self) -> None:
        """Once the bands given so far are outlined."""
        self._bands.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while (band := self._bands.get()) is not None:
            if self._error is None:
                started = time.perf_counter()
                try:
                    self.scene.add(*band)
                except BaseException as error:  # noqa: BLE001 - handed to the network's thread
                    self._error = error
                self.profile.outlines += time.perf_counter() - started


class Reader:
    """Reads the parts of an open TIFF (a rasterio dataset named `name`) in a thread of its own,
    READ_ROWS rows a read, into a `RowSource` per part, at most two parts in memory (the one the
    network runs and the next)."""

    def __init__(self, dataset, name: str, bands: list[int], parts: list[Part], scales, window: int, profile):
        self.dataset, self.name, self.bands, self.parts = dataset, name, bands, parts
        self.scales, self.window, self.profile = scales, window, profile
        self._handed: queue.Queue = queue.Queue()
        self._slots = threading.Semaphore(2)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reader", daemon=True)
        self._thread.start()

    def sources(self):
        for index in range(len(self.parts)):
            if index:
                self._slots.release()  # the network is done with the part before
            yield self._handed.get()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        for part in self.parts:
            while not self._slots.acquire(timeout=0.1):
                if self._stopped.is_set():
                    return
            source = RowSource(*part.size)
            self._handed.put(source)
            started = time.perf_counter()
            try:
                self._read(part, source)
            except BaseException as error:  # noqa: BLE001 - raised where the part is used
                source.failed(_as_input_error(error, self.name))
                return
            finally:
                self.profile.read += time.perf_counter() - started

    def _read(self, part: Part, source: RowSource) -> None:
        from rasterio.windows import Window

        height, width = part.size
        for start in range(0, height, READ_ROWS):
            if self._stopped.is_set():
                raise InterruptedError("stopped")
            rows = min(READ_ROWS, height - start)
            pixels = self.dataset.read(self.bands, window=Window(part.left, part.top + start, width, rows))
            # 8-bit R, G, B or one gray band (app.inputs.tiff_bands checked): gray fills all three
            source.image[start : start + rows] = np.moveaxis(pixels, 0, -1)
            source.filled(start + rows)
        source.finish(self.scales)


def _as_input_error(error: BaseException, name: str) -> BaseException:
    if isinstance(error, (InputError, InterruptedError)):
        return error
    return InputError(f"file '{name}' could not be read ({str(error).splitlines()[0][:200]})")


class Progress:
    """A progress line on stderr for a scene of several parts: parts, share of the network's
    work done, its speed and the time left."""

    def __init__(self, segmenter, parts: list[Part]):
        self.parts, self.done_parts = len(parts), 0
        self.total = sum(_work(segmenter, *part.size) for part in parts)
        self.pixels = sum(part.rows * part.cols for part in parts)
        self.done, self.started, self.shown = 0, time.perf_counter(), 0.0
        self.terminal = sys.stderr.isatty()

    def add(self, pixels: int) -> None:
        self.done += pixels
        now = time.perf_counter()
        if now - self.shown >= (0.5 if self.terminal else PROGRESS_EVERY_S):
            self.shown = now
            self._show(now)

    def part_done(self) -> None:
        self.done_parts += 1

    def close(self) -> None:
        self._show(time.perf_counter())
        if self.terminal:
            print(file=sys.stderr)

    def _show(self, now: float) -> None:
        share, elapsed = self.done / max(self.total, 1), now - self.started
        left = f", about {elapsed / share - elapsed:.0f} s left" if 0 < share < 1 else ""
        line = (
            f"part {min(self.done_parts + 1, self.parts)}/{self.parts}: {share:.0%} of the network's work, "
            f"{share * self.pixels / max(elapsed, 1e-9) / 1e6:.2f} MP/s{left}"
        )
        print(
            f"\r{line}" if self.terminal else line,
            end="" if self.terminal else "\n",
            file=sys.stderr,
            flush=True,
        )


def _work(segmenter, height: int, width: int) -> int:
    return network_pixels(segmenter, height, width) if isinstance(segmenter, Segmenter) else height * width


def open_tiff(path: Path):
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    warnings.simplefilter("ignore", NotGeoreferencedWarning)  # reported in why_pixels
    return rasterio.open(path)
