"""Splitting a building probability map into buildings, before their outlines are traced.

Thresholded, a probability map joins neighbouring roofs wherever the ground between them scores
above the threshold, and every 8-connected blob then counts as one building (issue 33). Here
each blob is split by a watershed on the probabilities, seeded where the model is sure: every
core of pixels at or above `seed_threshold` (or, with `seeds="distance"`, every part of the blob
at least `core_radius` pixels from its edge) grows into the blob's pixels at or above `threshold`
until it meets another, along the least probable ridge between them. A blob with no core stays
whole (or, with `unsure="drop"`, is no building). Otherwise the pixels that are building do not
change: only who owns them.

`separated_mask` draws the labelled buildings apart (a pixel that touches a building of a lower
label is dropped) so that the mask's 8-connected components are those buildings: the form
building counts (zoo.metrics.BuildingCounts) and outline tracing (zoo.polygons) read.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

SEEDS = ("probability", "distance")
UNSURE = ("keep", "drop")  # what becomes of a blob with no core
# Defaults, fixed before the held-out cities were scored (experiments/separation/README.md).
SEED_THRESHOLD = 0.8
CORE_RADIUS = 3.0  # pixels
MIN_SEED_PIXELS = 4  # a smaller core is noise, not a building of its own


def split_buildings(
    probs: np.ndarray,
    threshold: float = 0.5,
    seeds: str = "probability",
    seed_threshold: float = SEED_THRESHOLD,
    core_radius: float = CORE_RADIUS,
    min_seed_pixels: int = MIN_SEED_PIXELS,
    unsure: str = "keep",
) -> np.ndarray:
    """int32 labels 1..n of the buildings of `probs >= threshold` (0 elsewhere), blobs split at
    the least probable ridge between the cores (`seeds`, module docstring) they hold. A blob
    with no core is one building (`unsure="keep"`) or none (`"drop"`: only sure buildings)."""
    if unsure not in UNSURE:
        raise ValueError(f"unsure must be one of {', '.join(UNSURE)}, got {unsure!r}")
    if seeds not in SEEDS:
        raise ValueError(f"seeds must be one of {', '.join(SEEDS)}, got {seeds!r}")
    probs = np.asarray(probs, np.float32)
    if probs.ndim == 3 and probs.shape[-1] == 1:
        probs = probs[..., 0]
    building = probs >= threshold
    if not building.any():
        return np.zeros(probs.shape, np.int32)
    if seeds == "probability":
        cores = building & (probs >= seed_threshold)
    else:
        distance = cv2.distanceTransform(building.astype(np.uint8), cv2.DIST_L2, 5)
        cores = distance >= core_radius
    count, markers = cv2.connectedComponents(cores.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    sizes = np.bincount(markers.ravel(), minlength=count)
    markers[(sizes < min_seed_pixels)[markers]] = 0
    # A blob without a core of its own is seeded whole, so no other blob's core claims it.
    _, blobs = cv2.connectedComponents(building.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    seeded = np.zeros(blobs.max() + 1, bool)
    seeded[blobs[markers > 0]] = True
    unseeded = building & ~seeded[blobs]
    if unsure == "drop":
        building &= ~unseeded
    else:
        markers[unseeded] = blobs[unseeded] + markers.max()
    # Flooded from the cores in order of falling probability (an image-foresting watershed): two
    # cores meet on the least probable path between them. Ground below the threshold costs more
    # than any building pixel, so a core never reaches another blob through it.
    cost = np.round((1.0 - np.clip(probs, 0.0, 1.0)) * 254).astype(np.uint8)
    cost[~building] = 255
    labels = ndimage.watershed_ift(cost, markers, structure=np.ones((3, 3), bool))
    labels[~building] = 0
    return _consecutive(labels)


def _consecutive(labels: np.ndarray) -> np.ndarray:
    present = np.unique(labels)
    present = present[present > 0]
    lookup = np.zeros(int(labels.max(initial=0)) + 1, np.int32)
    lookup[present] = np.arange(1, len(present) + 1, dtype=np.int32)
    return lookup[np.maximum(labels, 0)]


def separated_mask(labels: np.ndarray) -> np.ndarray:
    """uint8 {0,1}: the labelled buildings, each pixel with a pixel of a lower-labelled building
    among its 8 neighbours dropped, so no two buildings touch and the 8-connected components of
    the result are the buildings (a one-pixel seam between two that met)."""
    labels = np.asarray(labels)
    others = np.where(labels > 0, labels, np.iinfo(np.int32).max).astype(np.float32)
    lowest_neighbour = -cv2.dilate(-others, np.ones((3, 3), np.uint8))
    return ((labels > 0) & ~(lowest_neighbour < labels)).astype(np.uint8)


def building_mask(probs: np.ndarray, threshold: float = 0.5, **options) -> np.ndarray:
    """uint8 {0,1} mask whose 8-connected components are the split buildings (split_buildings)."""
    return separated_mask(split_buildings(probs, threshold, **options))
