"""Building masks to outlines: one polygon per building, as GeoJSON, in lon/lat when the image
is georeferenced and in pixels when it is not.

How an outline is made (no contour tracing of our own):

1. Connected components of the mask, 4-connected (OpenCV), so two roofs that touch only at a
   corner stay two buildings. Each component's mean probability is read off its own pixels.
   A scene too large to hold is taken part by part (`SceneOutlines`), and the buildings a
   part's edge cuts are joined at the end.
2. Components smaller than `min_area` pixels become background, and holes smaller than
   `min_area` pixels, or beyond a building's `MAX_HOLES` largest, are filled in the label
   image (`_fill_holes`): step 4 would drop them anyway, and tracing and simplifying them is
   where a noisy mask spent its time (one region of a 2048 px noise image had 31,000 holes).
3. `rasterio.features.shapes` (GDAL's polygonize) turns each component into its exact
   pixel-edge polygon, the remaining holes included.
4. Each ring is simplified on its own within `tolerance` pixels (Douglas-Peucker), holes and
   parts smaller than `min_area` pixels (slivers, speckle) are dropped, and only a polygon that
   came out invalid is repaired, with `make_valid` (`zoo.outlines.clean`). Every returned
   geometry is a valid Polygon or MultiPolygon.

What one building may cost is bounded: at most `MAX_HOLES` holes (the largest) and
`MAX_VERTICES` vertices (the tolerance is doubled until it fits); a building cut down so is
marked `capped`. Shapely's topology-preserving simplification, used before, grew about
quadratically with a region's holes and held the GIL throughout: 85 s on that noise image,
during which the server could not answer /health. Ring by ring the work is about linear in
pixels, and `outlines` takes a `deadline` after which it stops with `OutlineBudgetExceeded`.

With `outline="regular"`, each cleaned outline is then replaced by its regular shape (straight
edges, right angles: `zoo.outlines`). Buildings with fewer than `min_pixels` mask pixels are
left out; `min_area_m2`, for a georeferenced image, is applied where the areas in m² are known
(`zoo.geojson.feature_collection`). These functions default to the raw, unfiltered outlines;
the server and `app.predict` apply DEFAULT_OUTLINE, DEFAULT_MIN_AREA_M2 and DEFAULT_MIN_PIXELS,
chosen on the held-out cities (experiments/outlines).

Pixel coordinates: x = column, y = row, measured from the image's top-left corner (y grows
downwards), at pixel corners, so a pixel is a unit square. GeoJSON, georeferenced or not:
`zoo.geojson` (its names are importable from here too).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon

from zoo.geojson import (  # noqa: F401 - the GeoJSON half, re-exported: callers import it from here
    AREA_DISTORTION,
    CRS84,
    PIXEL_AXES,
    WGS84,
    feature_collection,
    is_georeferenced,
    orient_all,
)
from zoo.outlines import (  # noqa: F401 - OUTLINES, MAX_VERTICES and clean re-exported
    MAX_HOLES,
    MAX_VERTICES,
    OUTLINES,
    check_outline,
    clean,
    cleaned,
    polygons_in,
    regular,
)

DEFAULT_TOLERANCE = 1.0  # pixels: removes the pixel staircase, keeps corners
DEFAULT_MIN_AREA = 8.0  # pixels: smaller blobs are speckle, not buildings
# Building pixels GDAL traces in one call, which holds the GIL: about 0.1 s of it (`_traced`).
TRACE_PIXELS = 2**19
# What the server and app.predict apply unless asked otherwise, chosen on the held-out cities
# under cross-validation (results/outlines/README.md): raw outlines score 0.003 building F1 and
# 0.005 pixel IoU above regular ones; a minimum of 8 m² raises mean building F1 from 0.18 to
# 0.31; 64 px is the best pixel minimum that keeps every 8 m² building of a 30 cm image.
DEFAULT_OUTLINE = "raw"
DEFAULT_MIN_AREA_M2 = 8.0  # georeferenced images: smaller buildings are left out
DEFAULT_MIN_PIXELS = 64  # images in pixels: buildings with fewer mask pixels are left out


@dataclass(frozen=True)
class Footprint:
    """One building in pixel coordinates: its outline, its pixel count in the mask, and the
    mean predicted probability over those pixels (None when no probabilities were given)."""

    geometry: Polygon | MultiPolygon
    pixels: int
    mean_probability: float | None
    capped: bool = False  # holes or vertices beyond MAX_HOLES / MAX_VERTICES were given up


class OutlineBudgetExceeded(TimeoutError):
    """`outlines` passed its deadline: the mask is too intricate for the time it was given."""


@dataclass(frozen=True)
class Shaping:
    """How a traced building becomes its outline: simplified within `tolerance` pixels, holes
    and parts under `min_area` px² dropped, `outline` "raw" or "regular", and left out when it
    has fewer than `min_pixels` mask pixels."""

    tolerance: float = DEFAULT_TOLERANCE
    min_area: float = DEFAULT_MIN_AREA
    outline: str = "raw"
    min_pixels: int = 0
    frame: tuple[int, int] | None = None  # (height, width): a regular outline stays inside it

    def __post_init__(self):
        check_outline(self.outline)
        if self.min_pixels < 0:
            raise ValueError(f"min_pixels must be at least 0, got {self.min_pixels}")

    @property
    def least_pixels(self) -> float:
        """Fewer mask pixels than this cannot make a building that is kept."""
        return max(self.min_area, self.min_pixels)


def outlines(
    mask,
    probabilities=None,
    tolerance: float = DEFAULT_TOLERANCE,
    min_area: float = DEFAULT_MIN_AREA,
    deadline: float | None = None,
    *,
    outline: str = "raw",
    min_pixels: int = 0,
) -> list[Footprint]:
    """The buildings of an H x W mask (nonzero = building), top to bottom, left to right.

    `probabilities`, an H x W float map, gives each building its mean probability.
    `deadline`, a `time.monotonic()` value, is checked between buildings: past it,
    `OutlineBudgetExceeded` is raised. `outline` and `min_pixels`: see `Shaping`."""
    shaping = Shaping(tolerance, min_area, outline, min_pixels, np.shape(mask)[:2])
    found = []
    _check(deadline)
    for geometry, pixels, total, _, holes_capped in _pieces(mask, probabilities, shaping.least_pixels):
        _check(deadline)
        footprint = _footprint(geometry, pixels, total, shaping, holes_capped)
        if footprint is not None:
            found.append(footprint)
    return sorted(found, key=_reading_order)


def _check(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise OutlineBudgetExceeded("the outlines took longer than their time budget")


def _footprint(geometry, pixels: int, total: float | None, shaping: Shaping, capped: bool = False):
    """The Footprint of one traced building, or None when it is too small to keep."""
    if pixels < shaping.min_pixels:
        return None
    outline, cut_down = cleaned(geometry, shaping.tolerance, shaping.min_area)
    if outline is None:
        return None
    if shaping.outline == "regular" and not (capped or cut_down):  # a capped one is noise, not a roof
        height, width = shaping.frame or (np.inf, np.inf)
        outline = regular(outline, shaping.min_area, within=shapely.box(0, 0, width, height))
    return Footprint(outline, pixels, _mean(total, pixels), capped or cut_down)


class SceneOutlines:
    """The buildings of a scene too large to hold, added part by part (`add`): a building
    inside one part is outlined at once; the pieces of one that a part's edge cuts are kept
    pixel-exact and joined when every part is in (`footprints`), so the result equals what
    `outlines` gives on the whole mask (up to how simplification meets the joined edge)."""

    def __init__(
        self,
        height: int,
        width: int,
        tolerance: float = DEFAULT_TOLERANCE,
        min_area: float = DEFAULT_MIN_AREA,
        *,
        outline: str = "raw",
        min_pixels: int = 0,
    ):
        self.height, self.width = height, width
        self.shaping = Shaping(tolerance, min_area, outline, min_pixels, (height, width))
        self._done: list[Footprint] = []
        self._open: list[tuple[Polygon, int, float | None]] = []

    def add(self, mask, probabilities, row: int, col: int) -> None:
        """The mask (and probabilities) of the part whose top-left pixel is (row, col)."""
        height, width = np.shape(mask)
        shared = (row > 0, row + height < self.height, col > 0, col + width < self.width)
        pieces = _pieces(mask, probabilities, self.shaping.least_pixels, row, col, shared)
        for geometry, pixels, total, cut, capped in pieces:
            if cut:
                self._open.append((geometry, pixels, total))
                continue
            footprint = _footprint(geometry, pixels, total, self.shaping, capped)
            if footprint is not None:
                self._done.append(footprint)

    def footprints(self) -> list[Footprint]:
        joined = []
        if self._open:
            pieces = [geometry for geometry, _, _ in self._open]
            tree = shapely.STRtree(pieces)
            # Pixel-edge polygons share exact integer edges, so their union is exact too.
            for building in polygons_in(shapely.unary_union(pieces)):
                members = [self._open[i] for i in tree.query(building, predicate="covers")]
                pixels = sum(member[1] for member in members)
                totals = [member[2] for member in members]
                total = None if None in totals else sum(totals)
                footprint = _footprint(building, pixels, total, self.shaping)
                if footprint is not None:
                    joined.append(footprint)
        return sorted(self._done + joined, key=_reading_order)


def _pieces(
    mask, probabilities, min_area: float, row: int = 0, col: int = 0, shared=(False, False, False, False)
):
    """(pixel-edge polygon in scene pixels, pixel count, probability sum or None, whether it
    touches a shared side, whether MAX_HOLES filled some of its holes) for each 4-connected
    component with at least `min_area` pixels or on a shared side (top, bottom, left, right:
    where the mask continues in another part)."""
    import cv2

    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be H x W, got shape {mask.shape}")
    if probabilities is not None and np.shape(probabilities) != mask.shape:
        raise ValueError(f"probabilities have shape {np.shape(probabilities)}, the mask {mask.shape}")
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        (mask != 0).view(np.uint8), connectivity=4, ltype=cv2.CV_32S
    )
    if count <= 1:
        return
    sizes = stats[:, cv2.CC_STAT_AREA]
    sums = None
    if probabilities is not None:
        sums = np.bincount(labels.ravel(), weights=np.asarray(probabilities).ravel(), minlength=count)
    cut = np.zeros(count, bool)
    for side, line in zip(shared, (labels[0], labels[-1], labels[:, 0], labels[:, -1])):
        if side:
            cut[line] = True
    cut[0] = False  # background
    # A component smaller than min_area cannot make a polygon that large: it is background to
    # the polygonizer, and to the holes around it. Sizes and sums stay the mask's.
    kept = (sizes >= min_area) | cut
    kept[0] = False
    labels = np.where(kept[labels], labels, 0)
    labels, capped = _fill_holes(labels, count, min_area)
    for geometry, value in _traced(labels, stats, np.flatnonzero(kept), row, col):
        label = int(value)
        yield (
            _polygon(geometry),
            int(sizes[label]),
            None if sums is None else float(sums[label]),
            bool(cut[label]),
            bool(capped[label]),
        )


def _traced(labels: np.ndarray, stats: np.ndarray, ids: np.ndarray, row: int, col: int):
    """(GeoJSON polygon in scene pixels, label) of each component in `ids`, traced by GDAL.

    GDAL's polygonize holds the GIL for a whole call, so a server answers nothing else
    meanwhile (1.6 s for all of a 4096 px noise mask): the components go to it in batches of
    about TRACE_PIXELS pixels, in label order (OpenCV's: by first pixel, row by row), each
    batch on the rows and columns it spans. A component is traced the same in any batch."""
    import cv2
    from affine import Affine
    from rasterio.features import shapes

    tops, lefts = stats[:, cv2.CC_STAT_TOP], stats[:, cv2.CC_STAT_LEFT]
    bottoms, rights = tops + stats[:, cv2.CC_STAT_HEIGHT], lefts + stats[:, cv2.CC_STAT_WIDTH]
    batch_of = np.cumsum(stats[ids, cv2.CC_STAT_AREA]) // TRACE_PIXELS
    chosen = np.zeros(len(stats), bool)
    for batch in np.split(ids, np.flatnonzero(np.diff(batch_of)) + 1):
        if not len(batch):
            continue
        top, bottom = tops[batch].min(), bottoms[batch].max()
        left, right = lefts[batch].min(), rights[batch].max()
        window = labels[top:bottom, left:right]
        chosen[batch] = True
        yield from shapes(
            window, mask=chosen[window], connectivity=4, transform=Affine.translation(col + left, row + top)
        )
        chosen[batch] = False


def _fill_holes(labels: np.ndarray, count: int, min_area: float) -> tuple[np.ndarray, np.ndarray]:
    """`labels` with the holes that outlines would not keep given their building's label, and
    which of the `count` labels lost holes to MAX_HOLES.

    A hole is a background region, 8-connected (the dual of 4-connected buildings, so that
    exactly one building encloses it), that touches no edge of `labels` (an edge may be open to
    the outside or to the next part). Filled: every hole under `min_area` pixels (outlines drop
    those anyway) and, beyond a building's MAX_HOLES largest, the rest. A noise-like mask
    has tens of thousands of holes in one region; tracing them was most of its cost."""
    import cv2

    found, holes, stats, _ = cv2.connectedComponentsWithStats(
        (labels == 0).view(np.uint8), connectivity=8, ltype=cv2.CV_32S
    )
    enclosed = np.ones(found, bool)
    enclosed[0] = False  # label 0 of `holes` is the buildings
    for edge in (holes[0], holes[-1], holes[:, 0], holes[:, -1]):
        enclosed[edge] = False
    ids = np.flatnonzero(enclosed)
    capped = np.zeros(count, bool)
    if not len(ids):
        return labels, capped
    building = _enclosing(labels, holes, stats[:, cv2.CC_STAT_TOP], enclosed)
    sizes = stats[:, cv2.CC_STAT_AREA]
    ids = ids[np.lexsort((-sizes[ids], building[ids]))]  # by building, the largest hole first
    owner = building[ids]
    first = np.r_[True, owner[1:] != owner[:-1]]
    rank = np.arange(len(ids)) - np.maximum.accumulate(np.where(first, np.arange(len(ids)), 0))
    large = sizes[ids] >= min_area
    capped[owner[large & (rank >= MAX_HOLES)]] = True
    filled = ids[~(large & (rank < MAX_HOLES))]
    fill_with = np.zeros(found, labels.dtype)
    fill_with[filled] = building[filled]
    return labels + fill_with[holes], capped  # fill_with is 0 off the filled holes


def _enclosing(labels: np.ndarray, holes: np.ndarray, tops: np.ndarray, enclosed: np.ndarray) -> np.ndarray:
    """The label of the building around each enclosed hole: the one just above the hole's top
    row (a building inside the hole, an island, lies within the hole's rows)."""
    rows, cols = np.nonzero((holes[1:] > 0) & (labels[:-1] > 0))
    rows += 1  # rows of `holes`: hole pixels with a building pixel above
    ids = holes[rows, cols]
    top = enclosed[ids] & (rows == tops[ids])
    building = np.zeros(len(tops), labels.dtype)
    building[ids[top]] = labels[rows[top] - 1, cols[top]]
    return building


def _polygon(geojson: dict) -> Polygon:
    """A GeoJSON polygon as shapely's, from numpy arrays: `shapely.geometry.shape` converts
    each coordinate in Python, a third of the outlines' time on a noise image."""
    shell, *holes = (shapely.linearrings(np.asarray(ring, dtype=float)) for ring in geojson["coordinates"])
    return shapely.polygons(shell, holes or None)


def _mean(total: float | None, pixels: int) -> float | None:
    return None if total is None else total / max(pixels, 1)


def _reading_order(footprint: Footprint) -> tuple:
    left, top, right, bottom = footprint.geometry.bounds  # in pixels, y grows downwards
    return top, left, bottom, right


def footprints_geojson(
    mask,
    probabilities=None,
    transform=None,
    crs=None,
    tolerance: float = DEFAULT_TOLERANCE,
    min_area: float = DEFAULT_MIN_AREA,
    why_pixels: str | None = None,
    pixel_geometry: bool = False,
    deadline: float | None = None,
    *,
    outline: str = "raw",
    min_area_m2: float | None = None,
    min_pixels: int = 0,
    **members,
) -> dict:
    """`outlines` (which `deadline` bounds) then `feature_collection`, with the tolerance, the
    minimum sizes and the kind of outline recorded. The minimum size that applies depends on
    the image: `min_area_m2` for a georeferenced one (m² are known), `min_pixels` (mask
    pixels) for one in pixels; the other is recorded as null."""
    georeferenced = is_georeferenced(transform, crs)
    applied_pixels = None if georeferenced else min_pixels
    found = outlines(
        mask, probabilities, tolerance, min_area, deadline, outline=outline, min_pixels=applied_pixels or 0
    )
    return feature_collection(
        found,
        transform,
        crs,
        why_pixels,
        pixel_geometry,
        min_area_m2=min_area_m2,
        tolerance_px=tolerance,
        min_area_px=min_area,
        min_pixels=applied_pixels,
        outline=outline,
        **members,
    )
