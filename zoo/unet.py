"""Assembling the frozen encoder and a decoder into one U-Net.

The full model is `image (RGB 0..255) -> preprocess -> encoder -> decoder -> logits`, and the
decoder is a model of its own whose inputs are the encoder's taps. Training can then run on
the full model, or on the decoder alone over cached encoder features (the encoder is frozen,
so both give the same gradients to the same decoder weights).
"""
from __future__ import annotations

import dataclasses
import re

import keras
from keras import layers

from zoo import blocks
from zoo.config import TUTORIAL_FILTERS, DecoderConfig
from zoo.preprocessing import preprocessing_layer
from zoo.encoder import TAP_SETS, TAPS, TUTORIAL_TAPS, build_encoder, half_tap_name, tap_name, taps_of

STRIDES = sorted(TAPS)  # 2, 4, 8, 16, 32
DECODER_NAME = "decoder"
ENCODER_NAME = "encoder"
HALF_SCALE_NAME = "half_scale"  # the layer that halves the image for a two-scale decoder


def build(config: DecoderConfig, weights="imagenet", encoder: keras.Model | None = None) -> keras.Model:
    """A U-Net for `config`. Pass `encoder` to share one frozen encoder between many models
    (safe because it never changes) instead of reading the weights file again."""
    encoder = encoder or build_encoder(weights, TAP_SETS[config.taps])
    if taps_of(encoder) != config.taps:
        raise ValueError(f"the encoder passed is cut at other taps ({taps_of(encoder)}) than the config "
                         f"asks for ({config.taps}): build one with zoo.encoder.build_encoder(weights, "
                         f"TAP_SETS['{config.taps}'])")
    decoder = build_decoder(config, [t.shape[-1] for t in encoder.outputs])
    return assemble(encoder, decoder, name=f"unet_{config.name}", preprocess=config.preprocess,
                    half_scale=config.scale_fusion != "none")


def assemble(encoder: keras.Model, decoder: keras.Model, name: str, preprocess: str = "scale",
             half_scale: bool = False) -> keras.Model:
    """`half_scale`: the decoder also takes the taps of the image at half size, after the
    full-size taps (a two-scale decoder, DecoderConfig.scale_fusion)."""
    image = keras.Input((None, None, 3), name="image")
    # The model owns its preprocessing: callers pass RGB 0..255, MobileNetV2 wants [-1, 1].
    scaled = preprocessing_layer(preprocess)(image)
    taps = encoder(scaled, training=False)
    if half_scale:
        taps = [*taps, *encoder(blocks.HalfScale(name=HALF_SCALE_NAME)(scaled), training=False)]
    return keras.Model(image, decoder(taps), name=name)


def build_decoder(config: DecoderConfig, channels: list[int], model_name: str = DECODER_NAME) -> keras.Model:
    """Decoder over taps at strides 2..32 (coarse to fine filters from the config), or, for
    a two-scale config, over those taps and the same taps of the image at half size.
    `model_name` is other than "decoder" only for an ensemble's members (zoo.ensemble): a
    model's layers need unique names."""
    if config.scale_fusion == "attention":
        return _scale_attention_decoder(config, channels, model_name)
    return _one_scale_decoder(config, channels, model_name)


def _scale_attention_decoder(config: DecoderConfig, channels: list[int], model_name: str) -> keras.Model:
    """One decoder (shared weights) run on the full-size and the half-size taps; a small head
    on both passes' last features gives each pixel a weight in [0, 1] for the full-size
    logit, the rest going to the half-size one (attention to scale, Chen et al. 2016). It
    starts at 0.5 everywhere: an untrained mix is the plain average of the two scales' logits."""
    branch = _one_scale_decoder(dataclasses.replace(config, scale_fusion="none"), channels,
                                f"{model_name}_branch", with_features=True)
    full = [keras.Input((None, None, c), name=tap_name(s)) for s, c in zip(STRIDES, channels)]
    half = [keras.Input((None, None, c), name=half_tap_name(s)) for s, c in zip(STRIDES, channels)]
    full_logits, full_features = branch(full)
    half_logits, half_features = branch(half)
    half_logits = blocks.FromHalfScale(dtype="float32", name="half_logits")([half_logits, full_logits])
    half_features = blocks.FromHalfScale(name="half_features")([half_features, full_features])
    x = layers.Concatenate(name="scale_attention_concat")([full_features, half_features])
    x = blocks.conv_bn_relu(x, 2 * config.filters[-1], "scale_attention")
    # Zero kernel and bias: training starts from the fixed average it is meant to improve on
    # (the gradient still reaches the kernel through the features).
    weight = layers.Conv2D(1, 1, activation="sigmoid", kernel_initializer="zeros", dtype="float32",
                           name="scale_weight")(x)
    logits = blocks.MixScales(dtype="float32", name="logits_mixed")([weight, full_logits, half_logits])
    return keras.Model([*full, *half], logits, name=model_name)


