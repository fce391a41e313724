"""Which model the app serves, through which runtime, and loading it so that a missing,
corrupted or stale file is refused.

The served model is the one `results/MODEL` names, relative to `results/`: `final/model.keras`,
which `python -m training.fit` (the README's main job) fits on every city and points it at;
without that file, `results/final/model.keras` (`zoo.served`). `--model` and `$ZOO_MODEL`
override both (`python -m app`, `app.wsgi`). A clone has no model file: the refusal names
`MAKE_ONE`, the command that makes it.

The runtime (`zoo.runtimes`) is `keras` (the `.keras` file itself), `tflite`, `onnx` or
`savedmodel` (the artifacts `python -m zoo.export` writes beside it), or `auto`, the servers'
default: the fastest runtime whose export is present and made from this very model file and
metadata, else `keras`, with a note saying why. Every runtime gives the Keras model's masks
(tests/test_export.py; the tolerance is in zoo/export.py).
This module imports zoo's Keras code only for the `keras` and `savedmodel` runtimes, so a
missing model is reported in a fraction of a second, and a LiteRT or ONNX server never loads
TensorFlow.
"""

from __future__ import annotations

import sys
from pathlib import Path

from zoo import runtimes
from zoo.predict import TTA_CHOICES, TTA_FROM_MODEL
from zoo.served import DEFAULT_MODEL, ENV, POINTER, served_model_path
from zoo.served import resolve_model_path as _resolve

RESULTS = Path(__file__).resolve().parent.parent / "results"
RUNTIME_ENV = "ZOO_RUNTIME"
RUNTIME_CHOICES = (runtimes.AUTO, *runtimes.RUNTIMES)
# Test-time views (zoo.predict.TTA_CHOICES) that override the model's: each view is one more
# pass of the network a request (results/bench.md measures every set).
TTA_ENV = "ZOO_TTA"
# Seconds a GeoJSON request may take (app.BUDGET_S by default), for both servers.
BUDGET_ENV = "ZOO_BUDGET_S"
# The one command that makes the served model, from the repository root with ../shared beside it
# (the README's main job), and a smoke model for a quick look (synthetic scenes, meaningless).
MAKE_ONE = "python -m training.fit --data ../shared/data/oam_buildings"
MAKE_ONE_TIME = "about 4 minutes on 2 CPU cores"
SMOKE_DIR = "/tmp/smoke/final"
MAKE_SMOKE = f"python -m training.fit --budget smoke --curve --curve-epochs 2 --out {SMOKE_DIR}"


class ModelUnavailable(RuntimeError):
    """No servable model: missing, unreadable, not matching its checksum, or not exported."""


def default_model_path(results: Path = RESULTS) -> Path:
    return served_model_path(results)


def resolve_model_path(explicit=None, results: Path = RESULTS) -> Path:
    return _resolve(explicit, results)


def load_segmenter(path, runtime: str = "keras"):
    """A `zoo.predict.Segmenter` for `path` through `runtime`, or `ModelUnavailable` with a
    message to act on."""
    path = Path(path)
    if runtime not in RUNTIME_CHOICES:
        raise ModelUnavailable(f"runtime must be one of {', '.join(RUNTIME_CHOICES)}, got {runtime!r}")
    if not path.is_file():
        raise ModelUnavailable(
            f"no model file at {path}. Make the served model with `{MAKE_ONE}` ({MAKE_ONE_TIME}; "
            f"it writes results/{DEFAULT_MODEL.as_posix()} and points results/{POINTER} at it), "
            f"or for a quick look a smoke model trained on synthetic scenes with `{MAKE_SMOKE}` "
            f"(a minute or two) and serve it with `python -m app --model {SMOKE_DIR}/model.keras`; "
            f"or pass --model PATH / set ${ENV}."
        )
    if runtime == runtimes.AUTO:
        return _fastest_available(path)
    if runtime == "keras":
        return _keras(path)
    try:
        return _exported(path, runtime)
    except runtimes.ExportUnavailable as error:
        raise ModelUnavailable(f"cannot serve {path} through {runtime}: {error}") from None


