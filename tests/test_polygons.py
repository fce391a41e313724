"""Masks to building outlines (`zoo.polygons`) on real geometry: a GeoTIFF written here with
rasterio, in UTM zone 37S (EPSG:32737, Dar es Salaam's) at 0.5 m a pixel, holding known shapes.

The outlines are rasterised back onto the grid and compared with the mask they came from,
their areas are checked against the transform, holes must survive and no geometry may be
invalid. No model is needed: these run in about a second.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS
from rasterio.features import rasterize
from shapely.affinity import rotate
from shapely.geometry import Point, Polygon, box, shape

from zoo import polygons

UTM_37S = "EPSG:32737"
PIXEL_M = 0.5
# Top-left corner of the scene: Dar es Salaam, in UTM 37S metres.
ORIGIN = Affine(PIXEL_M, 0, 530_000.0, 0, -PIXEL_M, 9_250_000.0)
HEIGHT, WIDTH = 240, 320


def scene_shapes() -> dict[str, Polygon]:
    """Buildings in pixel coordinates (x = column, y = row)."""
    courtyard = box(150, 20, 230, 100).difference(box(175, 45, 205, 75))
    l_shape = box(20, 140, 100, 170).union(box(20, 170, 50, 220))
    return {
        "rectangle": box(20, 20, 60, 40),  # 40 x 20 px: exactly 800 px, 200 m²
        "rotated": rotate(box(70, 60, 130, 90), 27, origin="centroid"),
        "courtyard": courtyard,  # one hole of 30 x 30 px
        "l_shape": l_shape,
        "corner_a": box(250, 150, 270, 170),  # two squares that touch at one corner
        "corner_b": box(270, 170, 290, 190),
        "speck": box(300, 20, 302, 22),  # 4 px: below the minimum area
    }


def burn(shapes, height=HEIGHT, width=WIDTH) -> np.ndarray:
    """Pixels whose centre lies inside a shape (rasterio's rule, in pixel coordinates)."""
    return rasterize(
        [(geometry, 1) for geometry in shapes],
        out_shape=(height, width),
        transform=Affine.identity(),
        dtype="uint8",
    )


def write_geotiff(path, mask: np.ndarray, transform=ORIGIN, crs=UTM_37S) -> None:
    import rasterio

    rgb = np.stack([mask * 200, mask * 120, 255 - mask * 255]).astype(np.uint8)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=mask.shape[0],
        width=mask.shape[1],
        count=3,
        dtype="uint8",
        transform=transform,
        crs=crs,
    ) as dataset:
        dataset.write(rgb)


def read_back(path):
    """The mask, transform and CRS of a GeoTIFF written by `write_geotiff`."""
    import rasterio

    with rasterio.open(path) as dataset:
        return (dataset.read(3) == 0).astype(np.uint8), dataset.transform, dataset.crs


def to_crs(geojson_geometry, crs):
    """A lon/lat GeoJSON geometry in `crs`."""
    from rasterio.warp import transform_geom

    return shape(transform_geom("EPSG:4326", crs, geojson_geometry))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.logical_and(a, b).sum() / np.logical_or(a, b).sum())


@pytest.fixture(scope="module")
def geotiff(tmp_path_factory):
    path = tmp_path_factory.mktemp("scene") / "scene.tif"
    write_geotiff(path, burn(scene_shapes().values()))
    return path


@pytest.fixture(scope="module")
def collection(geotiff):
    mask, transform, crs = read_back(geotiff)
    probabilities = np.where(mask > 0, 0.9, 0.1).astype(np.float32)
    return polygons.footprints_geojson(mask, probabilities, transform, crs)


def test_the_geotiff_round_trips_its_georeferencing(geotiff):
    mask, transform, crs = read_back(geotiff)
    assert transform == ORIGIN and crs == CRS.from_string(UTM_37S)
    assert mask.sum() == burn(scene_shapes().values()).sum() > 10_000


def test_outlines_rasterised_back_match_the_mask(geotiff, collection):
    mask, transform, crs = read_back(geotiff)
    # Lon/lat back to the image's CRS, burnt onto its grid: the whole trip, projections included.
    back = rasterize(
        [(to_crs(feature["geometry"], crs), 1) for feature in collection["features"]],
        out_shape=mask.shape,
        transform=transform,
        dtype="uint8",
    )
    assert iou(back, mask) >= 0.98
    for name, building in scene_shapes().items():  # and building by building
        if name == "speck":
            continue
        alone = burn([building])
        assert iou(back * alone, alone) >= 0.97, name


def test_buildings_are_found_once_each_and_specks_dropped(collection):
    assert collection["count"] == len(collection["features"]) == 6  # not the 4 px speck
    ids = [feature["id"] for feature in collection["features"]]
    assert ids == list(range(6))


