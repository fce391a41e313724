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
   came out invalid is repaired, with `make_valid`. Every returned geometry is a valid Polygon
   or MultiPolygon.

What one building may cost is bounded: at most `MAX_HOLES` holes (the largest) and
`MAX_VERTICES` vertices (the tolerance is doubled until it fits); a building cut down so is
marked `capped`. Shapely's topology-preserving simplification, used before, grew about
quadratically with a region's holes and held the GIL throughout: 85 s on that noise image,
during which the server could not answer /health. Ring by ring the work is about linear in
pixels, and `outlines` takes a `deadline` after which it stops with `OutlineBudgetExceeded`.

Pixel coordinates: x = column, y = row, measured from the image's top-left corner (y grows
downwards), at pixel corners, so a pixel is a unit square. With a georeferenced image
(`transform` and `crs`, as rasterio reads them from a GeoTIFF) the outlines are mapped through
the transform into the image's CRS, measured there (m²: the image's own projected CRS, or a
Lambert azimuthal equal-area projection centred on the image when its CRS is geographic), and
reprojected to WGS84 longitude/latitude (RFC 7946).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon, mapping
from shapely.geometry.polygon import orient

DEFAULT_TOLERANCE = 1.0  # pixels: removes the pixel staircase, keeps corners
DEFAULT_MIN_AREA = 8.0   # pixels: smaller blobs are speckle, not buildings
# Bounds on one building, far above any roof's (a few courtyards, a few dozen corners) and far
# below a noise region's (thousands of holes, 650,000 vertices): what one outline may cost.
MAX_HOLES = 64
MAX_VERTICES = 4096
# Building pixels GDAL traces in one call, which holds the GIL: about 0.1 s of it (`_traced`).
TRACE_PIXELS = 2**19
WGS84 = "EPSG:4326"
# The old GeoJSON "crs" member, which GDAL and QGIS still read: CRS84 is lon/lat on WGS84, the
# RFC 7946 default; null says no CRS may be assumed (pixel coordinates).
CRS84 = {"type": "name", "properties": {"name": "urn:ogc:def:crs:OGC:1.3:CRS84"}}
# Beyond this relative error of the image's own CRS on area, areas are measured in a local
# equal-area projection instead (UTM errs by at most 0.1 %; Web Mercator by 1.8 % in Dar es
# Salaam and 28 % in Kathmandu).
AREA_DISTORTION = 0.005
PIXEL_AXES = "pixels: x = column, y = row, from the image's top-left corner (y grows downwards)"


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


def outlines(mask, probabilities=None, tolerance: float = DEFAULT_TOLERANCE,
             min_area: float = DEFAULT_MIN_AREA, deadline: float | None = None) -> list[Footprint]:
    """The buildings of an H x W mask (nonzero = building), top to bottom, left to right.

    `probabilities`, an H x W float map, gives each building its mean probability.
    `deadline`, a `time.monotonic()` value, is checked between buildings: past it,
    `OutlineBudgetExceeded` is raised."""
    found = []
    _check(deadline)
    for geometry, pixels, total, _, holes_capped in _pieces(mask, probabilities, min_area):
        _check(deadline)
        footprint = _footprint(geometry, pixels, total, tolerance, min_area, holes_capped)
        if footprint is not None:
            found.append(footprint)
    return sorted(found, key=_reading_order)


