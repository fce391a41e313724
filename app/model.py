"""Which model the app serves, and loading it so that a missing or corrupted file is refused.

The default is the model `ablations` selected: `results/decoder_variants/best/model.keras`,
unless `results/MODEL` exists, in which case it holds a path relative to `results/`.
`$ZOO_MODEL` overrides both (used by `app.wsgi` and `python -m app`).
This module imports zoo's Keras code only inside `load_segmenter`, so a missing model is
reported in a fraction of a second instead of after TensorFlow's import.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from zoo.served import DEFAULT_MODEL, POINTER, served_model_path

RESULTS = Path(__file__).resolve().parent.parent / "results"
ENV = "ZOO_MODEL"
MAKE_ONE = "python -m ablations.run decoder_variants"


class ModelUnavailable(RuntimeError):
    """No servable model: missing, unreadable or not matching its recorded checksum."""


def default_model_path(results: Path = RESULTS) -> Path:
    return served_model_path(results)


def resolve_model_path(explicit=None, results: Path = RESULTS) -> Path:
    return Path(explicit or os.environ.get(ENV) or default_model_path(results))


def load_segmenter(path):
    """A `zoo.predict.Segmenter` for `path`, or `ModelUnavailable` with a message to act on."""
    path = Path(path)
    if not path.is_file():
        raise ModelUnavailable(
            f"no model file at {path}. Make one with `{MAKE_ONE}` (it writes "
            f"results/{DEFAULT_MODEL.as_posix()}; results/{POINTER}, when present, names the "
            "served model instead, and the README's 'Serving' section gives the commands that "
            f"make it), or pass --model PATH / set ${ENV}.")
    from zoo import saving
    from zoo.predict import Segmenter

    if not saving.metadata_path(path).is_file():
        print(f"warning: {path} has no {saving.metadata_path(path).name} beside it, so its "
              "checksum cannot be verified", file=sys.stderr)
    try:
        return Segmenter.from_file(path, verify=True)
    except saving.ModelIntegrityError as error:
        raise ModelUnavailable(f"refusing to serve {path}: {error}. Re-create it with "
                               f"`{MAKE_ONE}` or restore the original file.") from None


def load_for_serving(path):
    """`load_segmenter`, then one small prediction and a frozen heap, for a server process.

    The warm-up traces the model's graph before any request thread exists, so the first
    user does not wait for it. The freeze moves every object alive then (TensorFlow, Keras,
    the model: ~400k) out of the garbage collector's view: parsing a JSON image allocates
    ~H*W lists, which triggers full collections, and with those objects tracked the JSON parse
    of a 256 x 256 image took 145 ms instead of 30 ms (measured)."""
    import gc

    import numpy as np

    segmenter = load_segmenter(path)
    segmenter.predict(np.zeros((64, 64, 3), np.uint8))
    gc.collect()
    gc.freeze()
    return segmenter


def model_name(segmenter) -> str:
    return str(segmenter.metadata.get("name") or segmenter.model.name)
