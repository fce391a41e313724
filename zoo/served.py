"""Which saved model a results folder serves. No Keras import: the app asks this before
loading anything, so a missing model is reported at once.

`results/MODEL`, when present, holds the served model's path relative to `results/`
(`python -m training.fit` points it at `final/model.keras`, the model it fits; it may also be
written by hand); without that file the served model is `results/final/model.keras`.
"""

from __future__ import annotations

import os
from pathlib import Path

POINTER = "MODEL"
DEFAULT_MODEL = Path("final") / "model.keras"  # what python -m training.fit writes
ENV = "ZOO_MODEL"  # overrides the pointer: the app, its WSGI entry and zoo.export read it


def served_model_path(results="results") -> Path:
    pointer = Path(results) / POINTER
    if pointer.is_file():
        return Path(results) / pointer.read_text().strip()
    return Path(results) / DEFAULT_MODEL


def resolve_model_path(explicit=None, results="results") -> Path:
    """`explicit`, else $ZOO_MODEL, else the served model of `results`."""
    return Path(explicit or os.environ.get(ENV) or served_model_path(results))
