"""Saving a model with its metadata, atomically, and loading it back with a checksum check.

`NAME.keras` loads with plain `keras.saving.load_model`; `NAME.json` beside it records the
decoder config, threshold, metrics, data description, library versions and the sha256 of
the `.keras` file, so a server can refuse a corrupted or swapped model.
"""
from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path

import keras

# Importing these registers the custom objects a saved model may reference.
from zoo import blocks, keras_metrics, losses  # noqa: F401
from zoo.files import atomic_path, write_json_atomic


class ModelIntegrityError(RuntimeError):
    """The model file does not match the checksum its metadata records."""


def metadata_path(model_path) -> Path:
    return Path(model_path).with_suffix(".json")


def save(model: keras.Model, path, metadata: dict) -> Path:
    path = Path(path)
    with atomic_path(path, suffix=path.suffix) as staged:
        model.save(staged)
        digest = sha256_of(staged)
    full = {**metadata, "model_file": path.name, "sha256": digest, "versions": versions()}
    write_json_atomic(metadata_path(path), full)
    return path


def load(path, verify: bool = True) -> tuple[keras.Model, dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    meta_file = metadata_path(path)
    metadata = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    if verify and metadata.get("sha256"):
        actual = sha256_of(path)
        if actual != metadata["sha256"]:
            raise ModelIntegrityError(
                f"{path} has sha256 {actual[:12]}..., but {meta_file.name} records "
                f"{metadata['sha256'][:12]}...: the file is corrupted or not the model described"
            )
    try:
        model = keras.saving.load_model(path, compile=False)
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
    import numpy
    import tensorflow

    return {"python": platform.python_version(), "keras": keras.__version__,
            "tensorflow": tensorflow.__version__, "numpy": numpy.__version__,
            "backend": keras.backend.backend()}

