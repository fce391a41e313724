"""Outlines over HTTP: format geojson from a JSON body or an upload, GeoTIFFs in lon/lat with
areas in m², how a request asks for its outlines (`outline`, `min_area_m2`, `min_pixels`:
app.options), and what a page needs drawn (`include`). Answers are compared with
`zoo.polygons` run in this process with the server's defaults.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import orjson
import pytest
import requests
from PIL import Image
from test_app import encoded, post_json, prediction_of, rgb

from app import create_app
from app.options import OutlineOptions


@pytest.fixture(scope="module")
def client(small_segmenter):
    return create_app(segmenter=small_segmenter).test_client()


# -- outlines: format geojson, GeoTIFF uploads --------------------------------------------------

UTM_37S = "EPSG:32737"
HALF_METRE = (0.5, 0, 530_000.0, 0, -0.5, 9_250_000.0)  # 0.5 m pixels in Dar es Salaam


def blobby(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth image, so the fixture model's mask has sizeable blobs rather than speckle."""
    small = rgb(max(1, height // 16), max(1, width // 16), seed)
    return np.asarray(Image.fromarray(small).resize((width, height), Image.BILINEAR))


def geotiff_bytes(image: np.ndarray, crs=UTM_37S, transform=HALF_METRE, dtype="uint8") -> bytes:
    import warnings

    from affine import Affine
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.io import MemoryFile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with MemoryFile() as memory:
            options = {"crs": crs, "transform": Affine(*transform)} if crs else {}
            with memory.open(
                driver="GTiff", height=image.shape[0], width=image.shape[1], count=3, dtype=dtype, **options
            ) as dataset:
                dataset.write(np.moveaxis(image, -1, 0).astype(dtype))
            return memory.read()


def direct_collection(segmenter, image, transform=None, crs=None) -> dict:
    """What the server should answer, computed in this process with the served defaults."""
    from zoo.polygons import footprints_geojson

    probabilities = segmenter.probabilities(image)
    mask = (probabilities >= segmenter.threshold).astype(np.uint8)
    np.testing.assert_array_equal(mask, segmenter.predict(image))
    from affine import Affine

    transform = transform and Affine(*transform)
    return footprints_geojson(mask, probabilities, transform, crs, **OutlineOptions().as_dict())


def geojson_of(response) -> dict:
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/geo+json")
    return response.json()


def test_geojson_from_a_json_body_matches_direct_outlines(app_server, small_segmenter):
    image = blobby(96, 128, seed=21)
    collection = geojson_of(post_json(app_server, {"image": image, "format": "geojson"}))
    expected = direct_collection(small_segmenter, image)
    assert collection["count"] > 0, "the fixture model should find some buildings"
    assert orjson.loads(orjson.dumps(expected["features"])) == collection["features"]
    assert collection["crs"] is None and collection["georeferenced"] is False
    assert "JSON array" in collection["why_pixels"]
    assert collection["image"] == {"height": 96, "width": 128}
    assert collection["threshold"] == small_segmenter.threshold
    for feature in collection["features"]:
        assert set(feature["properties"]) == {"area_px", "mask_pixels", "mean_probability"}
        assert small_segmenter.threshold <= feature["properties"]["mean_probability"] <= 1


def test_geojson_is_also_asked_by_query_or_accept(app_server, small_segmenter):
    image = blobby(64, 64, seed=22)
    expected = geojson_of(post_json(app_server, {"image": image, "format": "geojson"}))
    upload = {"file": ("tile.png", encoded(image), "image/png")}
    for kwargs in ({"params": {"format": "geojson"}}, {"headers": {"Accept": "application/geo+json"}}):
        answer = geojson_of(requests.post(f"{app_server}/inference", files=upload, timeout=60, **kwargs))
        assert answer["features"] == expected["features"]
        assert "PNG carries no georeferencing" in answer["why_pixels"]


def test_geotiff_upload_gives_lon_lat_and_square_metres(app_server, small_segmenter):
    from shapely.geometry import shape

    image = blobby(128, 160, seed=23)
    answer = geojson_of(
        requests.post(
            f"{app_server}/inference",
            params={"format": "geojson"},
            timeout=60,
            files={"file": ("scene.tif", geotiff_bytes(image), "image/tiff")},
        )
    )
    expected = direct_collection(small_segmenter, image, HALF_METRE, UTM_37S)
    assert answer["features"] == orjson.loads(orjson.dumps(expected["features"]))
    assert answer["georeferenced"] is True and answer["source_crs"] == UTM_37S
    assert answer["crs"]["properties"]["name"].endswith("CRS84")
    assert answer["count"] > 0
    for feature in answer["features"]:
        properties = feature["properties"]
        assert properties["area_m2"] == pytest.approx(properties["area_px"] * 0.25, rel=1e-6)
        lon, lat = shape(feature["geometry"]).centroid.coords[0]
        assert 39.2 < lon < 39.4 and -6.9 < lat < -6.7  # Dar es Salaam, not pixels


def test_geotiff_upload_keeps_the_mask_contract(app_server, small_segmenter):
    image = blobby(40, 56, seed=24)
    answer = requests.post(
        f"{app_server}/inference",
        timeout=60,
        files={"file": ("scene.tif", geotiff_bytes(image), "image/tiff")},
    )
    np.testing.assert_array_equal(prediction_of(answer), small_segmenter.predict(image))


def test_tiff_without_georeferencing_falls_back_to_pixels(client):
    image = blobby(48, 48, seed=25)
    answer = client.post(
        "/inference?format=geojson",
        content_type="multipart/form-data",
        data={"file": (io.BytesIO(geotiff_bytes(image, crs=None)), "plain.tif")},
    )
    assert answer.status_code == 200, answer.json
    assert answer.json["georeferenced"] is False and answer.json["crs"] is None
    assert "TIFF 'plain.tif' has no CRS" in answer.json["why_pixels"]


def png_16_bit(pixels: np.ndarray) -> bytes:
    """A 16-bit PNG (gray for H x W, RGB for H x W x 3), written chunk by chunk: PIL writes
    16-bit gray but no 16-bit RGB."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    height, width = pixels.shape[:2]
    colour = 2 if pixels.ndim == 3 else 0
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)
    header = struct.pack(">IIBBBBB", width, height, 16, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    "name, data",
    [
        ("deep.tif", lambda: geotiff_bytes(rgb(8, 8), dtype="uint16")),
        ("deep-rgb.png", lambda: png_16_bit(rgb(8, 8).astype(np.uint16) * 257)),
        ("deep-gray.png", lambda: png_16_bit(np.full((8, 8), 40000, np.uint16))),
        ("dim.png", lambda: png_16_bit(np.full((8, 8), 200, np.uint16))),  # 16-bit, values < 256
    ],
)
def test_16_bit_uploads_are_refused_naming_the_bit_depth(client, name, data):
    # One rule for PNG and TIFF, as the training reader has: PIL used to clip a 16-bit gray
    # PNG at 255 (and keep the high byte of a 16-bit RGB one) and answer 200.
    answer = client.post(
        "/inference", content_type="multipart/form-data", data={"file": (io.BytesIO(data()), name)}
    )
    assert answer.status_code == 400, answer.json
    assert f"'{name}'" in answer.json["error"] and "16-bit" in answer.json["error"]
    assert "8-bit" in answer.json["error"]


def test_8_bit_png_with_a_palette_or_fewer_bits_is_still_taken(client, small_segmenter):
    image = rgb(16, 16, seed=3)
    buffer = io.BytesIO()
    Image.fromarray(image).convert("P").save(buffer, format="PNG", bits=4)
    answer = client.post(
        "/inference",
        content_type="multipart/form-data",
        data={"file": (io.BytesIO(buffer.getvalue()), "palette.png")},
    )
    assert answer.status_code == 200, answer.json


@pytest.mark.parametrize(
    "body, named",
    [
        (b'{"image": [[[1, 2, 3]]], "format": "shp"}', "field 'format' must be one of json, png, geojson"),
        (b'{"image": [[[1, 2, 3]]], "format": 7}', "field 'format' must be a string"),
        (b'{"format": "kml", "image": [[[1, 2, 3]]]}', "must be one of json, png, geojson; got 'kml'"),
    ],
)
def test_unknown_format_in_the_body_is_400_naming_the_choices(client, body, named):
    answer = client.post("/inference", data=body, content_type="application/json")
    assert answer.status_code == 400 and named in answer.json["error"]


def test_format_asked_twice_differently_is_400(client):
    answer = client.post(
        "/inference?format=png",
        content_type="application/json",
        data=b'{"image": [[[1, 2, 3]]], "format": "geojson"}',
    )
    assert answer.status_code == 400 and "'png' in the query" in answer.json["error"]


def test_format_in_the_body_keeps_the_fast_path(monkeypatch):
    from app import inputs

    image = rgb(3, 4, seed=26)
    body = orjson.dumps({"image": image}, option=orjson.OPT_SERIALIZE_NUMPY)
    expected = inputs.json_request(body, 4096).image
    monkeypatch.setattr(inputs, "_careful", lambda *args: pytest.fail("took the careful path"))
    for tail in (b', "format": "geojson"}', b' ,\n "format" : "png" } \n'):
        upload = inputs.json_request(body[:-1] + tail, 4096)
        np.testing.assert_array_equal(upload.image, expected)
        assert upload.format in ("geojson", "png")


def test_json_body_with_format_anywhere_reads_like_orjson():
    from app.inputs import json_request

    for body, chosen in [
        (b'{"format": "geojson", "image": [[[1, 2, 3]]]}', "geojson"),
        (b'{"image": [[[1, 2, 3]]], "format": "png", "format": "geojson"}', "geojson"),
        (b'{"image": [[[1, 2, 3]]], "format": null}', None),
    ]:
        assert json_request(body, 4096).format == orjson.loads(body).get("format") == chosen


def test_include_gives_the_page_mask_image_and_pixel_outlines(client, small_segmenter):
    from shapely.geometry import shape

    image = blobby(64, 80, seed=27)
    answer = client.post(
        "/inference?format=geojson&include=mask,image,pixels",
        content_type="multipart/form-data",
        data={"file": (io.BytesIO(geotiff_bytes(image)), "scene.tif")},
    )
    collection = answer.json
    assert answer.status_code == 200 and collection["count"] > 0
    decode = lambda text: np.asarray(Image.open(io.BytesIO(base64.b64decode(text))))  # noqa: E731
    np.testing.assert_array_equal(decode(collection["mask_png"]), small_segmenter.predict(image) * 255)
    np.testing.assert_array_equal(decode(collection["image_png"]), image)
    for feature in collection["features"]:
        outline = shape(feature["properties"]["pixel_geometry"])
        assert outline.area == pytest.approx(feature["properties"]["area_px"])
    bad = client.post("/inference?format=geojson&include=everything", json={"image": [[[1, 2, 3]]]})
    assert bad.status_code == 400 and "mask, image, pixels" in bad.json["error"]


# -- how a request asks for its outlines: outline, min_area_m2, min_pixels (app.options) ----------


def corners(collection: dict) -> int:
    return sum(len(ring) for f in collection["features"] for ring in f["geometry"]["coordinates"])


def test_regular_outlines_by_query_or_body_match_zoo_polygons(client, small_segmenter):
    from zoo.polygons import footprints_geojson

    image = blobby(128, 128, seed=28)
    probabilities = small_segmenter.probabilities(image)
    mask = (probabilities >= small_segmenter.threshold).astype(np.uint8)
    expected = footprints_geojson(mask, probabilities, outline="regular", min_pixels=20)
    body = orjson.dumps({"image": image, "format": "geojson", "outline": "regular", "min_pixels": 20},
                        option=orjson.OPT_SERIALIZE_NUMPY)  # fmt: skip
    from_body = client.post("/inference", data=body, content_type="application/json").json
    upload = {"file": (io.BytesIO(encoded(image)), "tile.png")}
    from_query = client.post("/inference?format=geojson&outline=regular&min_pixels=20", data=upload).json
    for answer in (from_body, from_query):
        assert answer["outline"] == "regular" and answer["min_pixels"] == 20 and answer["count"] > 0
        assert answer["features"] == orjson.loads(orjson.dumps(expected["features"]))
        for feature in answer["features"]:
            assert feature["properties"]["mask_pixels"] >= 20
            assert small_segmenter.threshold <= feature["properties"]["mean_probability"] <= 1
    raw = client.post(
        "/inference?format=geojson&outline=raw&min_pixels=20", json={"image": image.tolist()}
    ).json
    assert corners(from_body) < corners(raw)


def test_min_area_m2_leaves_out_small_buildings_of_a_geotiff(client, small_segmenter):
    image = blobby(128, 160, seed=23)
    tiff = geotiff_bytes(image)
    everything = client.post(
        "/inference?format=geojson&min_area_m2=0", data={"file": (io.BytesIO(tiff), "s.tif")}
    )
    areas = sorted(f["properties"]["area_m2"] for f in everything.json["features"])
    assert len(areas) >= 2, "the fixture model should find buildings of several sizes"
    cut = (areas[0] + areas[-1]) / 2
    larger = client.post(
        f"/inference?format=geojson&min_area_m2={cut}", data={"file": (io.BytesIO(tiff), "s.tif")}
    )
    assert sorted(f["properties"]["area_m2"] for f in larger.json["features"]) == [
        a for a in areas if a >= cut
    ]
    assert larger.json["min_area_m2"] == cut and larger.json["min_pixels"] is None


def test_the_served_defaults_apply_and_model_says_them(client):
    defaults = OutlineOptions().as_dict()
    assert client.get("/model").json["serving"]["outlines"] == defaults
    answer = client.post("/inference?format=geojson", json={"image": rgb(8, 8).tolist()}).json
    assert answer["outline"] == defaults["outline"] and answer["min_pixels"] == defaults["min_pixels"]


BAD_OPTIONS = [
    ("?outline=square", None, "query parameter 'outline' must be one of raw, regular; got 'square'"),
    ("?min_area_m2=four", None, "query parameter 'min_area_m2' must be a number of m²"),
    ("?min_area_m2=-1", None, "query parameter 'min_area_m2' must be between 0 and 1e+06 m²; got -1"),
    ("?min_area_m2=nan", None, "query parameter 'min_area_m2' must be between 0 and"),
    ("?min_pixels=2.5", None, "query parameter 'min_pixels' must be a whole number of pixels"),
    ("?min_pixels=-3", None, "query parameter 'min_pixels' must be a whole number of pixels"),
    ("", {"outline": 3}, "field 'outline' must be one of raw, regular; got 3"),
    ("", {"min_area_m2": "4"}, "field 'min_area_m2' must be a number of m²"),
    ("", {"min_area_m2": True}, "field 'min_area_m2' must be a number of m²"),
    ("", {"min_area_m2": 1e7}, "field 'min_area_m2' must be between 0 and 1e+06 m²"),
    ("", {"min_pixels": 2.5}, "field 'min_pixels' must be a whole number of pixels"),
    ("", {"min_pixels": [4]}, "field 'min_pixels' must be a whole number of pixels"),
    ("?outline=raw", {"outline": "regular"}, "outline asked twice and differently"),
]


@pytest.mark.parametrize("query, members, named", BAD_OPTIONS)
def test_bad_outline_options_are_400_naming_the_field(client, query, members, named):
    body = {"image": [[[1, 2, 3]]], "format": "geojson", **(members or {})}
    answer = client.post(f"/inference{query}", json=body)
    assert answer.status_code == 400 and named in answer.json["error"], answer.json
    if members is None:  # an upload takes them in the query, and is refused the same way
        upload = {"file": (io.BytesIO(encoded(rgb(4, 4))), "tile.png")}
        answer = client.post(f"/inference{query}&format=geojson", data=upload)
        assert answer.status_code == 400 and named in answer.json["error"], answer.json


def test_options_after_the_image_keep_the_fast_path(monkeypatch):
    from app import inputs

    image = rgb(3, 4, seed=29)
    body = orjson.dumps({"image": image}, option=orjson.OPT_SERIALIZE_NUMPY)
    monkeypatch.setattr(inputs, "_careful", lambda *args: pytest.fail("took the careful path"))
    tail = b', "format": "geojson" ,"outline":"regular",\n "min_area_m2": 2.5, "min_pixels": 12}'
    upload = inputs.json_request(body[:-1] + tail, 4096)
    np.testing.assert_array_equal(upload.image, image)
    assert upload.format == "geojson"
    assert upload.fields == {"outline": "regular", "min_area_m2": 2.5, "min_pixels": 12}


def test_options_anywhere_in_the_body_read_like_orjson():
    from app.inputs import json_request

    for body in (b'{"outline": "regular", "image": [[[1, 2, 3]]], "min_pixels": 4}',
                 b'{"image": [[[1, 2, 3]]], "min_pixels": 4, "min_pixels": 9, "format": "png"}',
                 b'{"image": [[[1, 2, 3]]], "min_area_m2": null, "outline": "raw"}'):  # fmt: skip
        parsed = orjson.loads(body)
        fields = {name: parsed[name] for name in ("outline", "min_area_m2", "min_pixels") if name in parsed}
        assert json_request(body, 4096).fields == fields
