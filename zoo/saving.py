"""Saving a model with its metadata, the two replaced together, and loading them back with a
checksum check.

`NAME.keras` loads with plain `keras.saving.load_model`; `NAME.json` beside it records the
decoder config, threshold, metrics, data description, library versions and the sha256 of
the `.keras` file, so a server can refuse a corrupted or swapped model.

How a save replaces both files as one (a kill at any instant leaves the old pair or the new):

1. the model is written to a temporary file beside it, flushed to disk, and renamed to
   `.NAME.pending.keras`;
2. `NAME.json` is replaced (written aside, renamed over): the commit point. It now records
   the sha256 of the pending file, not of `NAME.keras`;
3. the pending file is renamed over `NAME.keras`.

`load` finishes a save killed between 2 and 3: when `NAME.keras` does not match the sha256
`NAME.json` records but the pending file does, the pending file becomes `NAME.keras`. Killed
before 2, the old pair still matches and the pending file is ignored. The next `save`
finishes or discards what an interrupted one left, and deletes its temporaries. Renames
within one folder are atomic, so no reader of either name ever sees half a file.

Why not one file (the metadata inside the .keras zip): the readers that bind an export to
this model (`zoo.runtimes`) and people read `NAME.json` by name, and a file cannot record its
own checksum. Saves to one path from two processes at once are not supported.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from pathlib import Path

import keras
import numpy
import tensorflow

# Importing these registers the custom objects a saved model may reference.
from zoo import blocks, keras_metrics, losses  # noqa: F401
from zoo.files import fsync_directory, write_json_atomic


class ModelIntegrityError(RuntimeError):
    """The model file does not match the checksum its metadata records."""


def metadata_path(model_path) -> Path:
    return Path(model_path).with_suffix(".json")


def pending_path(model_path) -> Path:
    """Where a save puts the new model until its metadata is in place (see the module doc)."""
    path = Path(model_path)
    return path.with_name(f".{path.stem}.pending{path.suffix}")


def save(model: keras.Model, path, metadata: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _committed_file(path)  # completes a save killed after its commit point
    remove_leftovers(path)
    digest = _write_pending(model, path)
    full = {**metadata, "model_file": path.name, "sha256": digest, "versions": versions()}
    write_json_atomic(metadata_path(path), full)  # the commit point
    os.replace(pending_path(path), path)
    fsync_directory(path.parent)
    return path


def _write_pending(model: keras.Model, path: Path) -> str:
    """The model written to `pending_path(path)`, durably; its sha256."""
    fd, staged = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        model.save(staged)
        with open(staged, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(staged, 0o644)  # mkstemp makes 0600; a model is meant to be read by others
        digest = sha256_of(staged)
        os.replace(staged, pending_path(path))
    finally:
        Path(staged).unlink(missing_ok=True)  # a no-op after the rename
    return digest


def remove_leftovers(path) -> list[Path]:
    """Delete the temporaries a killed save of `path` left (`.NAME.keras.*`, `.NAME.json.*`
    and a pending model the metadata does not name); the paths deleted."""
    path = Path(path)
    found = [*path.parent.glob(f".{path.name}.*"), *path.parent.glob(f".{metadata_path(path).name}.*")]
    pending = pending_path(path)
    if pending.is_file():
        found.append(pending)  # after _committed_file, it is never the committed model
    for leftover in found:
        leftover.unlink(missing_ok=True)
    return found


def _committed_file(path: Path) -> Path:
    """The file holding the model that `path`'s metadata describes (the committed one): `path`,
    once a save killed after its commit point is completed here by renaming its pending file
    into place, or the pending file itself when the folder is read-only."""
    pending = pending_path(path)
    meta_file = metadata_path(path)
    if not pending.is_file() or not meta_file.is_file():
        return path
    recorded = json.loads(meta_file.read_text()).get("sha256")
    if not recorded or (path.is_file() and sha256_of(path) == recorded):
        return path
    if sha256_of(pending) != recorded:
        return path
    try:
        os.replace(pending, path)
    except FileNotFoundError:
        pass  # another process finished it first
    except OSError:
        return pending  # a read-only folder: read the committed model where it is
    return path


def load(path, verify: bool = True) -> tuple[keras.Model, dict]:
    path = Path(path)
    source = _committed_file(path)
    if not source.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    meta_file = metadata_path(path)
    metadata = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    if verify and metadata.get("sha256"):
        actual = sha256_of(source)
        if actual != metadata["sha256"]:
            raise ModelIntegrityError(
                f"{path} has sha256 {actual[:12]}..., but {meta_file.name} records "
                f"{metadata['sha256'][:12]}...: the file is corrupted or not the model described"
            )
    try:
        model = keras.saving.load_model(source, compile=False)
    except Exception as error:
        raise ModelIntegrityError(f"{path} is not a loadable Keras model: {error}") from error
    return model, metadata


def sha256_of(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def versions() -> dict:
    return {
        "python": platform.python_version(),
        "keras": keras.__version__,
        "tensorflow": tensorflow.__version__,
        "numpy": numpy.__version__,
        "backend": keras.backend.backend(),
    }
