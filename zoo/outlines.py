"""A traced building's outline made clean (`clean`: the raw outline) or regular (`regular`:
straight edges and right angles). Pixel coordinates in, pixel coordinates out.

`clean` simplifies each ring on its own within a tolerance (Douglas-Peucker), drops holes and
parts under a minimum area, and repairs only a polygon that came out invalid; what one
building may cost is bounded by MAX_HOLES and MAX_VERTICES (`zoo.polygons` says why).

`regular(polygon)` turns one building's outline into the regular shape closest to it:

1. A rectangle, when the outline fills at least `RECTANGLE_FILL` of its minimum rotated
   rectangle (most roofs in the data are rectangles, and four corners is what a mapper would
   draw): step 2 with every run but the four longest folded away, so each wall lies where the
   outline's edges are on average (the minimum rotated rectangle of a pixel outline is half a
   pixel too large all round), else that envelope.
2. Otherwise the outline made orthogonal along its dominant direction: the edge directions,
   weighted by length, averaged modulo 90 degrees (angles times four, a circular mean); in
   that frame each edge is horizontal or vertical, whichever it is closer to; a run of edges
   of one kind becomes one edge at their length-weighted mean position, runs shorter than
   `MIN_EDGE` pixels are folded into their neighbours, and consecutive edges meet at right
   angles.

Each ring is judged alone: a building's holes (courtyards) are made regular the same way and
cut out of its regular shell.
3. The raw outline itself, when neither shape overlaps it with IoU at least `MIN_IOU` (round,
   curved or very irregular roofs), or when it has more than `REGULAR_MAX_VERTICES` vertices (noise,
   not a building): a regular outline there would invent a shape.

Nothing here knows about masks or GeoJSON.
Why not `buildingregulariser` (the package that does this for GeoDataFrames): it imports
geopandas, pyproj and pandas at import time and starts a multiprocessing pool per call, a lot
to carry into a server for the ~150 lines below; experiments/outlines measures the result.
"""

from __future__ import annotations

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon

OUTLINES = ("raw", "regular")
# Bounds on one building, far above any roof's (a few courtyards, a few dozen corners) and far
# below a noise region's (thousands of holes, 650,000 vertices): what one outline may cost.
MAX_HOLES = 64
MAX_VERTICES = 4096
RECTANGLE_FILL = 0.85  # outline area / its minimum rotated rectangle's, to take the rectangle
MIN_EDGE = 3.0  # pixels: a shorter run of edges is a jog of the mask, not a wall
MIN_IOU = 0.8  # a regular shape must overlap the raw outline at least this well
REGULAR_MAX_VERTICES = 256  # a raw outline with more is not a building to regularise


def check_outline(outline: str) -> str:
    if outline not in OUTLINES:
        raise ValueError(f"outline must be one of {', '.join(OUTLINES)}, got {outline!r}")
    return outline


def regular(geometry: Polygon | MultiPolygon, min_area: float = 0.0, within=None) -> Polygon | MultiPolygon:
    """The regular outline of each part of `geometry` (see the module docstring), valid; a part
    that comes out under `min_area` keeps its raw outline. With `within` (the image's extent),
    a regular outline is cut to it: a building the image's edge cuts is not guessed beyond it."""
    parts = [_regular_part(part, min_area, within) for part in polygons_in(geometry)]
    if not parts:
        return geometry
    return parts[0] if len(parts) == 1 else _valid_or(MultiPolygon(parts), geometry)


def _regular_part(polygon: Polygon, min_area: float, within=None) -> Polygon:
    """The regular shell minus the regular holes (each judged alone), or the raw polygon."""
    if shapely.get_num_coordinates(polygon) > REGULAR_MAX_VERTICES or polygon.area <= 0:
        return polygon
    shell = _regular_ring(Polygon(polygon.exterior), min_area)
    holes = [_regular_ring(Polygon(ring), min_area) for ring in polygon.interiors]
    if shell is None:
        return polygon
    holes = [hole if hole is not None else Polygon(ring) for hole, ring in zip(holes, polygon.interiors)]
    result = shell.difference(shapely.union_all(holes)) if holes else shell
    if within is not None and not within.contains(result):
        result = result.intersection(within)
    result = _largest(result) if not isinstance(result, Polygon) else result
    return result if _usable(result, min_area) else polygon


