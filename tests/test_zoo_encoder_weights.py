"""zoo.encoder weights: a missing file is named; only *shared_weights* tests use the real ImageNet file."""

import hashlib
import os
import shutil
import sys
import urllib.error
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `pytest tests/...` from the repo root without an installed package
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from keras.src.backend import config as keras_config  # noqa: E402
from keras.src.utils import file_utils as keras_file_utils  # noqa: E402

from zoo import encoder, unet  # noqa: E402
from zoo.config import DecoderConfig  # noqa: E402
from zoo.encoder import WEIGHTS_ENV, WEIGHTS_FILE, WeightsUnavailable  # noqa: E402

# Keras' legacy .h5 weight loader warns once per variable under numpy 2: noise, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy")

SHARED_WEIGHTS_SHA256 = "e391243ecbe042e9fd872c82b3ce96893dd238d0d324c98670b267bfc1be73e4"


# ---------------------------------------------------------------- helpers


def shared_weights_path() -> Path:
    path = Path(os.environ.get(WEIGHTS_ENV) or ROOT.parent / "shared" / "weights" / WEIGHTS_FILE)
    if not path.is_file():
        pytest.skip(f"shared encoder weights not found at {path} (set ${WEIGHTS_ENV} to run)")
    return path


def offline_keras_home(monkeypatch, home: Path) -> list:
    """No $ZOO_ENCODER_WEIGHTS, Keras' cache in `home`, and downloads that fail (and are counted).

    Keras reads KERAS_HOME once at import, so its cached directory is patched as well.
    """
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(home))
    attempts = []

    def no_network(url, *args, **kwargs):
        attempts.append(url)
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(keras_file_utils, "urlretrieve", no_network)
    return attempts


def encoder_values(model):
    return [np.asarray(v.numpy()) for v in model.weights]


# ---------------------------------------------------------------- 7. encoder weights


def test_missing_weights_path_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    missing = tmp_path / "nope" / WEIGHTS_FILE
    with pytest.raises(WeightsUnavailable, match=str(missing)):
        encoder.resolve_weights(missing)
    with pytest.raises(WeightsUnavailable, match=str(missing)):
        encoder.build_encoder(str(missing))
    assert encoder.resolve_weights(None) is None
    assert encoder.resolve_weights("imagenet") == "imagenet"


def test_weights_env_var_is_honoured(tmp_path, monkeypatch):
    missing = tmp_path / "missing.h5"
    monkeypatch.setenv(WEIGHTS_ENV, str(missing))
    with pytest.raises(WeightsUnavailable, match=WEIGHTS_ENV) as caught:
        encoder.resolve_weights("imagenet")
    assert str(missing) in str(caught.value)
    present = tmp_path / "present.h5"
    present.write_bytes(b"junk")
    monkeypatch.setenv(WEIGHTS_ENV, str(present))
    assert encoder.resolve_weights("imagenet") == str(present)
    assert encoder.resolve_weights(None) is None  # random weights only when asked, env or not
    # A file that is there but is not MobileNetV2 weights is named too.
    with pytest.raises(WeightsUnavailable, match="present.h5"):
        encoder.build_encoder("imagenet")


def test_imagenet_without_network_or_cache_says_how_to_fix(tmp_path, monkeypatch):
    attempts = offline_keras_home(monkeypatch, tmp_path)
    with pytest.raises(WeightsUnavailable, match=WEIGHTS_ENV):
        encoder.build_encoder("imagenet")
    assert len(attempts) == 1 and attempts[0].endswith(WEIGHTS_FILE)  # it tried, and was refused


def test_shared_weights_file_is_the_expected_one():
    assert hashlib.sha256(shared_weights_path().read_bytes()).hexdigest() == SHARED_WEIGHTS_SHA256


def test_building_with_shared_weights_loads_them(monkeypatch, tmp_path):
    path = shared_weights_path()
    attempts = offline_keras_home(monkeypatch, tmp_path)
    keras.utils.set_random_seed(0)
    random_encoder = encoder_values(encoder.build_encoder(None))
    loaded = encoder_values(encoder.build_encoder(path))
    assert len(loaded) == len(random_encoder)
    same = sum(np.array_equal(a, b) for a, b in zip(loaded, random_encoder))
    assert same == 0, f"{same} of {len(loaded)} weights unchanged by loading"

    model = unet.build(DecoderConfig(width=0.25), weights=str(path))  # the path reaches the encoder
    for a, b in zip(encoder_values(unet.encoder_of(model)), loaded):
        np.testing.assert_array_equal(a, b)
    monkeypatch.setenv(WEIGHTS_ENV, str(path))  # "imagenet" + env var: the same file
    for a, b in zip(encoder_values(encoder.build_encoder("imagenet")), loaded):
        np.testing.assert_array_equal(a, b)
    assert attempts == []


def test_shared_weights_in_keras_cache_work_offline(monkeypatch, tmp_path):
    path = shared_weights_path()
    attempts = offline_keras_home(monkeypatch, tmp_path)
    (tmp_path / "models").mkdir()
    shutil.copy(path, tmp_path / "models" / WEIGHTS_FILE)
    from_cache = encoder_values(encoder.build_encoder("imagenet"))
    for a, b in zip(from_cache, encoder_values(encoder.build_encoder(path))):
        np.testing.assert_array_equal(a, b)
    assert attempts == []