def _check(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise OutlineBudgetExceeded("the outlines took longer than their time budget")


def _footprint(geometry, pixels: int, total: float | None, tolerance: float, min_area: float,
               capped: bool = False) -> Footprint | None:
    cleaned, cut_down = _cleaned(geometry, tolerance, min_area)
    if cleaned is None:
        return None
    return Footprint(cleaned, pixels, _mean(total, pixels), capped or cut_down)


class SceneOutlines:
    """The buildings of a scene too large to hold, added part by part (`add`): a building
    inside one part is outlined at once; the pieces of one that a part's edge cuts are kept
    pixel-exact and joined when every part is in (`footprints`), so the result equals what
    `outlines` gives on the whole mask (up to how simplification meets the joined edge)."""

    def __init__(self, height: int, width: int, tolerance: float = DEFAULT_TOLERANCE,
                 min_area: float = DEFAULT_MIN_AREA):
        self.height, self.width, self.tolerance, self.min_area = height, width, tolerance, min_area
        self._done: list[Footprint] = []
        self._open: list[tuple[Polygon, int, float | None]] = []

    def add(self, mask, probabilities, row: int, col: int) -> None:
        """The mask (and probabilities) of the part whose top-left pixel is (row, col)."""
        height, width = np.shape(mask)
        shared = (row > 0, row + height < self.height, col > 0, col + width < self.width)
        for geometry, pixels, total, cut, capped in _pieces(mask, probabilities, self.min_area,
                                                            row, col, shared):
            if cut:
                self._open.append((geometry, pixels, total))
                continue
            footprint = _footprint(geometry, pixels, total, self.tolerance, self.min_area,
                                   capped)
            if footprint is not None:
                self._done.append(footprint)

    def footprints(self) -> list[Footprint]:
        joined = []
        if self._open:
            pieces = [geometry for geometry, _, _ in self._open]
            tree = shapely.STRtree(pieces)
            # Pixel-edge polygons share exact integer edges, so their union is exact too.
            for building in _polygons_in(shapely.unary_union(pieces)):
                members = [self._open[i] for i in tree.query(building, predicate="covers")]
                pixels = sum(member[1] for member in members)
                totals = [member[2] for member in members]
                total = None if None in totals else sum(totals)
                footprint = _footprint(building, pixels, total, self.tolerance, self.min_area)
                if footprint is not None:
                    joined.append(footprint)
        return sorted(self._done + joined, key=_reading_order)


def _pieces(mask, probabilities, min_area: float, row: int = 0, col: int = 0,
            shared=(False, False, False, False)):
    """(pixel-edge polygon in scene pixels, pixel count, probability sum or None, whether it
    touches a shared side, whether MAX_HOLES filled some of its holes) for each 4-connected
    component with at least `min_area` pixels or on a shared side (top, bottom, left, right:
    where the mask continues in another part)."""
    import cv2

    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be H x W, got shape {mask.shape}")
    if probabilities is not None and np.shape(probabilities) != mask.shape:
        raise ValueError(f"probabilities have shape {np.shape(probabilities)}, the mask "
                         f"{mask.shape}")
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        (mask != 0).view(np.uint8), connectivity=4, ltype=cv2.CV_32S)
    if count <= 1:
        return
    sizes = stats[:, cv2.CC_STAT_AREA]
    sums = None
    if probabilities is not None:
        sums = np.bincount(labels.ravel(), weights=np.asarray(probabilities).ravel(),
                           minlength=count)
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
        yield (_polygon(geometry), int(sizes[label]),
               None if sums is None else float(sums[label]), bool(cut[label]),
               bool(capped[label]))


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
        yield from shapes(window, mask=chosen[window], connectivity=4,
                          transform=Affine.translation(col + left, row + top))
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

    found, holes, stats, _ = cv2.connectedComponentsWithStats((labels == 0).view(np.uint8),
                                                              connectivity=8, ltype=cv2.CV_32S)
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


def _enclosing(labels: np.ndarray, holes: np.ndarray, tops: np.ndarray,
               enclosed: np.ndarray) -> np.ndarray:
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
    shell, *holes = (shapely.linearrings(np.asarray(ring, dtype=float))
                     for ring in geojson["coordinates"])
    return shapely.polygons(shell, holes or None)


def _mean(total: float | None, pixels: int) -> float | None:
    return None if total is None else total / max(pixels, 1)


def _reading_order(footprint: Footprint) -> tuple:
    left, top, right, bottom = footprint.geometry.bounds  # in pixels, y grows downwards
    return top, left, bottom, right


def clean(geometry, tolerance: float, min_area: float) -> Polygon | MultiPolygon | None:
    """Simplified, without holes or parts under `min_area`, valid, within MAX_HOLES and
    MAX_VERTICES a polygon; None when nothing is left."""
    return _cleaned(geometry, tolerance, min_area)[0]


def _cleaned(geometry, tolerance: float, min_area: float):
    """(`clean`'s geometry, whether a bound cut it down)."""
    simplified = [_simplified(part, tolerance, min_area) for part in _polygons_in(geometry)]
    capped = any(was_capped for _, was_capped in simplified)
    candidates = [part for part, _ in simplified if part is not None]
    parts = [_without_small_holes(part, min_area)
             for candidate in candidates for part in _polygons_in(_valid(candidate))]
    parts = [part for part in parts if part.area >= min_area]
    if not parts:
        return None, capped
    result = parts[0] if len(parts) == 1 else MultiPolygon(parts)
    return (_valid(result) if not result.is_valid else result), capped