def test_areas_follow_the_transform(collection):
    pixel_area_m2 = abs(ORIGIN.a * ORIGIN.e)
    found = [feature["properties"] for feature in collection["features"]]
    rectangle = next(properties for properties in found if properties["mask_pixels"] == 800)
    assert rectangle["area_px"] == 800 and rectangle["area_m2"] == pytest.approx(200.0, abs=1e-6)
    for properties in found:
        assert properties["area_m2"] == pytest.approx(properties["area_px"] * pixel_area_m2, rel=1e-6)
        # Simplification moves an outline by at most a pixel: the area stays close to the count.
        assert properties["area_px"] == pytest.approx(properties["mask_pixels"], rel=0.03)
    assert collection["total_area_m2"] == pytest.approx(
        sum(properties["area_m2"] for properties in found), abs=0.01
    )
    assert collection["area_crs"].startswith(UTM_37S)


def test_the_courtyard_keeps_its_hole(geotiff, collection):
    _, transform, crs = read_back(geotiff)
    courtyard = next(
        feature
        for feature in collection["features"]
        if feature["properties"]["mask_pixels"] == 80 * 80 - 30 * 30
    )
    outline = to_crs(courtyard["geometry"], crs)
    assert isinstance(outline, Polygon) and len(outline.interiors) == 1
    x, y = transform @ (190, 60)  # the middle of the hole
    assert not outline.contains(Point(x, y))
    assert courtyard["properties"]["area_px"] == 80 * 80 - 30 * 30


def test_collection_says_where_it_lies(geotiff, collection):
    from rasterio.warp import transform_bounds

    assert collection["georeferenced"] is True and collection["source_crs"] == UTM_37S
    assert collection["crs"]["properties"]["name"].endswith("CRS84")
    west, south, east, north = transform_bounds(UTM_37S, "EPSG:4326", *_bounds(ORIGIN, HEIGHT, WIDTH))
    for feature in collection["features"]:
        lon_min, lat_min, lon_max, lat_max = shape(feature["geometry"]).bounds
        assert west <= lon_min and lon_max <= east and south <= lat_min and lat_max <= north
        assert feature["properties"]["mean_probability"] == pytest.approx(0.9, abs=1e-4)


def test_geometries_are_valid_and_follow_the_right_hand_rule(collection):
    for feature in collection["features"]:
        geometry = shape(feature["geometry"])
        assert geometry.is_valid and geometry.geom_type in ("Polygon", "MultiPolygon")
        for part in getattr(geometry, "geoms", [geometry]):
            assert part.exterior.is_ccw
            assert all(not ring.is_ccw for ring in part.interiors)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("tolerance", [0.0, 1.0, 3.0])
def test_noisy_masks_never_give_invalid_geometry(seed, tolerance):
    # Speckle, one-pixel bridges and diagonal contacts: what makes polygonizers emit
    # self-touching rings, and simplification collapse them.
    rng = np.random.default_rng(seed)
    mask = (rng.random((96, 96)) < 0.45).astype(np.uint8)
    mask[20:60, 20:60] = 1
    mask[30:50, 30:50] = rng.random((20, 20)) < 0.3
    found = polygons.outlines(mask, tolerance=tolerance, min_area=2)
    assert found
    for footprint in found:
        assert footprint.geometry.is_valid and not footprint.geometry.is_empty
        assert footprint.geometry.geom_type in ("Polygon", "MultiPolygon")
        assert footprint.geometry.area >= 2


def test_pixel_coordinates_without_georeferencing():
    mask = burn(scene_shapes().values())
    collection = polygons.footprints_geojson(mask, why_pixels="a PNG carries no georeferencing")
    assert collection["crs"] is None and collection["georeferenced"] is False
    assert collection["why_pixels"] == "a PNG carries no georeferencing"
    assert collection["total_area_m2"] is None and collection["coordinates"].startswith("pixels")
    rectangle = next(f for f in collection["features"] if f["properties"]["area_px"] == 800)
    assert shape(rectangle["geometry"]).equals(box(20, 20, 60, 40))  # exact, in pixels
    assert "area_m2" not in rectangle["properties"]
    assert "mean_probability" not in rectangle["properties"]  # no probabilities given
    back = burn([shape(f["geometry"]) for f in collection["features"]])
    assert iou(back, mask) >= 0.98


def test_identity_transform_or_no_crs_is_not_georeferenced():
    assert not polygons.is_georeferenced(Affine.identity(), CRS.from_string(UTM_37S))
    assert not polygons.is_georeferenced(ORIGIN, None)
    assert polygons.is_georeferenced(ORIGIN, CRS.from_string(UTM_37S))


def test_geographic_crs_measures_in_an_equal_area_projection():
    # The same scene on a lon/lat grid near Dar es Salaam (6.8° S): 5e-6 degrees a pixel.
    degrees = 5e-6
    transform = Affine(degrees, 0, 39.28, 0, -degrees, -6.80)
    collection = polygons.footprints_geojson(burn([box(20, 20, 60, 40)]), None, transform, "EPSG:4326")
    metres_per_degree_lat = 110_574.0 + 1.1 * 6.8**2  # close enough near the equator
    metres_per_degree_lon = 111_320.0 * math.cos(math.radians(6.8))
    expected = 800 * degrees**2 * metres_per_degree_lat * metres_per_degree_lon
    area = collection["features"][0]["properties"]["area_m2"]
    assert area == pytest.approx(expected, rel=2e-3)
    assert "laea" in collection["area_crs"] and "geographic" in collection["area_crs"]


