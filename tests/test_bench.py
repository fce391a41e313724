"""ablations.bench.speed's levers: each runs or reports why not, and leaves the global policy alone."""
from __future__ import annotations

import keras
import numpy as np

from ablations import studies
from ablations.bench import speed
from zoo import encoder as zoo_encoder
from zoo import unet


def test_levers_measure_or_explain_and_restore_the_policy():
    encoder = zoo_encoder.build_encoder(None)
    model = unet.build(studies.DEFAULT_DECODER, encoder=encoder)
    images = np.random.default_rng(0).integers(0, 256, (8, 64, 64, 3)).astype(np.float32)
    taps = [np.asarray(t) for t in unet.encoder_features(model, images)]
    inputs = {zoo_encoder.tap_name(s): t for s, t in zip(unet.STRIDES, taps)}
    targets = (np.random.default_rng(1).random((8, 64, 64, 1)) > 0.8).astype(np.float32)

    levers = speed.bench_levers(studies.DEFAULT_DECODER, encoder, inputs, targets)

    assert keras.mixed_precision.global_policy().name == "float32"
    assert set(levers) == {"default (float32, no XLA)", "XLA (jit_compile=True)",
                           "bfloat16 (mixed_bfloat16)", "XLA + bfloat16"}
    assert isinstance(levers["default (float32, no XLA)"], float)
    assert levers["default (float32, no XLA)"] > 0
    for value in levers.values():
        assert (isinstance(value, float) and value > 0) or value.startswith("fails: ")
