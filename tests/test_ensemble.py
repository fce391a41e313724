"""zoo.ensemble: N decoders on one encoder pass, their probabilities averaged, saved and served
like a single U-Net.

Random encoder (weights=None), 64 px images. Members share one encoder object, as trained heads
share the frozen ImageNet one, and their last 1x1 conv is rescaled so logits spread around zero
(tests/conftest.py says why): otherwise every probability is 0.5 and any way of combining them
would pass.
"""
import io
import os
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
from zoo.encoder import build_encoder  # noqa: E402
from zoo.ensemble import (MeanProbabilityLogit, build_ensemble, ensemble_from,  # noqa: E402
                          ensemble_metadata, member_configs)
from zoo.predict import Segmenter, sigmoid  # noqa: E402

CONFIGS = [DecoderConfig(conv="separable", width=0.25),
           DecoderConfig(upsampler="nearest", skip="add", conv="separable", width=0.25)]
IMAGES = np.random.default_rng(3).uniform(0, 255, (2, 64, 64, 3)).astype("float32")


def logits_of(model, images=IMAGES) -> np.ndarray:
    return keras.ops.convert_to_numpy(model(images, training=False))[..., 0]


def single(encoder, config: DecoderConfig, seed: int) -> keras.Model:
    """A U-Net on `encoder` whose logits spread with a standard deviation of about 3."""
    keras.utils.set_random_seed(seed)
    model = unet.build(config, weights=None, encoder=encoder)
    head = unet.decoder_of(model).get_layer("logits")
    raw = logits_of(model)
    gain = 3.0 / max(float(raw.std()), 1e-12)
    head.kernel.assign(head.kernel * gain)
    head.bias.assign((head.bias - float(raw.mean())) * gain)
    return model


@pytest.fixture(scope="module")
def encoder():
    keras.utils.set_random_seed(0)
    return build_encoder(None)


@pytest.fixture(scope="module")
def members(encoder):
    return [single(encoder, config, seed) for seed, config in enumerate(CONFIGS, start=1)]


@pytest.fixture(scope="module")
def pair(members):
    return ensemble_from(members)


# ---------------------------------------------------------------- what it computes

def test_ensemble_probability_is_the_members_mean(members, pair):
    first, second = (logits_of(m) for m in members)
    assert np.abs(sigmoid(first) - sigmoid(second)).max() > 0.3  # members that disagree
    wanted = (sigmoid(first) + sigmoid(second)) / 2
    # Averaging logits instead of probabilities gives other answers on these members.
    assert np.abs(sigmoid((first + second) / 2) - wanted).max() > 1e-2
    np.testing.assert_allclose(sigmoid(logits_of(pair)), wanted, atol=1e-6)
    assert logits_of(pair).shape == (2, 64, 64)  # one logit channel, as a single U-Net's


def test_members_are_copies_of_the_trained_decoders(encoder, members):
    model = single(encoder, CONFIGS[0], seed=5)
    ensemble = ensemble_from([model])
    before = logits_of(ensemble)
    head = unet.decoder_of(model).get_layer("logits")
    head.kernel.assign(head.kernel * 0.0)  # training the original on afterwards ...
    np.testing.assert_array_equal(logits_of(ensemble), before)  # ... leaves the member alone


def test_a_one_member_ensemble_equals_its_model(members):
    alone = ensemble_from(members[:1])
    np.testing.assert_allclose(sigmoid(logits_of(alone)), sigmoid(logits_of(members[0])), atol=1e-6)
    np.testing.assert_allclose(logits_of(alone), logits_of(members[0]), atol=1e-4)
    assert unet.decoder_of(alone).name == "decoder_0"


def test_encoder_runs_once_for_all_members(pair, monkeypatch):
    encoders = [layer for layer in pair.layers if layer.name == "encoder"]
    assert len(encoders) == 1
    # A layer shared between calls is listed once however often it runs: count the runs.
    calls = []
    run = encoders[0].call
    monkeypatch.setattr(encoders[0], "call", lambda *a, **k: calls.append(1) or run(*a, **k))
    pair(IMAGES[:1], training=False)
    assert len(calls) == 1


