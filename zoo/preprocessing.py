"""How the model turns RGB 0..255 into the [-1, 1] input MobileNetV2 was trained on.

"scale": a fixed rescaling, as ImageNet trained it. "standardize": each image's own
channel means and spreads are removed first (gray-world colour constancy plus contrast
normalisation), so a city photographed brighter, hazier or with another colour balance
reaches the encoder looking like the training cities. The model owns this step, so serving
applies exactly what training saw.
"""
from __future__ import annotations

import keras
from keras import layers, ops

from zoo.config import PREPROCESSING

# Output spread of "standardize": +-2 standard deviations land on +-1, the range the fixed
# scaling gives a typical image.
STANDARD_SPREAD = 0.5
# A near-flat image (a roof filling the tile, water) has a tiny spread; the floor (in 0..255
# levels) keeps its noise from being amplified into structure.
MIN_STD = 8.0


@keras.saving.register_keras_serializable(package="zoo")
class PerImageStandardization(layers.Layer):
    """(x - mean) / max(std, MIN_STD) * STANDARD_SPREAD per image and channel, clipped to [-1, 1]."""

    def call(self, images):
        images = ops.cast(images, "float32")
        mean = ops.mean(images, axis=(1, 2), keepdims=True)
        std = ops.sqrt(ops.mean(ops.square(images - mean), axis=(1, 2), keepdims=True))
        scaled = (images - mean) / ops.maximum(std, MIN_STD) * STANDARD_SPREAD
        return ops.clip(scaled, -1.0, 1.0)


def preprocessing_layer(kind: str) -> layers.Layer:
    if kind == "scale":
        return layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess")
    if kind == "standardize":
        return PerImageStandardization(name="preprocess")
    raise ValueError(f"preprocessing must be one of {PREPROCESSING}, got {kind!r}")
