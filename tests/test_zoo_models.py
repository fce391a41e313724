"""zoo model building: every decoder variant, the config, the frozen encoder and the blocks.

Models share one random-weight encoder (weights=None) and are cached per config, so each of
the 16 upsampler x skip variants is built once for the whole module.
"""

import dataclasses
import itertools
import json
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `pytest tests/...` from the repo root without an installed package
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from zoo import blocks, config, unet  # noqa: E402
from zoo.config import DecoderConfig  # noqa: E402
from zoo.encoder import build_encoder  # noqa: E402
from zoo.losses import SegmentationLoss  # noqa: E402

# ---------------------------------------------------------------- helpers

VARIANTS = [
    DecoderConfig(upsampler=u, skip=s) for u, s in itertools.product(config.UPSAMPLERS, config.SKIP_MERGES)
]
EXTRA = [
    DecoderConfig(conv="separable"),
    DecoderConfig(width=0.25),
    DecoderConfig(width=1.0),
    DecoderConfig(upsampler="nearest", skip="attention", width=0.25, output_stride=2),
]  # the last: stride 2 alone
_MODELS: dict[DecoderConfig, keras.Model] = {}
_ENCODER: list[keras.Model] = []


def model_for(cfg: DecoderConfig) -> keras.Model:
    """One random-weight model per config for the whole module (building is the slow part),
    all on one frozen random encoder, as the studies share theirs."""
    if cfg not in _MODELS:
        if not _ENCODER:
            keras.utils.set_random_seed(0)
            _ENCODER.append(build_encoder(None))
        keras.utils.set_random_seed(0)
        _MODELS[cfg] = unet.build(cfg, encoder=_ENCODER[0])
    return _MODELS[cfg]


def rgb(n, h, w, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, h, w, 3)).astype("float32")


def masks(n, h, w, seed=1):
    return (np.random.default_rng(seed).random((n, h, w, 1)) < 0.3).astype("float32")


def taps_of(model, images):
    """The encoder's taps for RGB images, preprocessed the way the model does it."""
    return [np.asarray(t) for t in unet.encoder_of(model)(images / 127.5 - 1.0)]


