"""Buildings one by one: each tile's instance labels, and the training targets that know them.

The masks merge buildings that touch, and a model trained on them fills the narrow ground
between neighbours too (issue 33). The source outlines (`labels/AREA.geojson`, OpenStreetMap,
EPSG:4326) say which pixels belong to which building: rasterised in the tile's Web-Mercator
bounds they give each building its own label; mask pixels that no outline covers are labelled
by their 8-connected component. From the labels, `training_target` makes what a recipe's
`target` trains on: the U-Net paper's separation weight map, with touching buildings parted.
"""

from __future__ import annotations

import functools
import json
import math
import pathlib
from typing import Sequence

import cv2
import numpy as np

from data.folders import Sample, tile_position

__all__ = [
    "SEPARATION_MAPS",
    "TARGETS",
    "WEIGHT_STEPS",
    "contact_pixels",
    "from_components",
    "instance_labels",
    "load_instances",
    "rasterise_outlines",
    "separation_weights",
    "tile_bounds",
    "training_target",
]

# The U-Net paper's w0 and sigma (Ronneberger et al. 2015, eq. 2): the extra weight on a
# gap pixel and how fast it fades with the summed distance to the two nearest buildings.
W0, SIGMA = 10.0, 5.0
# What a decoder can be trained on (training.recipe.Recipe.target) -> (w0, sigma) of its
# separation map: "mask", the building mask as it is (no map); "separation", the mask with
# touching buildings parted by a gap, each pixel of the loss weighted by the U-Net map (large
# on the thin ground between two buildings); "separation_wide", the same map fading over 12 px
# instead of 5: the gaps the served model fills on an unseen city are mostly 6-15 px wide
# (experiments/separation/README.md).
SEPARATION_MAPS = {"mask": None, "separation": (W0, SIGMA), "separation_wide": (W0, 12.0)}
TARGETS = tuple(SEPARATION_MAPS)
# Weights are stored as uint8 multiples of 1/WEIGHT_STEPS (up to 255/16 = 15.9 > 1 + W0).
WEIGHT_STEPS = 16
# Web Mercator (EPSG:3857): the sphere's radius and the width of the world in metres.
EARTH_RADIUS = 6378137.0
WORLD = 2 * math.pi * EARTH_RADIUS
NATIVE_SIDE = 256  # the side the committed masks were rasterised at (OAM tiles)


def tile_bounds(name: str) -> tuple[float, float, float, float] | None:
    """(west, south, east, north) in Web-Mercator metres of the XYZ tile `name`, else None."""
    position = tile_position(name)
    if position is None:
        return None
    zoom, x, y = position
    side = WORLD / 2**zoom
    west, north = -WORLD / 2 + x * side, WORLD / 2 - y * side
    return west, north - side, west + side, north


def mercator(lon: float, lat: float) -> tuple[float, float]:
    """A WGS84 point (degrees) in Web-Mercator metres."""
    return (
        EARTH_RADIUS * math.radians(lon),
        EARTH_RADIUS * math.log(math.tan(math.pi / 4 + math.radians(lat) / 2)),
    )


@functools.lru_cache(maxsize=16)
def load_outlines(path: str) -> tuple[dict, ...]:
    """The polygons of a GeoJSON file (EPSG:4326), as GeoJSON geometries in Web-Mercator metres."""
    features = json.loads(pathlib.Path(path).read_text())["features"]
    outlines = []
    for feature in features:
        geometry = feature.get("geometry") or {}
        polygons = {"Polygon": [geometry.get("coordinates")], "MultiPolygon": geometry.get("coordinates")}
        for rings in polygons.get(geometry.get("type"), []):
            projected = [[mercator(*point[:2]) for point in ring] for ring in rings]
            outlines.append({"type": "Polygon", "coordinates": projected})
    return tuple(outlines)


def rasterise_outlines(outlines: Sequence[dict], name: str, side: int = 256) -> np.ndarray | None:
    """int32 labels of tile `name` at `side` pixels a side: outline i is label i+1 (a later
    outline over an earlier one wins), 0 elsewhere; None for a name outside the XYZ grid."""
    from rasterio import features, transform  # GDAL: loaded only where outlines are rasterised

    bounds = tile_bounds(name)
    if bounds is None:
        return None
    labels = np.zeros((side, side), np.int32)
    if outlines:
        features.rasterize(
            [(outline, number) for number, outline in enumerate(outlines, start=1)],
            out=labels,
            transform=transform.from_bounds(*bounds, side, side),
        )
    return labels


def instance_labels(mask: np.ndarray, outlined: np.ndarray | None) -> np.ndarray:
    """uint16 labels 1..n of the buildings of `mask`: `outlined` (rasterised outlines) where the
    mask is building, and each 8-connected component of the mask pixels no outline covers as a
    building of its own. The mask decides what is building: labels > 0 equals mask > 0."""
    mask = np.asarray(mask) > 0
    if outlined is None:
        return from_components(mask)
    labels = np.where(mask, outlined, 0)
    if not labels.any():
        return from_components(mask)
    # The mask's edge pixels differ from this rasterisation by a pixel here and there: a mask
    # component holding outlined pixels gives its uncovered pixels to the nearest outline.
    _, nearest = cv2.distanceTransformWithLabels(
        (labels == 0).astype(np.uint8), cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL
    )
    owner = np.zeros(int(nearest.max()) + 1, np.int32)  # each outlined pixel's own number -> its label
    owner[nearest[labels > 0]] = labels[labels > 0]
    count, components = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    has_outline = np.zeros(count, bool)
    has_outline[np.unique(components[labels > 0])] = True
    uncovered = mask & (labels == 0)
    adopted = uncovered & has_outline[components]
    labels[adopted] = owner[nearest[adopted]]
    # Components no outline touches are buildings of their own.
    alone = uncovered & ~adopted
    labels[alone] = components[alone] + labels.max(initial=0)
    return _consecutive(labels)


