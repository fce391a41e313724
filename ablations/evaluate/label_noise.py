"""Confident learning for masks: set aside label pixels an out-of-city model confidently disputes.

Volunteer labels miss buildings (Kathmandu) and sit off their roofs (parts of Nairobi). In the
style of confident learning (Northcutt et al. 2021), a pixel labelled background is disputed
when a model's building probability there reaches the mean building probability that model
gives pixels *labelled* building (the class's self-confidence threshold), and symmetrically
for pixels labelled building. Disputed pixels train nothing (zoo.losses.IGNORE).

Honest under cross-validation by city: a fold that holds city C out trains on A and B, and
A's pixels are judged by a model trained on B alone, B's by one trained on A alone. C's labels
never touch the fold, not even through the filter. Those single-city models are trained once
each and reused by every fold.
"""
from __future__ import annotations

import numpy as np

from zoo.losses import IGNORE


def confident_disagreement(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Boolean mask of the label pixels the probabilities confidently dispute.
    labels: (N, H, W) {0, 1}; probs: (N, H, W) building probability."""
    labels = labels.astype(bool)
    if not labels.any() or labels.all():
        return np.zeros(labels.shape, bool)
    building_confidence = probs[labels].mean()      # t_building
    background_confidence = 1 - probs[~labels].mean()  # t_background
    missed_building = ~labels & (probs >= building_confidence)
    false_building = labels & ((1 - probs) >= background_confidence)
    return missed_building | false_building


def judge_of(area: str, train_areas: list[str]) -> str:
    """The city whose single-city model judges `area`'s labels in a fold training on
    `train_areas` (the next one in name order, so the choice is fixed and never the held-out)."""
    others = sorted(a for a in train_areas if a != area)
    return others[0] if others else area


def filtered_masks(masks: np.ndarray, areas: np.ndarray, train_index: np.ndarray,
                   judged: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, float]]:
    """A copy of masks (copies, N, H, W) with the fold's training pixels that their judge
    disputes set to IGNORE, and the fraction set aside per city.

    judged[judge][copy, i]: the judge city's model's probability for copy `copy` of pool tile
    i. Each encoded copy is judged on its own (augmentation moves pixels)."""
    out = masks.copy()
    train_areas = sorted(set(areas[train_index]))
    fractions = {}
    for area in train_areas:
        index = train_index[areas[train_index] == area]
        probs = judged[judge_of(area, train_areas)]
        for copy in range(masks.shape[0]):
            disputed = confident_disagreement(masks[copy, index], probs[copy, index])
            out[copy, index] = np.where(disputed, IGNORE, masks[copy, index])
        fractions[area] = float((out[:, index] == IGNORE).mean())
    return out, fractions


class CopyView:
    """One encoded copy of a FeatureSet, read as if it were copy 0 (duck-types FeatureSet
    for ablations.train.decoder_probabilities)."""

    def __init__(self, features, copy: int):
        self.features, self.copy = features, copy

    @property
    def count(self) -> int:
        return self.features.count

    def batch(self, copy_index: np.ndarray, image_index: np.ndarray):
        return self.features.batch(np.full_like(copy_index, self.copy), image_index)


def flagged_picture(images, masks, disputed, path, title: str, count: int = 4) -> None:
    """RGB, label, and the disputed pixels (red: labelled building, blue: labelled background)
    for the tiles with the most disputed pixels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from zoo.files import atomic_path

    worst = np.argsort(disputed.reshape(len(disputed), -1).mean(axis=1))[::-1][:count]
    figure, axes = plt.subplots(len(worst), 3, figsize=(7.5, 2.5 * len(worst)), squeeze=False)
    for row, i in zip(axes, worst):
        overlay = images[i].astype(np.float32) / 255 * 0.6
        overlay[disputed[i] & (masks[i] == 1)] = (1, 0, 0)
        overlay[disputed[i] & (masks[i] == 0)] = (0, 0.4, 1)
        for axis, picture, name in zip(row, (images[i], masks[i], overlay), ("RGB", "label", "set aside")):
            axis.imshow(picture, cmap="gray" if picture.ndim == 2 else None)
            axis.set_title(name, fontsize=9)
            axis.axis("off")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=80, format="png")
    plt.close(figure)