def test_build_ensemble_makes_one_decoder_per_config(encoder):
    model = build_ensemble(CONFIGS, encoder=encoder)
    decoders = unet.decoders_of(model)
    assert [d.name for d in decoders] == ["decoder_0", "decoder_1"]
    channels = [t.shape[-1] for t in encoder.outputs]
    for decoder, config in zip(decoders, CONFIGS):
        assert decoder.count_params() == unet.build_decoder(config, channels).count_params()
    assert [layer.name for layer in model.layers].count("encoder") == 1
    assert logits_of(model).shape == (2, 64, 64)


def test_decoder_of_and_decoders_of(members, pair):
    assert unet.decoders_of(members[0]) == [unet.decoder_of(members[0])]
    assert unet.decoder_of(members[0]).name == "decoder"
    with pytest.raises(ValueError, match="2 decoders"):
        unet.decoder_of(pair)


# ---------------------------------------------------------------- refusals

def test_members_must_share_preprocess(encoder, members):
    mixed = [CONFIGS[0], DecoderConfig(preprocess="standardize")]
    with pytest.raises(ValueError, match="preprocess"):
        build_ensemble(mixed, encoder=encoder)
    standardized = unet.build(mixed[1], weights=None, encoder=encoder)
    with pytest.raises(ValueError, match="preprocess"):
        ensemble_from([members[0], standardized])


def test_members_must_be_one_scale_decoders(encoder, members):
    """A two-scale decoder needs the half-size taps that an ensemble's one encoder pass lacks:
    refused by name, not a shape error deep in Keras."""
    two_scale = DecoderConfig(width=0.25, output_stride=2, scale_fusion="attention")
    with pytest.raises(ValueError, match="one-scale.*scaleatt"):
        build_ensemble([CONFIGS[0], two_scale], encoder=encoder)
    with pytest.raises(ValueError, match="one-scale.*scaleatt"):
        ensemble_from([members[0], unet.build(two_scale, weights=None, encoder=encoder)])


def test_members_must_share_the_encoder(members):
    keras.utils.set_random_seed(9)
    other = unet.build(CONFIGS[0], weights=None)  # its own random encoder
    with pytest.raises(ValueError, match="encoder differs"):
        ensemble_from([members[0], other])


# ---------------------------------------------------------------- saved and served

@pytest.fixture(scope="module")
def saved_pair(pair, tmp_path_factory):
    metadata = {**ensemble_metadata(CONFIGS), "threshold": 0.5, "name": "test pair"}
    return saving.save(pair, tmp_path_factory.mktemp("ensemble") / "pair.keras", metadata)


def test_save_and_load_give_identical_outputs_and_metadata(pair, saved_pair):
    loaded, metadata = saving.load(saved_pair)
    np.testing.assert_array_equal(logits_of(loaded), logits_of(pair))
    assert member_configs(metadata) == CONFIGS and metadata["threshold"] == 0.5
    assert metadata["sha256"] == saving.sha256_of(saved_pair)
    assert isinstance(loaded.get_layer("mean_probability"), MeanProbabilityLogit)
    assert [d.name for d in unet.decoders_of(loaded)] == ["decoder_0", "decoder_1"]
    # Served as zoo.predict serves any model (one traced graph, sigmoid of the output).
    image = IMAGES[0].astype(np.uint8)
    served = Segmenter.from_file(saved_pair).probabilities(image)
    np.testing.assert_allclose(served, sigmoid(logits_of(pair, image[None].astype("float32")))[0],
                               atol=1e-6)


@pytest.mark.slow
def test_served_by_app_predict_in_a_fresh_process(pair, saved_pair, run_module, tmp_path):
    # A fresh process has imported only what zoo.saving imports: this fails if the layer is
    # not registered there.
    from PIL import Image

    image = IMAGES[0].astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    (tmp_path / "tile.png").write_bytes(buffer.getvalue())
    done = run_module("app.predict", tmp_path / "tile.png", "--model", saved_pair,
                      "--mask", tmp_path / "mask.png", timeout=300)
    assert done.returncode == 0, done.stderr
    wanted = Segmenter(pair, threshold=0.5).predict(image) * 255
    assert 0 < wanted.mean() < 255  # both classes present, so a wrong model shows
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "mask.png")), wanted)