def from_components(mask: np.ndarray) -> np.ndarray:
    """uint16 labels of the mask's 8-connected components (no outlines known)."""
    _, labels = cv2.connectedComponents((np.asarray(mask) > 0).astype(np.uint8), connectivity=8)
    return labels.astype(np.uint16)


def _consecutive(labels: np.ndarray) -> np.ndarray:
    present = np.unique(labels)
    present = present[present > 0]
    if len(present) >= 2**16:
        raise ValueError(f"{len(present)} buildings in one tile: more than uint16 labels hold")
    lookup = np.zeros(int(labels.max(initial=0)) + 1, np.uint16)
    lookup[present] = np.arange(1, len(present) + 1)
    return lookup[labels]


def labels_folder(sample: Sample) -> pathlib.Path:
    """Where a data folder keeps its outlines: `labels/` beside `images/` and `masks/`."""
    return pathlib.Path(sample.image_path).parent.parent / "labels"


def load_instances(samples: Sequence[Sample], masks: np.ndarray) -> np.ndarray:
    """(N, H, W) uint16 instance labels of `samples`, whose masks as loaded (any size) are `masks`:
    from `labels/AREA.geojson` rasterised at the mask's native 256 px where the file and an XYZ
    name exist (then resized like the mask, nearest), else from the mask's components."""
    out = np.zeros(masks.shape, np.uint16)
    for i, (sample, mask) in enumerate(zip(samples, masks)):
        path = labels_folder(sample) / f"{sample.area}.geojson"
        outlined = None
        if sample.area and path.is_file():
            outlined = rasterise_outlines(load_outlines(str(path)), sample.name, NATIVE_SIDE)
        if outlined is not None and outlined.shape != mask.shape:
            outlined = cv2.resize(
                outlined.astype(np.float32), mask.shape[::-1], interpolation=cv2.INTER_NEAREST
            )
            outlined = outlined.astype(np.int32)
        out[i] = instance_labels(mask, outlined)
    return out


# --------------------------------------------------------------------------- targets


def contact_pixels(labels: np.ndarray) -> np.ndarray:
    """bool: building pixels with a pixel of another building among their 8 neighbours. Cleared
    from the target, they leave a gap of about 2 px between touching buildings, which the
    decoder's stride-2 logits can draw and 8-connected components do not jump."""
    labels = np.asarray(labels).astype(np.int32)
    kernel = np.ones((3, 3), np.uint8)
    largest = cv2.dilate(labels.astype(np.float32), kernel)  # float: OpenCV dilates no int32
    smallest = -cv2.dilate(-np.where(labels > 0, labels, np.iinfo(np.int32).max).astype(np.float32), kernel)
    return (labels > 0) & ((largest > labels) | (smallest < labels))


def separation_weights(labels: np.ndarray, w0: float = W0, sigma: float = SIGMA) -> np.ndarray:
    """float32 w(x) = w_c(x) + w0 exp(-(d1(x) + d2(x))² / 2 sigma²) on the background (U-Net, eq. 2),
    d1 and d2 the distances (px) to the nearest and second-nearest building; 1 on buildings.
    w_c = 1: the loss's Dice term already balances building against background pixels."""
    labels = np.asarray(labels)
    weights = np.ones(labels.shape, np.float32)
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if len(ids) < 2:
        return weights
    nearest = np.full(labels.shape, np.inf, np.float32)
    second = np.full(labels.shape, np.inf, np.float32)
    for building in ids:
        distance = cv2.distanceTransform((labels != building).astype(np.uint8), cv2.DIST_L2, 5)
        second = np.minimum(second, np.maximum(nearest, distance))
        nearest = np.minimum(nearest, distance)
    background = labels == 0
    weights[background] += w0 * np.exp(-((nearest + second)[background] ** 2) / (2 * sigma**2))
    return weights


def training_target(labels: np.ndarray, target: str) -> np.ndarray:
    """(H, W, 2) uint8: what pixel is building, and its loss weight x WEIGHT_STEPS, for `target`."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    labels = np.asarray(labels)
    if SEPARATION_MAPS[target] is None:
        building, weights = labels > 0, np.ones(labels.shape, np.float32)
    else:
        w0, sigma = SEPARATION_MAPS[target]
        building = (labels > 0) & ~contact_pixels(labels)
        weights = separation_weights(np.where(building, labels, 0), w0, sigma)
    steps = np.clip(np.round(weights * WEIGHT_STEPS), 0, 255).astype(np.uint8)
    return np.stack([building.astype(np.uint8), steps], axis=-1)
