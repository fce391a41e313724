"""Assembling the frozen encoder and a decoder into one U-Net.

The full model is `image (RGB 0..255) -> preprocess -> encoder -> decoder -> logits`, and the
decoder is a model of its own whose inputs are the encoder's taps. Training can then run on
the full model, or on the decoder alone over cached encoder features (the encoder is frozen,
so both give the same gradients to the same decoder weights).
"""

from __future__ import annotations

import keras
from keras import layers

from zoo import blocks
from zoo.config import TUTORIAL_FILTERS, DecoderConfig
from zoo.encoder import TAPS, TUTORIAL_TAPS, build_encoder, tap_name

STRIDES = sorted(TAPS)  # 2, 4, 8, 16, 32
DECODER_NAME = "decoder"
ENCODER_NAME = "encoder"


def build(config: DecoderConfig, weights="imagenet", encoder: keras.Model | None = None) -> keras.Model:
    """A U-Net for `config`. Pass `encoder` to share one frozen encoder between many models
    (safe because it never changes) instead of reading the weights file again."""
    encoder = encoder or build_encoder(weights)
    decoder = build_decoder(config, [t.shape[-1] for t in encoder.outputs])
    return assemble(encoder, decoder, name=f"unet_{config.name}")


def assemble(encoder: keras.Model, decoder: keras.Model, name: str) -> keras.Model:
    image = keras.Input((None, None, 3), name="image")
    # The model owns its preprocessing: callers pass RGB 0..255, MobileNetV2 wants [-1, 1].
    scaled = layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess")(image)
    return keras.Model(image, decoder(encoder(scaled, training=False)), name=name)


def build_decoder(config: DecoderConfig, channels: list[int]) -> keras.Model:
    """Decoder over the encoder's taps at strides 2..32, coarse-to-fine filters from the config."""
    taps = [keras.Input((None, None, c), name=tap_name(s)) for s, c in zip(STRIDES, channels)]
    by_stride = dict(zip(STRIDES, taps))
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
    return keras.Model(taps, logits, name=DECODER_NAME)


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
    """The encoder's taps for RGB 0..255 images, through the model's own preprocessing (its
    decoder's inputs, in order)."""
    scaled = model.get_layer("preprocess")(images)
    return list(encoder_of(model)(scaled, training=False))


def decoder_of(model: keras.Model) -> keras.Model:
    return model.get_layer(DECODER_NAME)


def encoder_of(model: keras.Model) -> keras.Model:
    return model.get_layer(ENCODER_NAME)


def trainable_params(model: keras.Model) -> int:
    return int(sum(keras.ops.size(w) for w in model.trainable_weights))


def total_params(model: keras.Model) -> int:
    return int(sum(keras.ops.size(w) for w in model.weights))
