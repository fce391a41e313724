"""zoo.saving: a saved model loads with plain Keras, records its checksum, and a changed byte is refused."""

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `pytest tests/...` from the repo root without an installed package
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from zoo import saving, unet  # noqa: E402
from zoo.config import DecoderConfig  # noqa: E402
from zoo.losses import SegmentationLoss  # noqa: E402
from zoo.metrics import keras_metrics  # noqa: E402
from zoo.predict import Segmenter  # noqa: E402

# Keras' legacy .h5 weight loader warns once per variable under numpy 2: noise, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy")


# ---------------------------------------------------------------- 6. save / load

SAVED_VARIANTS = [
    DecoderConfig(upsampler="transpose", skip="attention"),
    DecoderConfig(upsampler="bilinear", skip="concat"),
    DecoderConfig(upsampler="nearest", skip="add", conv="separable"),
    DecoderConfig(upsampler="subpixel", skip="none"),
]


@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")
@pytest.mark.parametrize("cfg", SAVED_VARIANTS, ids=lambda c: c.name)
def test_saved_model_loads_with_plain_keras_and_gives_identical_outputs(cfg, tmp_path):
    keras.utils.set_random_seed(3)
    model = unet.build(cfg, weights=None)
    # Compiled, so loading also has to find the zoo loss and metric classes.
    model.compile(optimizer="adam", loss=SegmentationLoss("focal"), metrics=keras_metrics())
    path = saving.save(
        model,
        tmp_path / "best" / "model.keras",
        {"config": cfg.to_dict(), "threshold": 0.4, "note": "unit test"},
    )
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.json", "model.keras"]

    images = np.random.default_rng(4).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    expected = np.asarray(model(images))
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(np.asarray(loaded(images)), expected)
    assert isinstance(loaded.loss, SegmentationLoss) and loaded.loss.kind == "focal"
    metadata = json.loads(saving.metadata_path(path).read_text())
    assert DecoderConfig.from_dict(metadata["config"]) == cfg


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    keras.utils.set_random_seed(5)
    model = unet.build(DecoderConfig(width=0.25), weights=None)
    path = tmp_path_factory.mktemp("saved") / "m.keras"
    saving.save(
        model,
        path,
        {
            "config": DecoderConfig(width=0.25).to_dict(),
            "threshold": 0.4,
            "metrics": {"building_iou": 0.61},
            "data": "unit test",
        },
    )
    return path


def test_metadata_records_checksum_versions_and_given_fields(saved_model):
    metadata = json.loads(saved_model.with_suffix(".json").read_text())
    assert metadata["sha256"] == hashlib.sha256(saved_model.read_bytes()).hexdigest()
    assert metadata["model_file"] == saved_model.name
    assert metadata["threshold"] == 0.4 and metadata["data"] == "unit test"
    assert metadata["metrics"] == {"building_iou": 0.61}
    assert metadata["config"] == DecoderConfig(width=0.25).to_dict()
    versions = metadata["versions"]
    assert versions["keras"] == keras.__version__ and versions["backend"] == keras.backend.backend()
    assert {"python", "tensorflow", "numpy"} <= set(versions)


def test_load_refuses_a_model_file_with_one_changed_byte(saved_model, tmp_path):
    corrupted = tmp_path / saved_model.name
    shutil.copy(saved_model, corrupted)
    shutil.copy(saved_model.with_suffix(".json"), corrupted.with_suffix(".json"))
    model, metadata = saving.load(corrupted)  # an intact copy loads
    assert metadata["threshold"] == 0.4 and model.output_shape == (None, None, None, 1)
    data = bytearray(corrupted.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupted.write_bytes(bytes(data))
    with pytest.raises(saving.ModelIntegrityError, match=str(corrupted)):
        saving.load(corrupted)
    with pytest.raises(saving.ModelIntegrityError):
        Segmenter.from_file(corrupted)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        saving.load(tmp_path / "nowhere.keras")


def test_load_refuses_a_file_that_is_no_keras_model(tmp_path):
    path = tmp_path / "junk.keras"
    path.write_bytes(b"not a zip archive")
    with pytest.raises(saving.ModelIntegrityError, match="junk.keras"):
        saving.load(path)