def _simplified(polygon: Polygon, tolerance: float, min_area: float):
    """(The polygon with each ring simplified on its own, possibly invalid, or None when its
    outline falls under `min_area`; whether MAX_HOLES or MAX_VERTICES cut it down).

    Ring by ring, because shapely's polygon simplification either preserves topology (about
    quadratic in holes, GIL held) or repairs its result with a buffer (10 s on one noise
    region): an invalid result here is rare and small, and `_cleaned` repairs it."""
    exterior, *holes = shapely.get_rings(polygon)
    holes = np.array(holes, dtype=object)
    if len(holes):
        areas = shapely.area(shapely.polygons(holes))
        order = np.argsort(-areas, kind="stable")  # the largest first
        holes = holes[order[areas[order] >= min_area]]
    capped = len(holes) > MAX_HOLES
    rings = np.array([exterior, *holes[:MAX_HOLES]], dtype=object)
    simple = shapely.simplify(rings, tolerance) if tolerance > 0 else rings
    step = max(tolerance, 0.5)
    while shapely.get_num_coordinates(simple).sum() > MAX_VERTICES:
        # Each try simplifies the last, so it costs less; the errors add up to under 2 * step.
        step *= 2
        simple, capped = shapely.simplify(simple, step), True
    areas = shapely.area(shapely.polygons(simple))
    if areas[0] < min_area:
        return None, capped
    return Polygon(simple[0], [ring for ring, area in zip(simple[1:], areas[1:])
                               if area >= min_area]), capped


def _valid(geometry):
    return geometry if geometry.is_valid else shapely.make_valid(geometry)


def _polygons_in(geometry) -> list[Polygon]:
    """The polygons of any geometry (make_valid may return a collection with lines or points)."""
    found = []
    for part in shapely.get_parts(geometry):
        if isinstance(part, Polygon) and not part.is_empty:
            found.append(part)
        elif isinstance(part, (MultiPolygon, shapely.GeometryCollection)):
            found.extend(_polygons_in(part))
    return found


def _without_small_holes(polygon: Polygon, min_area: float) -> Polygon:
    holes = [ring for ring in polygon.interiors if Polygon(ring).area >= min_area]
    if len(holes) == len(polygon.interiors):
        return polygon
    return Polygon(polygon.exterior, holes)


# -- GeoJSON -----------------------------------------------------------------------------------

def is_georeferenced(transform, crs) -> bool:
    """A CRS and a transform that is not the identity (what rasterio reports for a TIFF
    without a geotransform)."""
    from affine import Affine

    return crs is not None and transform is not None and Affine(*tuple(transform)[:6]) != Affine.identity()


def feature_collection(footprints: list[Footprint], transform=None, crs=None,
                       why_pixels: str | None = None, pixel_geometry: bool = False,
                       **members) -> dict:
    """A GeoJSON FeatureCollection of `footprints`.

    With `transform` (an affine.Affine, pixel corner -> CRS) and `crs` (a rasterio CRS or
    anything `CRS.from_user_input` takes), geometries are WGS84 lon/lat and each feature has
    `area_m2`; without, they stay in pixels, the collection's `crs` is null and `why_pixels`
    says why. Every feature has `area_px` (of the returned outline, holes excluded),
    `mask_pixels` and, when known, `mean_probability`; one that MAX_HOLES or MAX_VERTICES cut
    down has `capped: true`; with `pixel_geometry`, a georeferenced
    feature also keeps its outline in pixels (for drawing it over the image). `members` are
    added at the top level."""
    pixels = np.array([footprint.geometry for footprint in footprints], dtype=object)
    geometries = pixels
    areas_px = shapely.area(geometries) if len(geometries) else np.zeros(0)
    header = {"type": "FeatureCollection", "crs": None, "georeferenced": False,
              "coordinates": PIXEL_AXES, "source_crs": None, "area_crs": None}
    areas_m2 = None
    if is_georeferenced(transform, crs):
        from rasterio.crs import CRS

        crs = CRS.from_user_input(crs)
        world = _affine(pixels, transform)
        areas_m2, area_crs = _areas_m2(world, crs)
        geometries = _reproject(world, crs, WGS84)
        header.update(crs=CRS84, georeferenced=True, coordinates="longitude/latitude (WGS84)",
                      source_crs=crs.to_string(), area_crs=area_crs)
    else:
        header["why_pixels"] = why_pixels or "no georeferencing was given"
    features = []
    for index, (footprint, geometry) in enumerate(zip(footprints, geometries)):
        properties = {"area_px": round(float(areas_px[index]), 2),
                      "mask_pixels": footprint.pixels}
        if areas_m2 is not None:
            properties["area_m2"] = round(float(areas_m2[index]), 3)
            if pixel_geometry:
                properties["pixel_geometry"] = mapping(orient_all(pixels[index]))
        if footprint.mean_probability is not None:
            properties["mean_probability"] = round(footprint.mean_probability, 4)
        if footprint.capped:
            properties["capped"] = True
        features.append({"type": "Feature", "id": index, "properties": properties,
                         "geometry": mapping(orient_all(geometry))})
    totals = {"count": len(features), "total_area_px": round(float(np.sum(areas_px)), 2),
              "total_area_m2": None if areas_m2 is None else round(float(np.sum(areas_m2)), 3)}
    return {**header, **totals, **members, "features": features}


