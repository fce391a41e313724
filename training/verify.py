"""Scoring a saved-form model end to end (RGB in, mask out) exactly as the app will run it."""

from __future__ import annotations

import numpy as np

from zoo.metrics import summarise
from zoo.predict import Segmenter


def full_model_scores(
    model, threshold: float, images: np.ndarray, masks: np.ndarray, tta: str = "none", scales=(1.0,)
) -> dict:
    """Scores of the whole model as zoo.predict serves it, with these test-time views and scales."""
    segmenter = Segmenter(model, threshold=threshold, tta=tta, scales=tuple(scales))
    return summarise((mask, segmenter.predict(image)) for image, mask in zip(images, masks))