def random_taps(decoder, n, size, seed=8):
    """Unit-scale features shaped like the taps: a random encoder's deep taps are ~1e-12."""
    rng = np.random.default_rng(seed)
    return [
        rng.normal(size=(n, size // s, size // s, t.shape[-1])).astype("float32")
        for s, t in zip(unet.STRIDES, decoder.inputs)
    ]


def snapshot(variables):
    return [np.array(v.numpy(), copy=True) for v in variables]


def bits_equal(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def level_names(cfg):
    """(level, stride, filters) of the decoder levels that merge an encoder tap."""
    return [(level, 16 >> level, f) for level, f in enumerate(cfg.filters[:4])]


# ---------------------------------------------------------------- 1. variants and config


# Every variant at 64 px; two of them also at 256 px (the served tile size): the decoder's
# shapes follow the input, so more 256 px passes would repeat the 64 px ones at 16x the cost.
@pytest.mark.parametrize(
    "cfg, size",
    [(cfg, 64) for cfg in VARIANTS + EXTRA]
    + [(DecoderConfig(upsampler="nearest", skip="attention"), 256), (EXTRA[-1], 256)],
    ids=lambda c: getattr(c, "name", c),
)
def test_variant_gives_float32_logits_at_input_size(cfg, size):
    model = model_for(cfg)
    logits = model(rgb(2, size, size), training=False)
    assert tuple(logits.shape) == (2, size, size, 1)
    assert logits.dtype == "float32"
    assert np.isfinite(np.asarray(logits)).all()
    assert model.name == f"unet_{cfg.name}"


@pytest.mark.parametrize("cfg", EXTRA[1:], ids=lambda c: c.name)
def test_built_decoder_uses_the_configured_filters(cfg):
    decoder = unet.decoder_of(model_for(cfg))
    for level, filters in enumerate(cfg.filters):
        stride = 16 >> level
        conv = decoder.get_layer(f"dec{level}_s{stride}_block_b_conv")
        assert conv.filters == filters, conv.name


def test_an_output_stride_2_decoder_stops_at_stride_2_and_resizes_its_logits():
    cfg = EXTRA[-1]
    assert cfg.filters == DecoderConfig(width=0.25).filters[:-1] and cfg.name.endswith("-os2")
    decoder = unet.decoder_of(model_for(cfg))
    names = [layer.name for layer in decoder.layers]
    assert not any(name.startswith("dec4_s1") for name in names) and "dec3_s2_block_b_conv" in names
    taps = random_taps(decoder, 1, 64)
    coarse = keras.Model(decoder.inputs, decoder.get_layer("logits").output)(taps)
    assert tuple(coarse.shape) == (1, 32, 32, 1)
    resized = keras.ops.image.resize(coarse, (64, 64), interpolation="bilinear")
    np.testing.assert_allclose(np.asarray(decoder(taps)), np.asarray(resized), atol=1e-5)


def test_an_output_stride_2_decoder_traces_at_any_size():
    # What exporting and serving images of any size need. Keras' bilinear UpSampling2D for the
    # logit resize failed right here ("symbolic tf.Tensor as a Python bool"), so no os2 model
    # could be exported.
    import tensorflow as tf

    decoder = unet.decoder_of(model_for(EXTRA[-1]))
    specs = [tf.TensorSpec((None, None, None, t.shape[-1]), tf.float32) for t in decoder.inputs]
    traced = tf.function(lambda *taps: decoder(list(taps), training=False)).get_concrete_function(*specs)
    assert traced.structured_outputs.shape.as_list() == [None, None, None, 1]
    taps = random_taps(decoder, 1, 96)
    assert tuple(traced(*[tf.constant(t) for t in taps]).shape) == (1, 96, 96, 1)


def test_separable_variant_uses_separable_convs():
    decoder = unet.decoder_of(model_for(EXTRA[0]))
    assert isinstance(decoder.get_layer("dec0_s16_block_a_conv"), keras.layers.SeparableConv2D)
    plain = unet.decoder_of(model_for(DecoderConfig()))
    assert not isinstance(plain.get_layer("dec0_s16_block_a_conv"), keras.layers.SeparableConv2D)


@pytest.mark.parametrize("size", [64, 256])
def test_tutorial_model_gives_float32_logits(size):
    if "tutorial" not in _MODELS:
        keras.utils.set_random_seed(0)
        _MODELS["tutorial"] = unet.build_tutorial(weights=None)
    logits = _MODELS["tutorial"](rgb(1, size, size), training=False)
    assert tuple(logits.shape) == (1, size, size, 1)
    assert logits.dtype == "float32"


@pytest.mark.parametrize(
    "registry, choices",
    [
        (blocks.UPSAMPLERS, config.UPSAMPLERS),
        (blocks.SKIP_MERGES, config.SKIP_MERGES),
        (blocks.CONV_BLOCKS, config.CONV_BLOCKS),
    ],
)
def test_block_registries_match_config_choices(registry, choices):
    assert len(set(choices)) == len(choices)
    assert set(registry) == set(choices)
    assert all(callable(fn) for fn in registry.values())


@pytest.mark.parametrize(
    "field, value",
    [
        ("upsampler", "pixelshuffle"),
        ("skip", "residual"),
        ("conv", "triple"),
        ("width", 0.0),
        ("width", 10.0),
        ("output_stride", 4),
        ("output_stride", 2.0),
    ],
)
def test_config_rejects_unknown_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"DecoderConfig\.{field}") as caught:
        DecoderConfig(**{field: value})
    assert repr(value) in str(caught.value)
    with pytest.raises(ValueError, match=rf"DecoderConfig\.{field}"):
        DecoderConfig.from_dict({**DecoderConfig().to_dict(), field: value})


def test_config_from_dict_rejects_unknown_field_by_name():
    with pytest.raises(ValueError, match="colour"):
        DecoderConfig.from_dict({"upsampler": "nearest", "colour": "red"})


@pytest.mark.parametrize("cfg", VARIANTS + EXTRA, ids=lambda c: c.name)
def test_config_round_trips_through_dict_and_json(cfg):
    assert DecoderConfig.from_dict(cfg.to_dict()) == cfg
    assert DecoderConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_configs_recorded_with_a_retired_field_read_at_its_served_value_and_refuse_another():
    recorded = {**DecoderConfig().to_dict(), "preprocess": "scale", "taps": "narrow", "scale_fusion": "none"}
    assert DecoderConfig.from_dict(recorded) == DecoderConfig()
    with pytest.raises(ValueError, match=r"scale_fusion='attention'.*research-2026-12"):
        DecoderConfig.from_dict({**DecoderConfig().to_dict(), "scale_fusion": "attention"})


def test_config_is_frozen_and_names_are_unique():
    with pytest.raises(dataclasses.FrozenInstanceError):
        DecoderConfig().upsampler = "nearest"
    names = [c.name for c in VARIANTS + EXTRA]
    assert len(set(names)) == len(names)


def test_filters_scale_with_width():
    assert DecoderConfig(width=1.0).filters == config.BASE_FILTERS
    assert DecoderConfig(width=0.5).filters == (128, 64, 32, 16, 8)
    assert DecoderConfig(width=2.0).filters == tuple(2 * f for f in config.BASE_FILTERS)
    for width in (0.05, 0.3, 0.75, 1.3, 4.0):
        filters = DecoderConfig(width=width).filters
        assert all(f >= 4 and f % 4 == 0 for f in filters), (width, filters)
    # Wider never has fewer filters at any level.
    widths = (0.05, 0.25, 0.5, 1.0, 2.0, 4.0)
    for narrow, wide in zip(widths, widths[1:]):
        assert all(
            a <= b for a, b in zip(DecoderConfig(width=narrow).filters, DecoderConfig(width=wide).filters)
        )


# ---------------------------------------------------------------- 2. frozen encoder


def test_fit_changes_decoder_but_never_the_encoder():
    keras.utils.set_random_seed(1)
    model = unet.build(DecoderConfig(upsampler="transpose", skip="attention"), weights=None)
    encoder, decoder = unet.encoder_of(model), unet.decoder_of(model)
    assert encoder.trainable_weights == []
    assert any("moving_mean" in v.path for v in encoder.weights)
    assert any("moving_variance" in v.path for v in encoder.weights)
    assert {id(v) for v in model.trainable_weights} == {id(v) for v in decoder.trainable_weights}
    assert unet.trainable_params(model) == sum(int(np.prod(v.shape)) for v in decoder.trainable_weights)
    assert unet.trainable_params(model) < unet.total_params(model)

    encoder_before = snapshot(encoder.weights)
    decoder_before = snapshot(decoder.weights)
    # Graph mode, as real training runs (train step traced with training=True).
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=SegmentationLoss("bce_dice"))
    model.fit(rgb(4, 64, 64), masks(4, 64, 64), batch_size=2, epochs=1, verbose=0)  # 2 steps
    assert int(model.optimizer.iterations.numpy()) == 2

    for variable, before in zip(encoder.weights, encoder_before):
        assert bits_equal(np.asarray(variable.numpy()), before), variable.path
    changed = {v.path for v, b in zip(decoder.weights, decoder_before) if not np.array_equal(v.numpy(), b)}
    assert any(p.endswith("kernel") for p in changed), changed
    # fit does update BatchNormalization statistics where it may (the decoder's), so the
    # unchanged encoder statistics above are the encoder being frozen, not fit skipping them.
    assert any(p.endswith("moving_mean") for p in changed), changed


def test_training_the_decoder_alone_trains_the_full_models_decoder():
    keras.utils.set_random_seed(2)
    model = unet.build(DecoderConfig(), weights=None)
    decoder = unet.decoder_of(model)
    images, truth = rgb(4, 64, 64, seed=3), masks(4, 64, 64, seed=4)
    features = taps_of(model, images)
    # The model owns its preprocessing: RGB in equals the decoder on features of x/127.5-1.
    logits_before = np.asarray(model(images))
    np.testing.assert_allclose(logits_before, np.asarray(decoder(features)), atol=1e-6)
    full_before = snapshot(model.trainable_weights)

    # Eager: tracing a train step costs more here than the two steps themselves.
    decoder.compile(
        optimizer=keras.optimizers.Adam(1e-3), loss=SegmentationLoss("bce_dice"), run_eagerly=True
    )
    decoder.fit(features, truth, batch_size=2, epochs=1, verbose=0)

    changed = [
        v.path for v, b in zip(model.trainable_weights, full_before) if not np.array_equal(v.numpy(), b)
    ]
    assert any(p.endswith("kernel") for p in changed), changed
    logits_after = np.asarray(model(images))
    assert not np.allclose(logits_after, logits_before)
    np.testing.assert_allclose(logits_after, np.asarray(decoder(features)), atol=1e-6)


# ---------------------------------------------------------------- 3. blocks


def test_attention_coefficients_are_in_unit_interval_at_the_gate_resolution():
    cfg = DecoderConfig(upsampler="transpose", skip="attention")
    model = model_for(cfg)
    decoder = unet.decoder_of(model)
    names = [layer.name for layer in decoder.layers if layer.name.endswith("_attention_coefficients")]
    strides = {int(re.search(r"_s(\d+)_", n).group(1)): n for n in names}
    assert sorted(strides) == [2, 4, 8, 16]
    probe = keras.Model(decoder.inputs, [decoder.get_layer(n).output for n in strides.values()])
    coefficients = probe(random_taps(decoder, 2, 64))
    for stride, alpha in zip(strides, coefficients):
        alpha = np.asarray(alpha)
        gate = 64 // (2 * stride)  # the coarser decoder feature gates the skip at stride `stride`
        assert alpha.shape == (2, gate, gate, 1), (stride, alpha.shape)
        assert alpha.min() >= 0.0 and alpha.max() <= 1.0
        assert alpha.std() > 0  # one coefficient per location, not a constant


@pytest.mark.parametrize(
    "skip, tap_changes_output", [("none", False), ("concat", True), ("add", True), ("attention", True)]
)
def test_skip_taps_reach_the_output_only_when_merged(skip, tap_changes_output):
    model = model_for(DecoderConfig(skip=skip))
    decoder = unet.decoder_of(model)
    features = taps_of(model, rgb(1, 64, 64))
    rng = np.random.default_rng(5)
    other_skips = [rng.normal(size=f.shape).astype("float32") for f in features[:-1]] + features[-1:]
    other_bottom = features[:-1] + [rng.normal(size=features[-1].shape).astype("float32")]
    base = np.asarray(decoder(features))
    assert (not np.array_equal(np.asarray(decoder(other_skips)), base)) == tap_changes_output
    assert not np.array_equal(np.asarray(decoder(other_bottom)), base)  # stride 32 always counts


@pytest.mark.parametrize("factor, shape", [(2, (2, 3, 5, 12)), (3, (1, 4, 2, 18))])
def test_depth_to_space_matches_tensorflow(factor, shape):
    x = np.random.default_rng(6).normal(size=shape).astype("float32")
    layer = blocks.DepthToSpace(factor)
    expected = tf.nn.depth_to_space(x, factor).numpy()
    np.testing.assert_array_equal(np.asarray(layer(x)), expected)
    assert layer.compute_output_shape((None, None, 5, shape[-1])) == (
        None,
        None,
        5 * factor,
        shape[-1] // factor**2,
    )
    restored = blocks.DepthToSpace.from_config(layer.get_config())
    np.testing.assert_array_equal(np.asarray(restored(x)), expected)
    traced = tf.function(layer, input_signature=[tf.TensorSpec([None, None, None, shape[-1]])])
    np.testing.assert_array_equal(traced(x).numpy(), expected)


def test_add_merge_projects_taps_to_the_decoder_width():
    cfg = DecoderConfig(upsampler="nearest", skip="add")
    decoder = unet.decoder_of(model_for(cfg))
    tap_channels = {s: t.shape[-1] for s, t in zip(unet.STRIDES, decoder.inputs)}
    assert any(tap_channels[s] != f for _, s, f in level_names(cfg))  # a projection is needed
    for level, stride, filters in level_names(cfg):
        projection = decoder.get_layer(f"dec{level}_s{stride}_skip_proj")
        assert projection.kernel.shape == (1, 1, tap_channels[stride], filters)
        assert decoder.get_layer(f"dec{level}_s{stride}_skip_add").output.shape[-1] == filters


def test_bilinear_upsample_serves_any_size_from_one_trace():
    layer = blocks.BilinearUpsample()
    traced = tf.function(layer, input_signature=[tf.TensorSpec([None, None, None, 3])])
    rng = np.random.default_rng(7)
    for shape in [(1, 5, 7, 3), (2, 8, 4, 3)]:
        x = rng.normal(size=shape).astype("float32")
        y = traced(x).numpy()
        assert y.shape == (shape[0], 2 * shape[1], 2 * shape[2], 3)
        np.testing.assert_allclose(y, tf.image.resize(x, (2 * shape[1], 2 * shape[2])).numpy(), atol=1e-6)
    assert traced.experimental_get_tracing_count() == 1
    assert layer.compute_output_shape((None, None, 6, 3)) == (None, None, 12, 3)


# ---------------------------------------------------------------- the head cannot go dead


def kill_last_block(decoder):
    """Push the last block's BatchNorm far negative: what a trained width-0.25 decoder did to
    its four last channels on most pixels of unseen cities."""
    bn = [layer for layer in decoder.layers if isinstance(layer, keras.layers.BatchNormalization)][-1]
    gamma, beta, mean, variance = bn.get_weights()
    bn.set_weights([gamma, beta - 100.0, mean, variance])


@pytest.mark.parametrize("head, constant", [("relu", True), ("linear", False)])
def test_only_the_linear_head_keeps_a_dead_last_block_from_a_constant_output(head, constant):
    keras.utils.set_random_seed(0)
    decoder = unet.build_decoder(DecoderConfig(width=0.25, head=head), [16, 24, 192, 576, 1280])
    kill_last_block(decoder)
    logits = np.asarray(decoder(random_taps(decoder, 2, 64)))
    assert (logits.std() < 1e-6) == constant


def test_configs_recorded_before_the_head_field_load_as_relu_heads():
    legacy = {"upsampler": "nearest", "skip": "attention", "conv": "double", "width": 0.25}
    assert DecoderConfig.from_dict(legacy).head == "relu"
    assert DecoderConfig.from_dict(legacy).name == "nearest-attention-double-w0.25-relu"
    assert DecoderConfig().head == "linear" and "relu" not in DecoderConfig().name
