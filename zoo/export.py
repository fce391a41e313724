"""`python -m zoo.export [--model PATH] [--out DIR] [--formats savedmodel,onnx,tflite]`: the
served model as a TensorFlow SavedModel, ONNX and LiteRT (TFLite) file, each checked against
the Keras model before it is written.

Every artifact takes float32 RGB 0..255 of any batch, height and width (N x H x W x 3; H and W
multiples of 32, as `zoo.predict` pads them) and gives logits N x H x W x 1, like the `.keras`
model. `export.json` beside them records the model file and metadata they came from (with
checksums, so a server refuses a stale export), the threshold, scales and test-time views
(also in the ONNX file's metadata_props), and each artifact's largest logit difference from
the Keras model on probe images of three shapes; an artifact over LOGIT_TOLERANCE is refused.

One rewrite before converting (`lowered`): Keras' nearest UpSampling2D repeats with reshapes
whose channel count is unknown once H and W are dynamic, and LiteRT has no builtin Conv2D for
an input of unknown channels ("TF Select ops: Conv2D"). A nearest 2x `tf.image.resize` is the
same operation with static channels: the rewritten model's logits equal the original's exactly.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from zoo import runtimes, saving  # noqa: E402
from zoo.files import write_json_atomic  # noqa: E402
from zoo.predict import options_from  # noqa: E402
from zoo.served import resolve_model_path  # noqa: E402

FORMATS = tuple(runtimes.EXPORTED)  # savedmodel, onnx, tflite
LOGIT_TOLERANCE = 1e-3  # measured: 1.5e-4 at most (LiteRT/XNNPACK), 0 for the SavedModel
PROBE_SHAPES = ((1, 256, 256), (2, 64, 96), (1, 32, 32))
ONNX_OPSET = 17


class ExportError(RuntimeError):
    """An artifact could not be made, or does not match the Keras model."""


@dataclasses.dataclass(frozen=True)
class ExportRequest:
    model: Path
    out: Path
    formats: tuple[str, ...] = FORMATS


def parse_args(argv=None) -> ExportRequest:
    parser = argparse.ArgumentParser(prog="python -m zoo.export", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        type=Path,
        help="a .keras file saved by zoo.saving (default: "
        "$ZOO_MODEL, else the one results/MODEL names, else results/final/model.keras)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="folder to write (default: NAME.export/ beside "
        "NAME.keras, where `python -m app --runtime` looks)",
    )
    parser.add_argument(
        "--formats",
        default=",".join(FORMATS),
        help=f"comma-separated, from {', '.join(FORMATS)} (default: all)",
    )
    args = parser.parse_args(argv)
    formats = tuple(name.strip() for name in args.formats.split(",") if name.strip())
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        parser.error(
            f"--formats: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(FORMATS)}"
        )
    model = resolve_model_path(args.model)
    return ExportRequest(model=model, out=args.out or runtimes.export_dir(model), formats=formats)


class NearestUpsample2x(keras.layers.Layer):
    """Nearest 2x upsampling by `tf.image.resize` (export only: see the module docstring)."""

    def call(self, x):
        import tensorflow as tf

        return tf.image.resize(x, tf.shape(x)[1:3] * 2, method="nearest")

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        return (b, None if h is None else 2 * h, None if w is None else 2 * w, c)


def _lower(layer):
    if (
        isinstance(layer, keras.layers.UpSampling2D)
        and layer.interpolation == "nearest"
        and tuple(layer.size) == (2, 2)
        and layer.data_format == "channels_last"
    ):
        return NearestUpsample2x(name=layer.name)
    return layer  # the same layer object: its weights are shared, not copied


def lowered(model: keras.Model) -> keras.Model:
    """`model` with every layer LiteRT cannot take dynamically replaced by its equivalent."""
    return keras.models.clone_model(model, clone_function=_lower, recursive=True)


def rewritten_layers(graph: keras.Model) -> list[str]:
    """Names of the layers `lowered` replaced, in nested models too."""

    def walk(layer):
        yield layer
        for inner in getattr(layer, "layers", []):
            yield from walk(inner)

    return [layer.name for layer in walk(graph) if isinstance(layer, NearestUpsample2x)]


def probe_batches(seed: int = 0) -> list[np.ndarray]:
    """RGB batches with structure at 8 px and at 1 px, of three shapes (batch, H, W differ)."""
    rng = np.random.default_rng(seed)
    batches = []
    for n, h, w in PROBE_SHAPES:
        coarse = rng.integers(0, 256, (n, h // 8, w // 8, 3)).repeat(8, 1).repeat(8, 2)
        batches.append((0.7 * coarse + 0.3 * rng.integers(0, 256, (n, h, w, 3))).astype(np.float32))
    return batches


def export(request: ExportRequest, log=print) -> dict:
    """Write the artifacts and export.json into `request.out` (replacing it whole); the sidecar."""
    model, metadata = saving.load(request.model, verify=True)
    graph = lowered(model)
    probes = probe_batches()
    reference = [keras.ops.convert_to_numpy(model(batch, training=False)) for batch in probes]
    request.out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=request.out.parent, prefix=f".{request.out.name}."))
    try:
        artifacts = {}
        for runtime in _in_build_order(request.formats):
            log(f"{runtime} ...")
            path = stage / runtimes.EXPORTED[runtime]
            WRITERS[runtime](graph, path, stage, metadata)
            artifacts[runtime] = _checked(runtime, path, probes, reference)
            log(
                f"{runtime}: {path.name}, largest logit difference from Keras "
                f"{artifacts[runtime]['max_abs_logit_diff']:.2e}"
            )
        for runtime in set(artifacts) - set(request.formats):  # a build step only: not kept
            shutil.rmtree(stage / runtimes.EXPORTED[runtime])
            del artifacts[runtime]
        sidecar = _sidecar(request, model, metadata, artifacts, rewritten_layers(graph))
        write_json_atomic(stage / runtimes.SIDECAR, sidecar)
        os.chmod(stage, 0o755)  # mkdtemp makes 0700
        _publish(stage, request.out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return sidecar


def _in_build_order(formats) -> list[str]:
    # LiteRT converts from the SavedModel, so that is written first whenever tflite is asked for.
    return [name for name in FORMATS if name in formats or (name == "savedmodel" and "tflite" in formats)]


def _write_savedmodel(graph, path: Path, stage: Path, metadata: dict) -> None:
    graph.export(path, format="tf_saved_model", verbose=False)


def _write_tflite(graph, path: Path, stage: Path, metadata: dict) -> None:
    path.write_bytes(float_tflite(stage / runtimes.EXPORTED["savedmodel"]))


def float_tflite(saved_model: Path) -> bytes:
    """The SavedModel as a LiteRT model, float32 throughout (the `tflite` artifact)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    try:
        return converter.convert()
    except Exception as error:  # the converter's errors are pages of MLIR: keep the cause
        raise ExportError(f"LiteRT conversion failed: {str(error).splitlines()[-1][:500]}") from error


