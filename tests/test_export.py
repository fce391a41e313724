"""zoo.export and zoo.runtimes: every exported artifact gives the .keras model's masks on real
tiles, a stale or corrupted export is refused, and the app serves through each runtime.

Tolerance of "the same mask": every pixel equal, except pixels whose Keras probability lies
within BORDERLINE of the threshold (a coin toss either way: LiteRT's and ONNX Runtime's kernels
sum in another order, ~1e-4 in a logit). The real tiles come from $OAM_DATA (default
../shared/data/oam_buildings); those tests skip without them.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from app.model import ModelUnavailable, load_segmenter
from zoo import export, runtimes
from zoo.config import DecoderConfig
from zoo.predict import Segmenter

REPO = Path(__file__).resolve().parent.parent
REAL_DATA = Path(os.environ.get("OAM_DATA") or REPO.parent / "shared" / "data" / "oam_buildings")
SCALES = (1.0, 0.5, 0.25)  # what the served model uses: three forward passes of three sizes
BORDERLINE = 1e-4


def copy_model(model_file: Path, folder: Path) -> Path:
    """The model and its metadata in `folder`, so an export beside it is this test's own."""
    folder.mkdir(parents=True, exist_ok=True)
    for source in (model_file, model_file.with_suffix(".json")):
        shutil.copy(source, folder / source.name)
    return folder / model_file.name


@pytest.fixture(scope="module")
def exported(small_model_file, tmp_path_factory) -> Path:
    """A copy of the shared small model with all three artifacts exported beside it."""
    model = copy_model(small_model_file, tmp_path_factory.mktemp("exported"))
    export.export(export.ExportRequest(model, runtimes.export_dir(model)), log=lambda *_: None)
    return model