def _one_scale_decoder(config: DecoderConfig, channels: list[int], model_name: str,
                       with_features: bool = False) -> keras.Model:
    """`with_features`: the last level's features too, after the logits (a two-scale head's input)."""
    taps = [keras.Input((None, None, c), name=tap_name(s)) for s, c in zip(STRIDES, channels)]
    by_stride = dict(zip(STRIDES, taps))
    if config.feature_mixing == "mixstyle":  # training only; the served model passes the taps through
        for stride in blocks.MIXSTYLE_STRIDES:
            by_stride[stride] = blocks.MixStyle(name=f"mixstyle_s{stride}")(by_stride[stride])
    upsample = blocks.UPSAMPLERS[config.upsampler]
    merge = blocks.SKIP_MERGES[config.skip]
    conv_block = blocks.CONV_BLOCKS[config.conv]

    x = by_stride[32]
    for level, filters in enumerate(config.filters):
        stride = 32 >> (level + 1)  # 16, 8, 4, 2, 1
        name = f"dec{level}_s{stride}"
        coarse = x
        x = upsample(x, filters, f"{name}_up")
        if stride in by_stride:  # the stride-1 level has no tap to merge
            x = merge(x, by_stride[stride], coarse, filters, f"{name}_skip")
        last = level == len(config.filters) - 1
        x = conv_block(x, filters, f"{name}_block", relu_out=not (last and config.head == "linear"))
    logits = layers.Conv2D(1, 1, dtype="float32", name="logits")(x)
    if config.output_stride > 1:  # logits are smooth: resizing them is cheap and exact enough
        logits = blocks.BilinearUpsample(dtype="float32", name="logits_resized")(logits)
    return keras.Model(taps, [logits, x] if with_features else logits, name=model_name)


def build_tutorial(weights="imagenet") -> keras.Model:
    """The TensorFlow image-segmentation tutorial's model, one logit channel instead of 3.

    pix2pix upsampling (3x3 stride-2 transpose conv + BN + ReLU) with 512/256/128/64
    filters, concat skips from the tutorial's own taps, a final 3x3 transpose conv.
    """
    encoder = build_encoder(weights, TUTORIAL_TAPS)
    channels = [t.shape[-1] for t in encoder.outputs]
    taps = [keras.Input((None, None, c), name=tap_name(s)) for s, c in zip(STRIDES, channels)]
    x = taps[-1]
    for filters, skip in zip(TUTORIAL_FILTERS, reversed(taps[:-1])):
        x = layers.Conv2DTranspose(filters, 3, strides=2, padding="same", use_bias=False)(x)
        x = layers.ReLU()(layers.BatchNormalization()(x))
        x = layers.Concatenate()([x, skip])
    logits = layers.Conv2DTranspose(1, 3, strides=2, padding="same", name="logits")(x)
    decoder = keras.Model(taps, logits, name=DECODER_NAME)
    return assemble(encoder, decoder, name="unet_tutorial")


def encoder_features(model: keras.Model, images) -> list:
    """The encoder's taps for RGB 0..255 images, through the model's own preprocessing; for a
    two-scale model, then the taps of the images at half size (its decoder's inputs, in order)."""
    scaled = model.get_layer("preprocess")(images)
    taps = list(encoder_of(model)(scaled, training=False))
    if has_half_scale(model):
        taps += encoder_of(model)(model.get_layer(HALF_SCALE_NAME)(scaled), training=False)
    return taps


def has_half_scale(model: keras.Model) -> bool:
    return any(layer.name == HALF_SCALE_NAME for layer in model.layers)


def decoder_of(model: keras.Model) -> keras.Model:
    """The decoder of a single U-Net (or of a one-member ensemble)."""
    decoders = decoders_of(model)
    if len(decoders) != 1:
        raise ValueError(f"model {model.name!r} has {len(decoders)} decoders, not one: use decoders_of")
    return decoders[0]


def decoders_of(model: keras.Model) -> list[keras.Model]:
    """Every decoder of a U-Net ("decoder") or of an ensemble ("decoder_0", "decoder_1", ...),
    in member order."""
    found = {}
    for layer in model.layers:
        match = re.fullmatch(DECODER_NAME + r"(?:_(\d+))?", layer.name)
        if match and isinstance(layer, keras.Model):
            found[int(match.group(1) or 0)] = layer
    return [found[index] for index in sorted(found)]


def encoder_of(model: keras.Model) -> keras.Model:
    return model.get_layer(ENCODER_NAME)


def trainable_params(model: keras.Model) -> int:
    return int(sum(keras.ops.size(w) for w in model.trainable_weights))


def total_params(model: keras.Model) -> int:
    return int(sum(keras.ops.size(w) for w in model.weights))
