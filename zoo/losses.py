"""Losses on logits. About 18 % of pixels are buildings, so plain BCE under-weights them;
Dice and focal losses are the usual counterweights, and BCE + Dice is the common blend."""
from __future__ import annotations

import keras
from keras import ops

LOSSES = ("bce", "dice", "bce_dice", "focal")


@keras.saving.register_keras_serializable(package="zoo")
class SegmentationLoss(keras.losses.Loss):
    """kind in LOSSES; `dice_weight` scales the Dice term of bce_dice."""

    def __init__(self, kind: str = "bce_dice", dice_weight: float = 1.0, focal_gamma: float = 2.0,
                 name=None, **kwargs):
        if kind not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")
        super().__init__(name=name or kind, **kwargs)
        self.kind, self.dice_weight, self.focal_gamma = kind, dice_weight, focal_gamma

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, y_pred.dtype)
        if self.kind == "bce":
            return bce(y_true, y_pred)
        if self.kind == "dice":
            return soft_dice_loss(y_true, y_pred)
        if self.kind == "focal":
            return focal(y_true, y_pred, self.focal_gamma)
        return bce(y_true, y_pred) + self.dice_weight * soft_dice_loss(y_true, y_pred)

    def get_config(self):
        return {**super().get_config(), "kind": self.kind, "dice_weight": self.dice_weight,
                "focal_gamma": self.focal_gamma}


def bce(y_true, logits):
    per_pixel = ops.binary_crossentropy(y_true, logits, from_logits=True)
    return ops.mean(per_pixel, axis=(1, 2, 3))


def soft_dice_loss(y_true, logits, smooth: float = 1.0):
    # Per image, so an empty tile predicted empty costs ~0 (smooth keeps 0/0 away).
    prob = ops.sigmoid(logits)
    intersection = ops.sum(y_true * prob, axis=(1, 2, 3))
    total = ops.sum(y_true, axis=(1, 2, 3)) + ops.sum(prob, axis=(1, 2, 3))
    return 1.0 - (2.0 * intersection + smooth) / (total + smooth)


def focal(y_true, logits, gamma: float = 2.0, alpha: float = 0.25):
    """Lin et al. 2017: down-weights easy pixels so the rare hard ones drive the gradient."""
    prob = ops.sigmoid(logits)
    ce = ops.binary_crossentropy(y_true, logits, from_logits=True)
    p_t = y_true * prob + (1 - y_true) * (1 - prob)
    alpha_t = y_true * alpha + (1 - y_true) * (1 - alpha)
    return ops.mean(alpha_t * ops.power(1 - p_t, gamma) * ce, axis=(1, 2, 3))