def _regular_ring(polygon: Polygon, min_area: float) -> Polygon | None:
    """The regular shape of a polygon without holes, or None when none is close enough."""
    envelope = shapely.oriented_envelope(polygon)
    rectangle = _orthogonal(polygon, walls=4)
    if isinstance(envelope, Polygon) and polygon.area >= RECTANGLE_FILL * envelope.area:
        candidates = [rectangle, envelope]
    else:
        candidates = [_orthogonal(polygon), rectangle, envelope]
    for candidate in candidates:  # in order of preference: the first close enough
        if _usable(candidate, min_area) and _iou(candidate, polygon) >= MIN_IOU:
            return candidate
    return None


def _usable(candidate, min_area: float) -> bool:
    return (
        isinstance(candidate, Polygon)
        and not candidate.is_empty
        and candidate.is_valid
        and candidate.area >= max(min_area, 1e-9)
    )


def dominant_angle(polygon: Polygon) -> float:
    """The direction (radians, in [-pi/4, pi/4)) its exterior's edges follow modulo 90
    degrees, each edge weighted by its length."""
    xy = shapely.get_coordinates(polygon.exterior)
    dx, dy = np.diff(xy[:, 0]), np.diff(xy[:, 1])
    lengths = np.hypot(dx, dy)
    angles = 4 * np.arctan2(dy, dx)  # modulo 90 degrees: 4 x the angle, modulo 360
    return float(np.arctan2((lengths * np.sin(angles)).sum(), (lengths * np.cos(angles)).sum()) / 4)


def _orthogonal(polygon: Polygon, walls: int | None = None) -> Polygon | None:
    """The polygon with every edge parallel or perpendicular to its dominant direction; with
    `walls`, the shortest runs are folded away until that many are left (4: a rectangle)."""
    angle = dominant_angle(polygon)
    centre = np.asarray(polygon.centroid.coords[0])
    cos, sin = np.cos(angle), np.sin(angle)
    # Rotate by -angle about the centroid (into the frame where walls are axis-aligned), back after.
    into = np.array([[cos, -sin], [sin, cos]])  # row vectors: xy @ into rotates by -angle
    corners = _orthogonal_ring(
        (shapely.get_coordinates(polygon.exterior)[:-1] - centre) @ into, MIN_EDGE, walls
    )
    if corners is None:
        return None
    result = Polygon(corners @ into.T + centre)
    return result if result.is_valid else _largest(shapely.make_valid(result))


def _orthogonal_ring(points: np.ndarray, least: float, walls: int | None = None) -> np.ndarray | None:
    """The corners of the orthogonal ring closest to `points` (an open ring, axis-aligned
    frame), or None when fewer than four walls are left."""
    edges = np.roll(points, -1, axis=0) - points
    horizontal = np.abs(edges[:, 0]) >= np.abs(edges[:, 1])
    if horizontal.all() or not horizontal.any():
        return None
    # Start at a change of kind, so that no run wraps around the end of the list.
    start = int(np.flatnonzero(horizontal != np.roll(horizontal, 1))[0])
    order = np.roll(np.arange(len(points)), -start)
    runs = _runs(points[order], edges[order], horizontal[order])
    runs = _without_short_runs(runs, least, walls)
    if runs is None:
        return None
    return _corners(runs)


def _runs(points: np.ndarray, edges: np.ndarray, horizontal: np.ndarray) -> list[list]:
    """[is horizontal, position (y of a horizontal wall, x of a vertical one), length] of each
    run of consecutive edges of one kind; the position is their length-weighted mean midpoint."""
    runs = []
    middles = points + edges / 2
    lengths = np.hypot(edges[:, 0], edges[:, 1])
    bounds = np.flatnonzero(np.diff(horizontal.astype(np.int8))) + 1
    for index in np.split(np.arange(len(points)), bounds):
        kind = bool(horizontal[index[0]])
        weights = lengths[index]
        position = np.average(middles[index, 1 if kind else 0], weights=weights + 1e-12)
        runs.append([kind, float(position), float(weights.sum())])
    return runs


