"""Decoder pieces, each small and chosen by name from a DecoderConfig.

Registries map a config value to a function, so a new upsampler or merge is one function
plus one entry, and every study can use it at once.
"""

from __future__ import annotations

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="zoo")
class DepthToSpace(layers.Layer):
    """Sub-pixel shuffle: (H, W, C*r*r) -> (H*r, W*r, C), as in ESPCN (Shi et al. 2016)."""

    def __init__(self, factor: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, x):
        r = self.factor
        shape = ops.shape(x)
        b, h, w, c = shape[0], shape[1], shape[2], x.shape[-1]
        x = ops.reshape(x, (b, h, w, r, r, c // (r * r)))
        x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
        return ops.reshape(x, (b, h * r, w * r, c // (r * r)))

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        r = self.factor
        scale = lambda d: None if d is None else d * r  # noqa: E731
        return (b, scale(h), scale(w), c // (r * r))

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


@keras.saving.register_keras_serializable(package="zoo")
class BilinearUpsample(layers.Layer):
    """2x bilinear resize that works on inputs of any size.

    keras.layers.UpSampling2D(interpolation="bilinear") fails once tf.function retraces
    with unknown height and width, which is exactly what serving images of any size does.
    """

    def call(self, x):
        import tensorflow as tf  # the project runs Keras on the TensorFlow backend

        size = tf.shape(x)[1:3] * 2
        return tf.cast(tf.image.resize(x, size, method="bilinear"), x.dtype)

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        return (b, None if h is None else 2 * h, None if w is None else 2 * w, c)


def conv_bn_relu(
    x, filters: int, name: str, kernel_size: int = 3, separable: bool = False, relu: bool = True
):
    conv = layers.SeparableConv2D if separable else layers.Conv2D
    x = conv(filters, kernel_size, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x) if relu else x


# ---- upsamplers: (x, filters, name) -> x at twice the resolution, `filters` channels ----


def upsample_transpose(x, filters, name):
    # 2x2 stride-2 kernels tile the output exactly (the original U-Net "up-conv"),
    # avoiding the checkerboard overlap of 3x3 stride-2 transpose convolutions.
    x = layers.Conv2DTranspose(filters, 2, strides=2, use_bias=False, name=f"{name}_tconv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def upsample_bilinear(x, filters, name):
    x = BilinearUpsample(name=f"{name}_bilinear")(x)
    return conv_bn_relu(x, filters, name)


def upsample_nearest(x, filters, name):
    x = layers.UpSampling2D(2, interpolation="nearest", name=f"{name}_nearest")(x)
    return conv_bn_relu(x, filters, name)


def upsample_subpixel(x, filters, name):
    x = layers.Conv2D(filters * 4, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = DepthToSpace(2, name=f"{name}_shuffle")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


UPSAMPLERS = {
    "transpose": upsample_transpose,
    "bilinear": upsample_bilinear,
    "nearest": upsample_nearest,
    "subpixel": upsample_subpixel,
}


# ---- skip merges: (up, skip, coarse, filters, name) -> merged ----
# `up` is the upsampled decoder feature, `skip` the encoder tap at the same resolution and
# `coarse` the decoder feature before upsampling (the attention gate's gating signal).


def merge_concat(up, skip, coarse, filters, name):
    return layers.Concatenate(name=f"{name}_concat")([up, skip])


def merge_add(up, skip, coarse, filters, name):
    # LinkNet/FPN style: project the tap to the decoder's width, then sum.
    projected = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_proj")(skip)
    projected = layers.BatchNormalization(name=f"{name}_proj_bn")(projected)
    return layers.Add(name=f"{name}_add")([up, projected])


def merge_none(up, skip, coarse, filters, name):
    return up


def merge_attention(up, skip, coarse, filters, name):
    gated = attention_gate(skip, coarse, max(4, filters // 2), name)
    return layers.Concatenate(name=f"{name}_concat")([up, gated])


def attention_gate(skip, gate, inter_filters, name):
    """Additive attention gate of Oktay et al. 2018 (Attention U-Net).

    The coarser decoder feature `gate` says where to look; the skip tap is brought to the
    gate's resolution by a strided 2x2 conv, the two are summed, and a 1x1 conv + sigmoid
    gives one coefficient in [0, 1] per skip pixel, upsampled back and multiplied in.
    """
    theta = layers.Conv2D(inter_filters, 2, strides=2, use_bias=False, name=f"{name}_att_theta")(skip)
    phi = layers.Conv2D(inter_filters, 1, name=f"{name}_att_phi")(gate)
    joint = layers.ReLU(name=f"{name}_att_relu")(layers.Add(name=f"{name}_att_add")([theta, phi]))
    psi = layers.Conv2D(1, 1, name=f"{name}_att_psi")(joint)
    alpha = layers.Activation("sigmoid", name=f"{name}_attention_coefficients")(psi)
    alpha = BilinearUpsample(name=f"{name}_att_up")(alpha)
    return layers.Multiply(name=f"{name}_att_apply")([skip, alpha])


SKIP_MERGES = {
    "concat": merge_concat,
    "add": merge_add,
    "none": merge_none,
    "attention": merge_attention,
}


# ---- conv blocks: (x, filters, name, relu_out) -> x ----
# relu_out=False leaves the block's output linear (the decoder's "linear" head).


def conv_double(x, filters, name, relu_out=True):
    x = conv_bn_relu(x, filters, f"{name}_a")
    return conv_bn_relu(x, filters, f"{name}_b", relu=relu_out)


def conv_separable(x, filters, name, relu_out=True):
    x = conv_bn_relu(x, filters, f"{name}_a", separable=True)
    return conv_bn_relu(x, filters, f"{name}_b", separable=True, relu=relu_out)


CONV_BLOCKS = {"double": conv_double, "separable": conv_separable}
