"""Atomic file writes: a reader sees the old file or the new one, never half of one.

No TensorFlow or Keras import, so reports, benchmarks and the CLIs can write files cheaply.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed onto `path` when the block succeeds.

    `suffix` is for writers that insist on a file ending (".weights.h5", ".npy", ".png").
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be read by others
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)  # a no-op after the rename


def write_text_atomic(path, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())


def write_json_atomic(path, payload) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True, default=_jsonable))


def save_figure_atomic(figure, path, dpi: int = 110, bbox_inches: str | None = "tight") -> None:
    """A matplotlib figure written atomically to `path` (its suffix picks the format), then closed."""
    import matplotlib.pyplot as plt  # deferred: only the writers of figures need matplotlib

    try:
        with atomic_path(path, suffix=Path(path).suffix) as tmp:
            figure.savefig(tmp, dpi=dpi, bbox_inches=bbox_inches)
    finally:
        plt.close(figure)


def fsync_directory(path) -> None:
    """Make the renames done in folder `path` survive a power cut, not only a killed process."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