def _write_onnx(graph, path: Path, stage: Path, metadata: dict) -> None:
    import onnx

    graph.export(path, format="onnx", opset_version=ONNX_OPSET, verbose=False)
    proto = onnx.load(path)
    onnx.helper.set_model_props(
        proto,
        {
            **{f"zoo_{key}": json.dumps(value) for key, value in options_from(metadata).items()},
            "zoo_metadata": json.dumps(metadata, sort_keys=True),
        },
    )
    onnx.save(proto, path)


WRITERS = {"savedmodel": _write_savedmodel, "onnx": _write_onnx, "tflite": _write_tflite}


def quantized_tflite(saved_model: Path, calibration, keep_float=None) -> bytes:
    """The SavedModel as an integer LiteRT model: int8 weights and activations, each
    activation's range measured on `calibration` (RGB uint8 images, H x W x 3: training tiles),
    float32 in and out like the float artifacts. `keep_float(name)`, given the name of an
    operation's output, keeps the operations it picks in float (quantized around them).
    Not exported by default: results/int8/README.md measures what it costs in held-out
    building IoU and what it gains in speed."""
    import tensorflow as tf

    def representative():
        for image in calibration:
            yield [np.asarray(image, np.float32)[None]]

    def converter():
        made = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
        made.optimizations = [tf.lite.Optimize.DEFAULT]
        made.representative_dataset = representative
        made.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        made.inference_input_type = tf.float32
        made.inference_output_type = tf.float32
        return made

    try:
        whole = converter().convert()
        if keep_float is None:
            return whole
        kept = [name for name in _operation_outputs(whole) if keep_float(name)]
        options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=kept)
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter(), debug_dataset=representative, debug_options=options
        )
        return debugger.get_nondebug_quantized_model()
    except Exception as error:  # the converter's errors are pages of MLIR: keep the cause
        raise ExportError(f"LiteRT int8 conversion failed: {str(error).splitlines()[-1][:500]}") from error


