"""Losses on logits. About 18 % of pixels are buildings, so plain BCE under-weights them;
Dice and focal losses are the usual counterweights, and BCE + Dice is the common blend."""

from __future__ import annotations

import keras
from keras import ops

LOSSES = ("bce", "dice", "bce_dice", "focal")
# A label value that trains nothing (a pixel set aside carries it in place of 0 or 1); the
# label-noise filter that set pixels aside is on the tag research-2026-12, the loss keeps the rule.
IGNORE = 2


@keras.saving.register_keras_serializable(package="zoo")
class SegmentationLoss(keras.losses.Loss):
    """kind in LOSSES; `dice_weight` scales the Dice term of bce_dice.

    Two remedies for noisy labels (volunteer outlines, sometimes shifted off their roofs):
    `label_smoothing` pulls the BCE targets towards 0.5 by that much, so a confidently wrong
    label costs less; `edge_band` (pixels) ignores a band that wide on each side of every
    label edge, where a shifted outline and the roof disagree, in BCE and Dice alike."""

    def __init__(
        self,
        kind: str = "bce_dice",
        dice_weight: float = 1.0,
        focal_gamma: float = 2.0,
        label_smoothing: float = 0.0,
        edge_band: int = 0,
        name=None,
        **kwargs,
    ):
        if kind not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")
        if not 0.0 <= label_smoothing < 1.0 or edge_band < 0:
            raise ValueError(
                f"label_smoothing must be in [0, 1) and edge_band >= 0, got "
                f"{label_smoothing!r} and {edge_band!r}"
            )
        super().__init__(name=name or kind, **kwargs)
        self.kind, self.dice_weight, self.focal_gamma = kind, dice_weight, focal_gamma
        self.label_smoothing, self.edge_band = float(label_smoothing), int(edge_band)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, y_pred.dtype)
        pixel_weight = None
        if y_true.shape[-1] == 2:  # the target and each pixel's weight (a separation map)
            y_true, pixel_weight = y_true[..., :1], y_true[..., 1:]
        known = ops.cast(y_true < IGNORE - 0.5, y_pred.dtype)
        y_true = y_true * known
        weight = away_from_edges(y_true, self.edge_band) * known
        target = y_true * (1.0 - self.label_smoothing) + 0.5 * self.label_smoothing
        if self.kind == "bce":
            return bce(target, y_pred, weight, pixel_weight)
        if self.kind == "dice":
            return soft_dice_loss(y_true, y_pred, weight=weight)
        if self.kind == "focal":
            return focal(
                target, y_pred, self.focal_gamma, weight if pixel_weight is None else weight * pixel_weight
            )
        return bce(target, y_pred, weight, pixel_weight) + self.dice_weight * soft_dice_loss(
            y_true, y_pred, weight=weight
        )

    def get_config(self):
        return {
            **super().get_config(),
            "kind": self.kind,
            "dice_weight": self.dice_weight,
            "focal_gamma": self.focal_gamma,
            "label_smoothing": self.label_smoothing,
            "edge_band": self.edge_band,
        }


def away_from_edges(y_true, band: int):
    """1 where the (2*band+1)-pixel square around a pixel holds one class only, else 0;
    all ones when band is 0. Dilation minus erosion (max pools) marks the band."""
    if band == 0:
        return ops.ones_like(y_true)
    size = 2 * band + 1
    dilated = ops.max_pool(y_true, size, strides=1, padding="same")
    eroded = -ops.max_pool(-y_true, size, strides=1, padding="same")
    return 1.0 - (dilated - eroded)


def bce(y_true, logits, weight=None, pixel_weight=None):
    """Mean BCE over the pixels `weight` keeps (all when None). `pixel_weight` (the U-Net
    separation map) scales each pixel's term without renormalising: a gap pixel of weight 11
    counts as eleven pixels, every other pixel as before."""
    per_pixel = ops.binary_crossentropy(y_true, logits, from_logits=True)
    if pixel_weight is not None:
        per_pixel = per_pixel * pixel_weight
    if weight is None:
        return ops.mean(per_pixel, axis=(1, 2, 3))
    return ops.sum(per_pixel * weight, axis=(1, 2, 3)) / ops.maximum(ops.sum(weight, axis=(1, 2, 3)), 1.0)


def soft_dice_loss(y_true, logits, smooth: float = 1.0, weight=None):
    # Per image, so an empty tile predicted empty costs ~0 (smooth keeps 0/0 away).
    prob = ops.sigmoid(logits)
    if weight is not None:
        y_true, prob = y_true * weight, prob * weight
    intersection = ops.sum(y_true * prob, axis=(1, 2, 3))
    total = ops.sum(y_true, axis=(1, 2, 3)) + ops.sum(prob, axis=(1, 2, 3))
    return 1.0 - (2.0 * intersection + smooth) / (total + smooth)


def focal(y_true, logits, gamma: float = 2.0, alpha: float = 0.25, weight=None):
    """Lin et al. 2017: down-weights easy pixels so the rare hard ones drive the gradient."""
    prob = ops.sigmoid(logits)
    ce = ops.binary_crossentropy(y_true, logits, from_logits=True)
    p_t = y_true * prob + (1 - y_true) * (1 - prob)
    alpha_t = y_true * alpha + (1 - y_true) * (1 - alpha)
    per_pixel = alpha_t * ops.power(1 - p_t, gamma) * ce
    return ops.mean(per_pixel if weight is None else per_pixel * weight, axis=(1, 2, 3))