def _fastest_available(path: Path):
    reasons = []
    for runtime in runtimes.RUNTIMES:
        if runtime == "keras":
            break
        try:
            return _exported(path, runtime)
        except runtimes.ExportUnavailable as error:
            reasons.append(str(error))
    print(f"note: serving through keras, the slowest runtime: {reasons[0]}", file=sys.stderr)
    return _keras(path)


def _keras(path: Path):
    from zoo import saving
    from zoo.predict import Segmenter

    if not saving.metadata_path(path).is_file():
        print(
            f"warning: {path} has no {saving.metadata_path(path).name} beside it, so its "
            "checksum cannot be verified",
            file=sys.stderr,
        )
    try:
        segmenter = Segmenter.from_file(path, verify=True)
    except saving.ModelIntegrityError as error:
        raise ModelUnavailable(
            f"refusing to serve {path}: {error}. Re-create it with `{MAKE_ONE}` or restore the original file."
        ) from None
    segmenter.metadata = {**segmenter.metadata, "serving": {"runtime": "keras", "name": segmenter.model.name}}
    return segmenter


def _exported(path: Path, runtime: str):
    from zoo.predict import Segmenter, options_from

    sidecar = runtimes.read_export(path, runtime)
    entry = sidecar["artifacts"][runtime]
    artifact = runtimes.export_dir(path) / entry["path"]
    metadata = {
        **sidecar["metadata"],
        "serving": {
            "runtime": runtime,
            "name": sidecar["name"],
            "artifact": str(artifact),
            "max_abs_logit_diff": entry["max_abs_logit_diff"],
        },
    }
    return Segmenter(
        None,
        metadata=metadata,
        forward=runtimes.forward_for(runtime, artifact),
        **options_from(sidecar["metadata"]),
    )


def load_for_serving(path, runtime: str = runtimes.AUTO, tta: str = TTA_FROM_MODEL):
    """`load_segmenter` with its test-time views overridden unless `tta` is "model", then one
    prediction per shape a request will use, and a frozen heap, for a server process.

    The warm-up traces the Keras graph, or builds the LiteRT interpreters of the common shapes,
    before any request thread exists, so the first user does not wait for it. The freeze
    moves every object alive then (TensorFlow, Keras, the model: ~400k) out of the garbage
    collector's view: parsing a JSON image allocates ~H*W lists, which triggers full
    collections, and with those objects tracked the JSON parse of a 256 x 256 image took
    145 ms instead of 30 ms (measured)."""
    import gc

    import numpy as np

    check_tta(tta)  # before seconds of loading, as a bad $ZOO_TTA passes argparse unchecked
    segmenter = override_tta(load_segmenter(path, runtime), tta)
    segmenter.predict(np.zeros((256, 256, 3), np.uint8))
    gc.collect()
    gc.freeze()
    return segmenter


def override_tta(segmenter, tta: str):
    """`segmenter` applying the test-time views `tta` instead of its model's, recorded under
    "serving" (GET /model) with the model's own choice beside it."""
    check_tta(tta)
    if tta == TTA_FROM_MODEL:
        return segmenter
    serving = {**(segmenter.metadata.get("serving") or {}), "tta_of_model": segmenter.tta}
    segmenter.metadata = {**segmenter.metadata, "serving": serving}
    segmenter.tta = tta
    return segmenter


def check_tta(tta: str) -> None:
    if tta not in TTA_CHOICES:
        raise ModelUnavailable(f"tta must be one of {', '.join(TTA_CHOICES)}, got {tta!r}")


def model_name(segmenter) -> str:
    serving = segmenter.metadata.get("serving") or {}
    return str(segmenter.metadata.get("name") or serving.get("name") or segmenter.model.name)


def runtime_of(segmenter) -> str:
    return (segmenter.metadata.get("serving") or {}).get("runtime", "keras")
