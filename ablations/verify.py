"""Scoring a saved-form model end to end (RGB in, mask out) exactly as the app will run it."""
from __future__ import annotations

import numpy as np

from zoo.metrics import Confusion, iou_distribution, per_image_iou
from zoo.predict import Segmenter


def full_model_scores(model, threshold: float, images: np.ndarray, masks: np.ndarray) -> dict:
    segmenter = Segmenter(model, threshold=threshold)
    confusion, ious = Confusion(), []
    for image, mask in zip(images, masks):
        predicted = segmenter.predict(image)
        confusion.update(mask, predicted)
        ious.append(per_image_iou(mask, predicted))
    return {**confusion.scores(), "image_iou": iou_distribution(ious)}