def _without_short_runs(runs: list[list], least: float, walls: int | None = None) -> list[list] | None:
    """The runs with each one shorter than `least` (or, with `walls`, all but that many)
    folded away, shortest first: its two neighbours (both of the other kind) become one wall
    at their length-weighted position."""
    while len(runs) > 4:
        shortest = min(range(len(runs)), key=lambda index: runs[index][2])
        if runs[shortest][2] >= least and (walls is None or len(runs) <= walls):
            break
        before, after = (shortest - 1) % len(runs), (shortest + 1) % len(runs)
        (_, p1, w1), (_, p2, w2) = runs[before], runs[after]
        runs[before] = [runs[before][0], (p1 * w1 + p2 * w2) / (w1 + w2), w1 + w2]
        runs = [run for index, run in enumerate(runs) if index not in (shortest, after)]
    return runs if len(runs) >= 4 and len(runs) % 2 == 0 else None


def _corners(runs: list[list]) -> np.ndarray:
    """Where each wall meets the next: (x of the vertical one, y of the horizontal one)."""
    corners = []
    for (kind, position, _), (_, following, _) in zip(runs, runs[1:] + runs[:1]):
        corners.append((following, position) if kind else (position, following))
    return np.asarray(corners)


def _iou(a: Polygon, b: Polygon) -> float:
    union = shapely.union(a, b).area
    return shapely.intersection(a, b).area / union if union else 0.0


def _largest(geometry) -> Polygon | None:
    parts = polygons_in(geometry)
    return max(parts, key=lambda part: part.area) if parts else None


def _valid_or(geometry, fallback):
    if geometry.is_valid:
        return geometry
    parts = polygons_in(shapely.make_valid(geometry))
    if not parts:
        return fallback
    return parts[0] if len(parts) == 1 else MultiPolygon(parts)


def polygons_in(geometry) -> list[Polygon]:
    """The polygons of any geometry (make_valid may return a collection with lines or points)."""
    found = []
    for part in shapely.get_parts(geometry):
        if isinstance(part, Polygon) and not part.is_empty:
            found.append(part)
        elif isinstance(part, (MultiPolygon, shapely.GeometryCollection)):
            found.extend(polygons_in(part))
    return found


# -- the raw outline, clean ----------------------------------------------------------------


def clean(geometry, tolerance: float, min_area: float) -> Polygon | MultiPolygon | None:
    """Simplified, without holes or parts under `min_area`, valid, within MAX_HOLES and
    MAX_VERTICES a polygon; None when nothing is left."""
    return cleaned(geometry, tolerance, min_area)[0]


def cleaned(geometry, tolerance: float, min_area: float):
    """(`clean`'s geometry, whether a bound cut it down)."""
    simplified = [_simplified(part, tolerance, min_area) for part in polygons_in(geometry)]
    capped = any(was_capped for _, was_capped in simplified)
    candidates = [part for part, _ in simplified if part is not None]
    parts = [
        _without_small_holes(part, min_area)
        for candidate in candidates
        for part in polygons_in(_valid(candidate))
    ]
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
    region): an invalid result here is rare and small, and `cleaned` repairs it."""
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
    return Polygon(simple[0], [ring for ring, area in zip(simple[1:], areas[1:]) if area >= min_area]), capped


def _valid(geometry):
    return geometry if geometry.is_valid else shapely.make_valid(geometry)


def _without_small_holes(polygon: Polygon, min_area: float) -> Polygon:
    holes = [ring for ring in polygon.interiors if Polygon(ring).area >= min_area]
    if len(holes) == len(polygon.interiors):
        return polygon
    return Polygon(polygon.exterior, holes)