@pytest.fixture(scope="module")
def real_images() -> dict[str, np.ndarray]:
    """One tile of each city, and three side by side cut to 256 x 600 (two overlap-tiles)."""
    if not (REAL_DATA / "index.csv").is_file():
        pytest.skip(f"OAM tiles not found at {REAL_DATA} (set OAM_DATA)")
    with open(REAL_DATA / "index.csv") as handle:
        rows = sorted(csv.DictReader(handle), key=lambda row: row["file"])
    by_area: dict[str, list[str]] = {}
    for row in rows:
        by_area.setdefault(row["area"], []).append(row["file"])

    def read(name):
        return np.asarray(Image.open(REAL_DATA / "images" / name).convert("RGB"))

    images = {area: read(files[len(files) // 2]) for area, files in by_area.items()}
    three = [read(row["file"]) for row in rows[:: len(rows) // 3][:3]]
    images["mosaic"] = np.concatenate(three, axis=1)[:, :600]
    return images


@pytest.fixture(scope="module")
def keras_probabilities(exported, real_images) -> dict[str, np.ndarray]:
    reference = Segmenter.from_file(exported, scales=SCALES)
    return {name: reference.probabilities(image) for name, image in real_images.items()}


def through(runtime: str, model: Path, threshold: float) -> Segmenter:
    artifact = runtimes.export_dir(model) / runtimes.EXPORTED[runtime]
    return Segmenter(
        None, threshold=threshold, scales=SCALES, forward=runtimes.forward_for(runtime, artifact)
    )


@pytest.mark.parametrize("runtime", export.FORMATS)
def test_artifact_gives_the_keras_masks_on_real_tiles(runtime, exported, real_images, keras_probabilities):
    threshold = json.loads(exported.with_suffix(".json").read_text())["threshold"]
    segmenter = through(runtime, exported, threshold)
    for name, image in real_images.items():
        expected = keras_probabilities[name]
        got = segmenter.probabilities(image)
        assert np.abs(got - expected).max() < BORDERLINE, name
        differ = (got >= threshold) != (expected >= threshold)
        assert np.all(np.abs(expected[differ] - threshold) < BORDERLINE), name
        assert 0.05 < (expected >= threshold).mean() < 0.95, f"{name}: a near-empty mask proves little"


def test_sidecar_carries_threshold_scales_and_checksums(exported):
    sidecar = json.loads((runtimes.export_dir(exported) / runtimes.SIDECAR).read_text())
    metadata = json.loads(exported.with_suffix(".json").read_text())
    assert sidecar["metadata"] == metadata
    assert sidecar["inference"] == {"threshold": metadata["threshold"], "scales": [1.0], "tta": "none"}
    assert sidecar["source"] == {
        "file": exported.name,
        "sha256": metadata["sha256"],
        "metadata_file": exported.with_suffix(".json").name,
    }
    assert set(sidecar["artifacts"]) == set(export.FORMATS)
    assert sidecar["rewritten_as_nearest_resize"] == []  # a bilinear model: nothing to rewrite
    for runtime, entry in sidecar["artifacts"].items():
        assert entry["max_abs_logit_diff"] <= export.LOGIT_TOLERANCE
        assert runtimes.read_export(exported, runtime) == sidecar

    import onnx

    props = {p.key: p.value for p in onnx.load(runtimes.export_dir(exported) / "model.onnx").metadata_props}
    assert json.loads(props["zoo_threshold"]) == metadata["threshold"]
    assert json.loads(props["zoo_metadata"])["sha256"] == metadata["sha256"]


def test_stale_or_corrupted_export_is_refused(exported, tmp_path, capsys):
    model = copy_model(exported, tmp_path)
    shutil.copytree(runtimes.export_dir(exported), runtimes.export_dir(model))
    assert load_segmenter(model, "onnx").metadata["serving"]["runtime"] == "onnx"

    (runtimes.export_dir(model) / "model.tflite").write_bytes(b"not a model")
    with pytest.raises(ModelUnavailable, match="does not match the sha256"):
        load_segmenter(model, "tflite")
    assert load_segmenter(model, "auto").metadata["serving"]["runtime"] == "onnx"

    metadata = json.loads(model.with_suffix(".json").read_text())
    model.with_suffix(".json").write_text(json.dumps({**metadata, "threshold": 0.7}))
    with pytest.raises(runtimes.ExportUnavailable, match="out of date"):
        runtimes.read_export(model, "onnx")
    # metadata changed, checksum intact: auto falls back to keras, and says why
    assert load_segmenter(model, "auto").metadata["serving"]["runtime"] == "keras"
    assert "serving through keras" in capsys.readouterr().err


def test_lowering_keeps_the_nearest_upsampling_exact():
    import keras

    from zoo import unet

    model = unet.build(
        DecoderConfig(upsampler="nearest", skip="attention", conv="separable", width=0.25), weights=None
    )
    graph = export.lowered(model)
    layers = [layer for sub in graph.layers for layer in getattr(sub, "layers", [sub])]
    assert not any(isinstance(layer, keras.layers.UpSampling2D) for layer in layers)
    assert len(export.rewritten_layers(graph)) == 5  # one per decoder level
    batch = export.probe_batches()[1]
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(graph(batch)), keras.ops.convert_to_numpy(model(batch))
    )


@pytest.mark.parametrize("runtime", ["auto", "onnx"])
def test_app_serves_the_export(runtime, exported, serve, real_images):
    import sys

    url = serve(
        [sys.executable, "-m", "app", "--model", str(exported), "--host", "127.0.0.1", "--runtime", runtime]
    )
    serving = requests.get(f"{url}/model", timeout=10).json()["serving"]
    assert serving["runtime"] == ("tflite" if runtime == "auto" else runtime)
    image = real_images["mosaic"][:, :200]
    answer = requests.post(f"{url}/inference", json={"image": image.tolist()}, timeout=60)
    assert answer.status_code == 200, answer.text
    threshold = json.loads(exported.with_suffix(".json").read_text())["threshold"]
    expected = Segmenter(
        None,
        threshold=threshold,
        forward=runtimes.forward_for(
            serving["runtime"], runtimes.export_dir(exported) / runtimes.EXPORTED[serving["runtime"]]
        ),
    )
    np.testing.assert_array_equal(np.asarray(answer.json()["prediction"]), expected.predict(image))


@pytest.mark.slow
def test_predict_cli_runs_the_fastest_export_and_notes_keras_without_one(
    exported, small_model_file, real_images, run_module, tmp_path
):
    image = real_images["mosaic"]
    Image.fromarray(image).save(tmp_path / "tile.png")
    done = run_module(
        "app.predict", tmp_path / "tile.png", "--model", exported, "--mask", tmp_path / "mask.png"
    )
    assert done.returncode == 0, done.stderr
    assert "MP/s through tflite)" in done.stdout and "note:" not in done.stderr
    threshold = json.loads(exported.with_suffix(".json").read_text())["threshold"]
    artifact = runtimes.export_dir(exported) / runtimes.EXPORTED["tflite"]
    expected = Segmenter(None, threshold=threshold, forward=runtimes.forward_for("tflite", artifact))
    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / "mask.png")) > 0, expected.predict(image) > 0
    )
    plain = copy_model(small_model_file, tmp_path / "plain")
    done = run_module("app.predict", tmp_path / "tile.png", "--model", plain, "--out", tmp_path / "k.geojson")
    assert done.returncode == 0, done.stderr
    assert "note: serving through keras, the slowest runtime: no export at" in done.stderr
    assert "MP/s through keras)" in done.stdout


def test_explicit_runtime_without_export_stops_the_server(small_model_file, tmp_path, run_module):
    model = copy_model(small_model_file, tmp_path)
    result = run_module("app", "--model", model, "--runtime", "tflite", "--port", "1", timeout=60)
    assert result.returncode == 1
    assert "no export at" in result.stderr and "python -m zoo.export" in result.stderr


def test_bench_section_is_replaced_in_place():
    from bench.runtimes_report import SECTION, replace_section, section_of

    report = "# Benchmark\n\n## Forward cost\n\nrows\n"
    once = replace_section(report, f"{SECTION}\n\nfirst\n")
    twice = replace_section(once + "\n## Later\n\nkept\n", f"{SECTION}\n\nsecond\n")
    assert section_of(twice) == f"{SECTION}\n\nsecond\n\n"
    assert twice.startswith(report) and twice.endswith("## Later\n\nkept\n") and "first" not in twice
