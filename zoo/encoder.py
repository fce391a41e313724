"""The frozen ImageNet MobileNetV2 encoder, its skip taps and where its weights come from."""

from __future__ import annotations

import os
from pathlib import Path

import keras

WEIGHTS_ENV = "ZOO_ENCODER_WEIGHTS"
WEIGHTS_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"

# Skip taps by output stride. The stride-2..4 taps are the narrow linear-bottleneck outputs
# (16 and 24 channels) rather than the 96/144-channel expansions the TF tutorial uses: at
# high resolution they carry the edges the decoder needs at a sixth of the memory, which is
# what lets a study cache every tile's features. Deeper taps keep the wide expansions,
# where the semantic signal lives and the maps are small.
TAPS = {
    2: "expanded_conv_project_BN",
    4: "block_2_add",
    8: "block_6_expand_relu",
    16: "block_13_expand_relu",
    32: "out_relu",
}
# The taps of the TensorFlow segmentation tutorial (pix2pix decoder), strides 2..32.
TUTORIAL_TAPS = {
    2: "block_1_expand_relu",
    4: "block_3_expand_relu",
    8: "block_6_expand_relu",
    16: "block_13_expand_relu",
    32: "block_16_project",
}


def tap_name(stride: int) -> str:
    """The name of the decoder input fed by the encoder tap at `stride` (zoo.unet, training.features)."""
    return f"tap_s{stride}"


class WeightsUnavailable(RuntimeError):
    """The ImageNet weights could be neither found locally nor downloaded."""


def resolve_weights(weights: str | os.PathLike | None = "imagenet") -> str | None:
    """Turn the `weights` argument into what keras.applications accepts.

    "imagenet" prefers a file named by $ZOO_ENCODER_WEIGHTS, then the Keras cache, then the
    normal Keras download. None means random weights and is only ever used when asked for.
    """
    if weights is None:
        return None
    if weights != "imagenet":
        return _existing_file(Path(weights), "weights path")
    from_env = os.environ.get(WEIGHTS_ENV)
    if from_env:
        return _existing_file(Path(from_env), f"${WEIGHTS_ENV}")
    return "imagenet"


def _existing_file(path: Path, what: str) -> str:
    if not path.is_file():
        raise WeightsUnavailable(f"{what} {str(path)!r} is not a file: point it at {WEIGHTS_FILE}")
    return str(path)


def build_encoder(weights="imagenet", taps: dict[int, str] = TAPS) -> keras.Model:
    """MobileNetV2 (alpha 1.0) cut at `taps`, frozen. Takes inputs already scaled to [-1, 1]."""
    source = resolve_weights(weights)
    try:
        base = keras.applications.MobileNetV2(
            input_shape=(None, None, 3), include_top=False, alpha=1.0, weights=source
        )
    except Exception as error:  # download refused, truncated file, wrong layout ...
        raise WeightsUnavailable(_how_to_fix(source, error)) from error
    outputs = [base.get_layer(name).output for _, name in sorted(taps.items())]
    encoder = keras.Model(base.input, outputs, name="encoder")
    # trainable=False freezes the weights and, in Keras 3, also makes every
    # BatchNormalization layer run in inference mode, even inside fit().
    encoder.trainable = False
    return encoder


def _how_to_fix(source, error: Exception) -> str:
    if source == "imagenet":
        return (
            f"could not get the ImageNet MobileNetV2 weights ({type(error).__name__}: {error}). "
            f"Without internet, set {WEIGHTS_ENV}=/path/to/{WEIGHTS_FILE} or copy that file "
            f"into $KERAS_HOME/models/ (default ~/.keras/models/)."
        )
    return f"weights file {source!r} is not usable MobileNetV2 weights: {error}"