def _operation_outputs(model: bytes) -> list[str]:
    """The name of each operation's first output in a LiteRT model, in order."""
    from tensorflow.lite.tools import flatbuffer_utils

    graph = flatbuffer_utils.convert_bytearray_to_object(bytearray(model)).subgraphs[0]
    return [graph.tensors[operation.outputs[0]].name.decode() for operation in graph.operators]


def _checked(runtime: str, path: Path, probes, reference) -> dict:
    forward = runtimes.forward_for(runtime, path, threads=None)
    diffs = []
    for batch, expected in zip(probes, reference):
        got = np.asarray(forward(batch))
        if got.shape != expected.shape:
            raise ExportError(
                f"{runtime}: logits of shape {got.shape} for input {batch.shape}, "
                f"the Keras model gives {expected.shape}"
            )
        diffs.append(float(np.abs(got - expected).max()))
    if max(diffs) > LOGIT_TOLERANCE:
        raise ExportError(
            f"{runtime}: logits differ from the Keras model by up to {max(diffs):.2e} "
            f"(tolerance {LOGIT_TOLERANCE:g}) on probe shapes {PROBE_SHAPES}; not written"
        )
    return {
        "path": path.name,
        "sha256": runtimes.tree_sha256(path),
        "bytes": _size(path),
        "max_abs_logit_diff": max(diffs),
    }


def _sidecar(request: ExportRequest, model, metadata: dict, artifacts: dict, rewritten: list) -> dict:
    metadata_file = saving.metadata_path(request.model)
    return {
        "source": {
            "file": request.model.name,
            "sha256": runtimes.file_sha256(request.model),
            "metadata_file": metadata_file.name if metadata_file.is_file() else None,
        },
        "metadata": metadata,
        "name": model.name,
        "inference": options_from(metadata),
        "input": "float32 [batch, height, width, 3], RGB 0..255, any size (height and width "
        "multiples of 32: zoo.predict pads to them)",
        "output": "float32 logits [batch, height, width, 1]; probability = sigmoid(logit)",
        "rewritten_as_nearest_resize": rewritten,
        "parity": {
            "probe_shapes": [list(shape) for shape in PROBE_SHAPES],
            "logit_tolerance": LOGIT_TOLERANCE,
        },
        "artifacts": artifacts,
        "versions": _versions(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _versions() -> dict:
    from importlib.metadata import version

    import onnxruntime
    import tf2onnx

    return {
        **saving.versions(),
        "tf2onnx": tf2onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "ai-edge-litert": version("ai-edge-litert"),
    }


def _size(path: Path) -> int:
    return (
        path.stat().st_size
        if path.is_file()
        else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    )


def _publish(stage: Path, out: Path) -> None:
    """Swap the staged folder in: a reader finds the old export or the new, never a mix."""
    if not out.exists():
        os.replace(stage, out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.replace(out, old)
    os.replace(stage, out)
    shutil.rmtree(old, ignore_errors=True)


def main(argv=None) -> int:
    request = parse_args(argv)
    if not request.model.is_file():
        print(f"error: no model file at {request.model}; pass --model PATH", file=sys.stderr)
        return 2
    try:
        sidecar = export(request)
    except (ExportError, saving.ModelIntegrityError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(
        f"wrote {', '.join(sidecar['artifacts'])} and {runtimes.SIDECAR} to {request.out} "
        f"(threshold {sidecar['inference']['threshold']:g}, scales "
        f"{', '.join(f'{s:g}' for s in sidecar['inference']['scales'])})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
