"""The runtimes a saved model can be served through, and where `zoo.export` puts their files.

Each runtime gives a `forward(batch) -> logits` (float32 N x H x W x 3 RGB 0..255 in, N x H x
W x 1 logits out, any H and W) that `zoo.predict.Segmenter(forward=...)` runs in place of the
Keras model, so padding, overlap-tiles, scales and test-time views stay one implementation.
`keras` runs the `.keras` file itself; the others run the artifacts `python -m zoo.export`
writes into `NAME.export/` beside `NAME.keras`, with `export.json` recording what they were
made from, their checksums, the threshold, scales and views, and how closely each matched
the Keras model. No TensorFlow import here unless the runtime needs it, so a server on ONNX
Runtime or LiteRT starts in a second and never loads TensorFlow.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import threading
from pathlib import Path

import numpy as np

# Fastest first on the 2-core CPU of results/bench.md ("Serving runtimes"): `auto` serves the
# first whose export is present and current. Every one of them passed the parity check.
RUNTIMES = ("tflite", "onnx", "savedmodel", "keras")
AUTO = "auto"
EXPORTED = {"savedmodel": "saved_model", "onnx": "model.onnx", "tflite": "model.tflite"}
SIDECAR = "export.json"
MAKE_EXPORT = "python -m zoo.export"


class ExportUnavailable(RuntimeError):
    """No usable artifact for a runtime: missing, corrupted, or made from another model."""


def export_dir(model_path) -> Path:
    """Where `zoo.export` writes a model's artifacts by default: NAME.export/ beside NAME.keras."""
    path = Path(model_path)
    return path.with_name(f"{path.stem}.export")


def file_sha256(path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def tree_sha256(path) -> str:
    """sha256 of a file, or of a folder's files (relative names and contents, in name order)."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(item.relative_to(path).as_posix().encode() + b"\0")
        digest.update(file_sha256(item).encode())
    return digest.hexdigest()


def read_export(model_path, runtime: str, directory=None) -> dict:
    """The sidecar of `runtime`'s artifact for `model_path`, after checking that the artifact is
    there, matches its checksum, and was made from this very model file and metadata."""
    directory = Path(directory or export_dir(model_path))
    sidecar_path = directory / SIDECAR
    redo = f"run `{MAKE_EXPORT} --model {model_path}`"
    if not sidecar_path.is_file():
        raise ExportUnavailable(f"no export at {directory} ({SIDECAR} missing); {redo}")
    sidecar = json.loads(sidecar_path.read_text())
    entry = sidecar.get("artifacts", {}).get(runtime)
    if entry is None:
        raise ExportUnavailable(
            f"{sidecar_path} lists no {runtime} artifact "
            f"(it has: {', '.join(sidecar.get('artifacts', {})) or 'none'}); {redo}"
        )
    artifact = directory / entry["path"]
    if not artifact.exists() or tree_sha256(artifact) != entry["sha256"]:
        raise ExportUnavailable(
            f"{artifact} is missing or does not match the sha256 in {sidecar_path}; {redo}"
        )
    stale = _staleness(Path(model_path), sidecar)
    if stale:
        raise ExportUnavailable(f"the export in {directory} is out of date: {stale}; {redo}")
    return sidecar


def _staleness(model_path: Path, sidecar: dict) -> str | None:
    source = sidecar["source"]
    if not model_path.is_file():
        return f"{model_path} does not exist"
    if file_sha256(model_path) != source["sha256"]:
        return f"{model_path} has changed since (sha256)"
    metadata_file = model_path.with_name(source["metadata_file"]) if source.get("metadata_file") else None
    current = json.loads(metadata_file.read_text()) if metadata_file and metadata_file.is_file() else {}
    if current != sidecar["metadata"]:
        changed = source.get("metadata_file") or "its metadata"
        return f"{changed} has changed since (threshold, scales or other metadata)"
    return None


def forward_for(runtime: str, artifact, threads: int | None = None):
    """The forward pass of an exported artifact (a file or the SavedModel folder)."""
    if runtime == "tflite":
        return LiteRTForward(artifact, threads)
    if runtime == "onnx":
        return OnnxForward(artifact, threads)
    if runtime == "savedmodel":
        return SavedModelForward(artifact)
    raise ValueError(f"runtime must be one of {', '.join(EXPORTED)} for an artifact, got {runtime!r}")


class OnnxForward:
    """ONNX Runtime on the CPU; its sessions take any input shape and are safe across threads."""

    def __init__(self, path, threads: int | None = None):
        import onnxruntime

        onnxruntime.set_default_logger_severity(3)  # tf2onnx's nearest resize warns at each load
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        # Idle threads spinning for work doubled the CPU time of a call on a busy 2-core
        # machine (95 ms against 58 ms per 256 px forward, measured), for no gain in latency.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: np.ascontiguousarray(batch, np.float32)})[0]


class LiteRTForward:
    """LiteRT (TFLite) with its XNNPACK CPU delegate, one interpreter per input shape.

    Resizing an interpreter's input re-plans the whole graph: switching between the three
    shapes of a multi-scale 256 px request cost ~130 ms a request, more than the forward
    passes themselves (measured). So each shape keeps its own interpreter, the `keep` most
    recently used of them; the largest, 8 tiles of 512 px, holds ~0.5 GB of activations."""

    def __init__(self, path, threads: int | None = None, keep: int = 6):
        self.content = Path(path).read_bytes()
        self.threads = threads or os.cpu_count() or 1
        self.keep = keep
        self._interpreters: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()  # an interpreter is not safe across threads

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, np.float32)
        with self._lock:
            interpreter, source, target = self._for_shape(batch.shape)
            interpreter.set_tensor(source, batch)
            interpreter.invoke()
            return interpreter.get_tensor(target)  # a copy, safe after the lock

    def _for_shape(self, shape):
        if shape in self._interpreters:
            self._interpreters.move_to_end(shape)
            return self._interpreters[shape]
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_content=self.content, num_threads=self.threads)
        source = interpreter.get_input_details()[0]["index"]
        interpreter.resize_tensor_input(source, list(shape), strict=False)
        interpreter.allocate_tensors()
        target = interpreter.get_output_details()[0]["index"]
        self._interpreters[shape] = (interpreter, source, target)
        while len(self._interpreters) > self.keep:
            self._interpreters.popitem(last=False)
        return self._interpreters[shape]


class SavedModelForward:
    """The TensorFlow SavedModel's `serve` endpoint (what `keras.Model.export` writes)."""

    def __init__(self, path):
        import tensorflow as tf

        self._tf = tf
        self.loaded = tf.saved_model.load(str(path))  # the endpoint alone would lose its variables

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.loaded.serve(self._tf.constant(batch, self._tf.float32)).numpy()