def footprints_geojson(mask, probabilities=None, transform=None, crs=None,
                       tolerance: float = DEFAULT_TOLERANCE, min_area: float = DEFAULT_MIN_AREA,
                       why_pixels: str | None = None, pixel_geometry: bool = False,
                       deadline: float | None = None, **members) -> dict:
    """`outlines` (which `deadline` bounds) then `feature_collection`, with the tolerance and
    minimum area recorded."""
    found = outlines(mask, probabilities, tolerance, min_area, deadline)
    return feature_collection(found, transform, crs, why_pixels, pixel_geometry,
                              tolerance_px=tolerance, min_area_px=min_area, **members)


def orient_all(geometry):
    """Exterior rings counter-clockwise, holes clockwise (RFC 7946's right-hand rule)."""
    if isinstance(geometry, MultiPolygon):
        return MultiPolygon([orient(part, 1.0) for part in geometry.geoms])
    return orient(geometry, 1.0)


def _affine(geometries: np.ndarray, transform) -> np.ndarray:
    a, b, c, d, e, f = tuple(transform)[:6]
    matrix = np.array([[a, d], [b, e]])
    return shapely.transform(geometries, lambda xy: xy @ matrix + (c, f))


def _reproject(geometries: np.ndarray, source, target) -> np.ndarray:
    if not len(geometries):
        return geometries

    def move(xy):
        xs, ys = _warp_points(source, target, xy[:, 0], xy[:, 1])
        return np.column_stack([xs, ys])

    moved = shapely.transform(geometries, move)
    # A projection bends lines a little; a polygon this small stays valid, but make sure.
    return np.array([_valid_polygonal(geometry) for geometry in moved], dtype=object)


def _valid_polygonal(geometry):
    if geometry.is_valid:
        return geometry
    parts = _polygons_in(shapely.make_valid(geometry))
    return parts[0] if len(parts) == 1 else MultiPolygon(parts)


def _areas_m2(world: np.ndarray, crs) -> tuple[np.ndarray, str]:
    """Areas in m² and the CRS they were measured in: the image's own projected CRS, unless
    it misstates areas here by more than `AREA_DISTORTION` (Web Mercator does, by sec²
    latitude) or is geographic; then a local equal-area projection."""
    from rasterio.crs import CRS

    if not len(world):
        return np.zeros(0), crs.to_string()
    local = _local_equal_area(world, crs)
    if crs.is_projected:
        unit, metres = crs.linear_units_factor
        envelope = shapely.box(*shapely.total_bounds(world))
        own = envelope.area * metres ** 2
        true = shapely.area(_reproject(np.array([envelope], dtype=object), crs,
                                       CRS.from_proj4(local)))[0]
        if abs(own / true - 1) <= AREA_DISTORTION:
            return shapely.area(world) * metres ** 2, f"{crs.to_string()} (the image's own, in {unit})"
        why = (f"the image's own CRS {crs.to_string()} misstates areas here by "
               f"{100 * (own / true - 1):+.1f} %")
    else:
        why = f"the image's own CRS {crs.to_string()} is geographic"
    areas = shapely.area(_reproject(world, crs, CRS.from_proj4(local)))
    return areas, f"{local} (Lambert azimuthal equal-area centred on the buildings; {why})"


def _local_equal_area(world: np.ndarray, crs) -> str:
    west, south, east, north = shapely.total_bounds(world)
    (lon,), (lat,) = _warp_points(crs, WGS84, [(west + east) / 2], [(south + north) / 2])
    return f"+proj=laea +lat_0={lat:.6f} +lon_0={lon:.6f} +datum=WGS84 +units=m"


def _warp_points(source, target, xs, ys):
    from rasterio.warp import transform as warp

    return warp(source, target, xs, ys)
