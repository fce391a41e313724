"""Building outlines in pixels to a GeoJSON FeatureCollection: in WGS84 lon/lat with areas in
m² when the image is georeferenced, in pixels (and saying why) when it is not.

With a georeferenced image (`transform` and `crs`, as rasterio reads them from a GeoTIFF) the
outlines are mapped through the transform into the image's CRS, measured there (m²: the
image's own projected CRS, or a Lambert azimuthal equal-area projection centred on the
buildings when that CRS is geographic or misstates areas), and reprojected to WGS84
longitude/latitude (RFC 7946). Each collection says in words where its areas were measured
(`area_note`, what the page shows) beside the exact CRS (`area_crs`).
"""

from __future__ import annotations

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, mapping
from shapely.geometry.polygon import orient

from zoo.outlines import polygons_in

WGS84 = "EPSG:4326"
# The old GeoJSON "crs" member, which GDAL and QGIS still read: CRS84 is lon/lat on WGS84, the
# RFC 7946 default; null says no CRS may be assumed (pixel coordinates).
CRS84 = {"type": "name", "properties": {"name": "urn:ogc:def:crs:OGC:1.3:CRS84"}}
# Beyond this relative error of the image's own CRS on area, areas are measured in a local
# equal-area projection instead (UTM errs by at most 0.1 %; Web Mercator by 1.8 % in Dar es
# Salaam and 28 % in Kathmandu).
AREA_DISTORTION = 0.005
PIXEL_AXES = "pixels: x = column, y = row, from the image's top-left corner (y grows downwards)"
LOCAL_AREA_NOTE = "areas in m², Lambert equal-area centred on the scene"


def is_georeferenced(transform, crs) -> bool:
    """A CRS and a transform that is not the identity (what rasterio reports for a TIFF
    without a geotransform)."""
    from affine import Affine

    return crs is not None and transform is not None and Affine(*tuple(transform)[:6]) != Affine.identity()


def feature_collection(
    footprints: list,
    transform=None,
    crs=None,
    why_pixels: str | None = None,
    pixel_geometry: bool = False,
    *,
    min_area_m2: float | None = None,
    **members,
) -> dict:
    """A GeoJSON FeatureCollection of `footprints` (`zoo.polygons.Footprint`s).

    With `transform` (an affine.Affine, pixel corner -> CRS) and `crs` (a rasterio CRS or
    anything `CRS.from_user_input` takes), geometries are WGS84 lon/lat, each feature has
    `area_m2`, and buildings under `min_area_m2` are left out; without, they stay in pixels,
    the collection's `crs` is null, `why_pixels` says why and `min_area_m2` does not apply
    (recorded as null). Every feature has `area_px` (of the returned outline, holes excluded),
    `mask_pixels` and, when known, `mean_probability` (its confidence); one that the bounds of
    `zoo.polygons` cut down has `capped: true`; with `pixel_geometry`, a georeferenced feature
    also keeps its outline in pixels (for drawing it over the image). `members` are added at
    the top level."""
    pixels = np.array([footprint.geometry for footprint in footprints], dtype=object)
    header = {
        "type": "FeatureCollection",
        "crs": None,
        "georeferenced": False,
        "coordinates": PIXEL_AXES,
        "source_crs": None,
        "area_crs": None,
        "area_note": "areas in pixels (px²)",
        "min_area_m2": None,
    }
    geometries, areas_m2 = pixels, None
    if is_georeferenced(transform, crs):
        from rasterio.crs import CRS

        crs = CRS.from_user_input(crs)
        world = _affine(pixels, transform)
        areas_m2, area_crs, note = _areas_m2(world, crs)
        kept = areas_m2 >= (min_area_m2 or 0.0)
        footprints, pixels, areas_m2 = (
            [f for f, k in zip(footprints, kept) if k],
            pixels[kept],
            areas_m2[kept],
        )
        geometries = _reproject(world[kept], crs, WGS84)
        header.update(
            crs=CRS84,
            georeferenced=True,
            coordinates="longitude/latitude (WGS84)",
            source_crs=crs.to_string(),
            area_crs=area_crs,
            area_note=note,
            min_area_m2=min_area_m2,
        )
    else:
        header["why_pixels"] = why_pixels or "no georeferencing was given"
    areas_px = shapely.area(pixels) if len(pixels) else np.zeros(0)
    features = [
        _feature(index, footprint, geometry, areas_px[index], areas_m2, pixels if pixel_geometry else None)
        for index, (footprint, geometry) in enumerate(zip(footprints, geometries))
    ]
    totals = {
        "count": len(features),
        "total_area_px": round(float(np.sum(areas_px)), 2),
        "total_area_m2": None if areas_m2 is None else round(float(np.sum(areas_m2)), 3),
    }
    return {**header, **totals, **members, "features": features}


def _feature(index: int, footprint, geometry, area_px: float, areas_m2, pixels) -> dict:
    properties = {"area_px": round(float(area_px), 2), "mask_pixels": footprint.pixels}
    if areas_m2 is not None:
        properties["area_m2"] = round(float(areas_m2[index]), 3)
        if pixels is not None:
            properties["pixel_geometry"] = mapping(orient_all(pixels[index]))
    if footprint.mean_probability is not None:
        properties["mean_probability"] = round(footprint.mean_probability, 4)
    if footprint.capped:
        properties["capped"] = True
    return {
        "type": "Feature",
        "id": index,
        "properties": properties,
        "geometry": mapping(orient_all(geometry)),
    }


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
    parts = polygons_in(shapely.make_valid(geometry))
    return parts[0] if len(parts) == 1 else MultiPolygon(parts)


def _areas_m2(world: np.ndarray, crs) -> tuple[np.ndarray, str, str]:
    """Areas in m², the CRS they were measured in, and that in words: the image's own
    projected CRS, unless it misstates areas here by more than `AREA_DISTORTION` (Web Mercator
    does, by sec² latitude) or is geographic; then a local equal-area projection."""
    from rasterio.crs import CRS

    if not len(world):
        return np.zeros(0), crs.to_string(), f"areas in m², in the image's own CRS ({crs.to_string()})"
    local = _local_equal_area(world, crs)
    if crs.is_projected:
        unit, metres = crs.linear_units_factor
        envelope = shapely.box(*shapely.total_bounds(world))
        own = envelope.area * metres**2
        true = shapely.area(_reproject(np.array([envelope], dtype=object), crs, CRS.from_proj4(local)))[0]
        if abs(own / true - 1) <= AREA_DISTORTION:
            note = f"areas in m², in the image's own CRS ({crs.to_string()})"
            return shapely.area(world) * metres**2, f"{crs.to_string()} (the image's own, in {unit})", note
        why = f"the image's own CRS {crs.to_string()} misstates areas here by {100 * (own / true - 1):+.1f} %"
    else:
        why = f"the image's own CRS {crs.to_string()} is geographic"
    areas = shapely.area(_reproject(world, crs, CRS.from_proj4(local)))
    return areas, f"{local} (Lambert azimuthal equal-area centred on the buildings; {why})", LOCAL_AREA_NOTE


def _local_equal_area(world: np.ndarray, crs) -> str:
    west, south, east, north = shapely.total_bounds(world)
    (lon,), (lat,) = _warp_points(crs, WGS84, [(west + east) / 2], [(south + north) / 2])
    return f"+proj=laea +lat_0={lat:.6f} +lon_0={lon:.6f} +datum=WGS84 +units=m"


def _warp_points(source, target, xs, ys):
    from rasterio.warp import transform as warp

    return warp(source, target, xs, ys)
