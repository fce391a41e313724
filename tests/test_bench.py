"""bench.speed's levers: each runs or reports why TensorFlow cannot run it, a bug in
the bench is never reported as a result, and the global policy is left alone."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from ablations import studies
from bench import speed
from zoo import encoder as zoo_encoder
from zoo import unet

DEFAULT, XLA, BF16, XLA_BF16 = (
    "default (float32, no XLA)",
    "XLA (jit_compile=True)",
    "bfloat16 (mixed_bfloat16)",
    "XLA + bfloat16",
)


@pytest.fixture(scope="module")
def features():
    encoder = zoo_encoder.build_encoder(None)
    model = unet.build(studies.DEFAULT_DECODER, encoder=encoder)
    images = np.random.default_rng(0).integers(0, 256, (8, 64, 64, 3)).astype(np.float32)
    taps = [np.asarray(t) for t in unet.encoder_features(model, images)]
    inputs = {zoo_encoder.tap_name(s): t for s, t in zip(unet.STRIDES, taps)}
    targets = (np.random.default_rng(1).random((8, 64, 64, 1)) > 0.8).astype(np.float32)
    return encoder, inputs, targets


@pytest.mark.slow
def test_levers_measure_and_restore_the_policy(features):
    levers = speed.bench_levers(studies.DEFAULT_DECODER, *features)

    assert keras.mixed_precision.global_policy().name == "float32"
    assert set(levers) == {DEFAULT, XLA, BF16, XLA_BF16}
    for name in (DEFAULT, XLA, BF16):  # each ran on every CPU this was tried on
        assert isinstance(levers[name], float) and levers[name] > 0, (name, levers[name])
    # XLA's CPU backend rejects the mixed precisions of the sigmoid's gradient (results/bench.md)
    assert isinstance(levers[XLA_BF16], float) or levers[XLA_BF16].startswith("fails: InternalError"), levers[
        XLA_BF16
    ]


def test_only_what_tensorflow_cannot_run_is_a_result(features, monkeypatch):
    def cannot_run(*_):
        raise tf.errors.InternalError(None, None, "Graph execution error:\nINTERNAL: no kernel")

    monkeypatch.setattr(speed, "training_images_per_second", cannot_run)
    levers = speed.bench_levers(studies.DEFAULT_DECODER, *features)
    assert set(levers.values()) == {"fails: InternalError: INTERNAL: no kernel"}

    def bug(*_):
        raise TypeError("a bug in the bench")

    monkeypatch.setattr(speed, "training_images_per_second", bug)
    with pytest.raises(TypeError, match="a bug in the bench"):
        speed.bench_levers(studies.DEFAULT_DECODER, *features)
    assert keras.mixed_precision.global_policy().name == "float32"