def test_pixel_geometry_kept_on_request(geotiff):
    mask, transform, crs = read_back(geotiff)
    collection = polygons.footprints_geojson(mask, None, transform, crs, pixel_geometry=True)
    for feature in collection["features"]:
        outline = shape(feature["properties"]["pixel_geometry"])
        assert outline.area == pytest.approx(feature["properties"]["area_px"])


def test_empty_mask_gives_an_empty_collection():
    collection = polygons.footprints_geojson(np.zeros((10, 12), np.uint8), None, ORIGIN, UTM_37S)
    assert collection["features"] == [] and collection["count"] == 0
    assert collection["total_area_m2"] == 0


def test_geotiff_without_crs_is_read_as_pixels(tmp_path):
    import rasterio

    from app.inputs import read_tiff

    path = tmp_path / "plain.tif"
    mask = burn([box(2, 2, 10, 10)], 16, 16)
    with (
        pytest.warns(rasterio.errors.NotGeoreferencedWarning),
        rasterio.open(path, "w", driver="GTiff", height=16, width=16, count=3, dtype="uint8") as dataset,
    ):
        dataset.write(np.stack([mask * 255] * 3))
    with pytest.warns(rasterio.errors.NotGeoreferencedWarning), rasterio.open(path) as dataset:
        upload = read_tiff(dataset, "plain.tif")
    assert upload.crs is None and "plain.tif" in upload.why_pixels and "no CRS" in upload.why_pixels
    np.testing.assert_array_equal(upload.image[..., 0], mask * 255)


def _bounds(transform, height, width):
    left, top = transform @ (0, 0)
    right, bottom = transform @ (width, height)
    return left, bottom, right, top


def test_web_mercator_areas_are_measured_in_an_equal_area_projection():
    # Web Mercator (EPSG:3857) inflates areas by sec² latitude: 1.28x in Kathmandu (27.7° N).
    # 0.0746 m a pixel: zoom 21, like the OpenAerialMap tiles this project trains on.
    from rasterio.warp import transform as warp

    (x,), (y,) = warp("EPSG:4326", "EPSG:3857", [85.32], [27.70])
    side = 0.0746
    collection = polygons.footprints_geojson(
        burn([box(20, 20, 60, 40)]), None, Affine(side, 0, x, 0, -side, y), "EPSG:3857"
    )
    # A 3857 metre on the WGS84 ellipsoid at latitude phi: cos(phi) / sqrt(1 - e² sin² phi) of
    # a metre east-west and cos(phi) (1 - e²) / (1 - e² sin² phi)^1.5 north-south.
    e2, sin2 = 0.00669438, math.sin(math.radians(27.70)) ** 2
    ground = 800 * side**2 * math.cos(math.radians(27.70)) ** 2 * (1 - e2) / (1 - e2 * sin2) ** 2
    assert collection["features"][0]["properties"]["area_m2"] == pytest.approx(ground, rel=1e-3)
    assert "laea" in collection["area_crs"] and "EPSG:3857 misstates" in collection["area_crs"]


def blobs(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth random blobs with holes and bridges: buildings of every shape and size."""
    from PIL import Image

    small = np.random.default_rng(seed).random((height // 12, width // 12)).astype(np.float32)
    smooth = np.asarray(Image.fromarray(small).resize((width, height), Image.BILINEAR))
    return (smooth > 0.55).astype(np.uint8)


@pytest.mark.parametrize("part", [(64, 80), (50, 300), (97, 41)])
def test_a_scene_outlined_part_by_part_equals_the_whole(part):
    height, width = 200, 300
    mask = np.maximum(blobs(height, width, seed=part[0]), burn(scene_shapes().values(), height, width))
    probabilities = np.random.default_rng(1).random(mask.shape).astype(np.float32)
    whole = polygons.outlines(mask, probabilities, tolerance=0)
    scene = polygons.SceneOutlines(height, width, tolerance=0)
    for row in range(0, height, part[0]):
        for col in range(0, width, part[1]):
            window = np.s_[row : row + part[0], col : col + part[1]]
            scene.add(mask[window], probabilities[window], row, col)
    parts = scene.footprints()
    assert len(parts) == len(whole) > 10
    for joined, alone in zip(parts, whole):
        assert joined.geometry.equals(alone.geometry)  # the same point set, holes included
        assert joined.pixels == alone.pixels
        assert joined.mean_probability == pytest.approx(alone.mean_probability, rel=1e-9)

    simplified = polygons.SceneOutlines(height, width)
    for row in range(0, height, part[0]):
        for col in range(0, width, part[1]):
            window = np.s_[row : row + part[0], col : col + part[1]]
            simplified.add(mask[window], None, row, col)
    # Simplified, a joined building may differ from the whole mask's only along the joins.
    back = burn([footprint.geometry for footprint in simplified.footprints()], height, width)
    reference = burn([footprint.geometry for footprint in polygons.outlines(mask)], height, width)
    assert iou(back, reference) >= 0.99
    assert all(footprint.geometry.is_valid for footprint in simplified.footprints())
