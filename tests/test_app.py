"""The served contract, end to end: a real `python -m app` (and gunicorn) on a small model.

Answers are compared with `Segmenter.predict` run in this process on the same file, so a
passing test means the HTTP layer changes nothing about the masks.
"""
from __future__ import annotations

import base64
import io
import json
import sys
import threading
from pathlib import Path

import numpy as np
import orjson
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from app import create_app
from app.model import MAKE_ONE, MAKE_ONE_TIME, MAKE_SMOKE, default_model_path
from zoo.metrics import Confusion, iou_distribution, per_image_iou

REPO = Path(__file__).resolve().parent.parent


def rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def post_json(url: str, payload, session=None, **kwargs) -> requests.Response:
    if not isinstance(payload, bytes):
        payload = orjson.dumps({key: np.ascontiguousarray(value) if isinstance(value, np.ndarray)
                                else value for key, value in payload.items()},
                               option=orjson.OPT_SERIALIZE_NUMPY)
    return (session or requests).post(f"{url}/inference", data=payload, timeout=120,
                                      headers={"Content-Type": "application/json"}, **kwargs)


def prediction_of(response: requests.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(response.json()["prediction"])


def encoded(image: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt)
    return buffer.getvalue()


def error_of(response: requests.Response) -> str:
    assert response.headers["Content-Type"].startswith("application/json"), response.text
    return response.json()["error"]


@pytest.fixture(scope="module")
def client(small_segmenter):
    return create_app(segmenter=small_segmenter).test_client()


# -- the contract ------------------------------------------------------------------------------

@pytest.mark.parametrize("height, width", [(37, 61), (64, 64), (1, 1), (530, 45)])
def test_json_prediction_matches_direct_predict(app_server, small_segmenter, height, width):
    image = rgb(height, width, seed=height)
    mask = prediction_of(post_json(app_server, {"image": image}))
    assert mask.shape == (height, width)
    assert set(np.unique(mask)) <= {0, 1}
    np.testing.assert_array_equal(mask, small_segmenter.predict(image))


def test_fixture_model_gives_mixed_masks(small_segmenter):
    # Guards the equality tests above: all-0 or all-1 masks would match by accident.
    assert 0.05 < small_segmenter.predict(rgb(64, 64)).mean() < 0.95


def test_rgba_drops_alpha_and_grayscale_is_replicated(app_server, small_segmenter):
    image = rgb(20, 30, seed=3)
    rgba = np.concatenate([image, np.full((20, 30, 1), 7, np.uint8)], axis=2)
    expected = small_segmenter.predict(image)
    np.testing.assert_array_equal(prediction_of(post_json(app_server, {"image": rgba})), expected)
    gray = image[..., 0]
    expected_gray = small_segmenter.predict(np.repeat(gray[..., None], 3, axis=2))
    for shaped in (gray, gray[..., None]):
        np.testing.assert_array_equal(prediction_of(post_json(app_server, {"image": shaped})),
                                      expected_gray)


def test_integral_floats_are_accepted(app_server, small_segmenter):
    image = rgb(9, 11, seed=4)
    answer = post_json(app_server, {"image": image.astype(float).tolist()})
    np.testing.assert_array_equal(prediction_of(answer), small_segmenter.predict(image))


def test_multipart_upload_answers_json_and_png(app_server, small_segmenter):
    image = rgb(37, 61, seed=5)
    expected = small_segmenter.predict(image)
    upload = {"file": ("tile.png", encoded(image), "image/png")}
    as_json = requests.post(f"{app_server}/inference", files=upload, timeout=60)
    np.testing.assert_array_equal(prediction_of(as_json), expected)
    for kwargs in ({"params": {"format": "png"}}, {"headers": {"Accept": "image/png"}}):
        answer = requests.post(f"{app_server}/inference", files=upload, timeout=60, **kwargs)
        assert answer.status_code == 200 and answer.headers["Content-Type"] == "image/png"
        png = np.asarray(Image.open(io.BytesIO(answer.content)))
        np.testing.assert_array_equal(png, expected * 255)


def test_multipart_jpeg_upload(app_server, small_segmenter):
    data = encoded(rgb(40, 24, seed=6), "JPEG")
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    answer = requests.post(f"{app_server}/inference", timeout=60,
                           files={"file": ("tile.jpg", data, "image/jpeg")})
    np.testing.assert_array_equal(prediction_of(answer), small_segmenter.predict(decoded))


# -- bad input: a 4xx whose text names the problem -----------------------------------------------

BAD_JSON = [
    (b"not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object with field 'image'"),
    (b'{"picture": []}', 400, "missing field 'image'"),
    (b'{"image": "abc"}', 400, "field 'image' must be a nested list"),
    (b'{"image": [[[1, 2, 3]], [[1, 2]]]}', 400, "ragged"),
    (b'{"image": [[1, 2, 3], [[1, 2, 3]]]}', 400, "ragged"),
    (b'{"image": [1, 2, 3]}', 400, "has shape [3]"),
    (b'{"image": [[[[1, 2, 3]]]]}', 400, "has shape [1, 1, 1, 3]"),
    (b'{"image": [[[1, 2]]]}', 400, "has shape [1, 1, 2]"),
    (b'{"image": [[[1, 2, 3, 4, 5]]]}', 400, "has shape [1, 1, 5]"),
    (b'{"image": [[[1, 2, 1.5]]]}', 400, "non-integer values, e.g. 1.5 at index [0, 0, 2]"),
    (b'{"image": [[[1, 2, true]]]}', 400, "booleans"),
    (b'{"image": [[[true, false, true]]]}', 400, "booleans"),
    (b'{"image": [[[1, 2, null]]]}', 400, "only integers 0..255"),
    (b'{"image": [[[1, 2, "3"]]]}', 400, "found strings"),
    (b'{"image": [[[1, 2, 256]]]}', 400, "outside 0..255 (min 1, max 256)"),
    (b'{"image": [[[-1, 2, 3]]]}', 400, "outside 0..255 (min -1"),
    (b'{"image": []}', 400, "empty"),
    (b'{"image": [[]]}', 400, "empty"),
    (b'{"image": [[[]]]}', 400, "empty"),
]


@pytest.mark.parametrize("body, status, named", BAD_JSON,
                         ids=[body.decode()[:30] for body, _, _ in BAD_JSON])
def test_bad_json_is_refused_with_its_reason(app_server, body, status, named):
    answer = post_json(app_server, body)
    assert answer.status_code == status
    assert named in error_of(answer)


def test_image_over_the_side_limit_is_413(app_server):
    tall = np.zeros((4097, 1, 3), np.uint8)
    for answer in (post_json(app_server, {"image": tall}),
                   requests.post(f"{app_server}/inference", timeout=60,
                                 files={"file": ("tall.png", encoded(tall))})):
        assert answer.status_code == 413
        assert "4097 x 1" in error_of(answer) and "4096" in error_of(answer)
        assert "python -m app.predict IMAGE --window 4096" in error_of(answer)


def test_body_over_the_limit_is_413(app_server):
    body = b'{"image": [' + b"0," * (33 * 2**20) + b"0]}"  # 66 MB > 64 MB
    answer = post_json(app_server, body)
    assert answer.status_code == 413
    assert "64 MB" in error_of(answer) and "PNG upload" in error_of(answer)


def chunks(body: bytes, size: int = 2**20):
    """`body` as a generator, which requests sends chunked: with no Content-Length."""
    for start in range(0, len(body), size):
        yield body[start:start + size]


def multipart(name: str, filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = "zoo-test-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; "
            f"filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def test_chunked_body_over_the_limit_is_413_json_or_multipart(app_server):
    # Werkzeug cuts a chunked body at the limit without a word: this was 400 "not valid JSON
    # ... char 67108864" for JSON.
    over = 64 * 2**20 + 2**20
    json_body = b'{"image": [' + b"0," * (over // 2) + b"0]}"
    upload, content_type = multipart("file", "big.png", b"\x00" * over)
    for body, kind in ((json_body, "application/json"), (upload, content_type)):
        answer = requests.post(f"{app_server}/inference", data=chunks(body), timeout=120,
                               headers={"Content-Type": kind})
        assert answer.status_code == 413, (kind, answer.text[:200])
        assert "64 MB" in error_of(answer)
    assert requests.get(f"{app_server}/health", timeout=10).ok  # and the server goes on


def test_chunked_body_under_the_limit_is_served_whole(app_server, small_segmenter):
    image = rgb(40, 56, seed=11)
    body = orjson.dumps({"image": image}, option=orjson.OPT_SERIALIZE_NUMPY)
    answer = requests.post(f"{app_server}/inference", data=chunks(body, 4096), timeout=120,
                           headers={"Content-Type": "application/json"})
    np.testing.assert_array_equal(prediction_of(answer), small_segmenter.predict(image))
    upload, content_type = multipart("file", "small.png", encoded(image))
    answer = requests.post(f"{app_server}/inference", data=chunks(upload, 4096), timeout=120,
                           headers={"Content-Type": content_type})
    np.testing.assert_array_equal(prediction_of(answer), small_segmenter.predict(image))


@pytest.mark.parametrize("files, named", [
    ({"upload": ("a.png", b"x")}, "missing multipart field 'file'"),
    ({"file": ("a.png", b"not an image")}, "file 'a.png' is not a readable PNG, JPEG or TIFF"),
    ({"file": ("a.gif", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;")}, "not a readable PNG, JPEG or TIFF"),
    ({"file": ("a.tif", b"II*\x00broken")}, "file 'a.tif' is not a readable PNG, JPEG or TIFF"),
])
def test_bad_upload_is_refused_with_its_reason(app_server, files, named):
    answer = requests.post(f"{app_server}/inference", files=files, timeout=60)
    assert answer.status_code == 400
    assert named in error_of(answer)


def test_unknown_format_parameter_is_400(app_server):
    answer = post_json(app_server, {"image": rgb(2, 2)}, params={"format": "bmp"})
    assert answer.status_code == 400 and "'format'" in error_of(answer)
    assert "json, png, geojson" in error_of(answer)


def test_wrong_method_is_405_json(app_server):
    answer = requests.get(f"{app_server}/inference", timeout=10)
    assert answer.status_code == 405
    assert "GET not allowed on /inference" in error_of(answer) and "POST" in error_of(answer)


def test_unknown_route_is_404_json(app_server):
    answer = requests.get(f"{app_server}/no/such/page", timeout=10)
    assert answer.status_code == 404 and "/no/such/page" in error_of(answer)


def test_a_bug_of_ours_is_a_json_500_without_internals(small_segmenter):
    class Broken:
        metadata, threshold, model = {}, 0.5, small_segmenter.model

        def predict(self, image):
            raise KeyError("secret internals")

    answer = create_app(segmenter=Broken()).test_client().post(
        "/inference", json={"image": [[[1, 2, 3]]]})
    assert answer.status_code == 500
    assert "internal error" in answer.json["error"] and "secret" not in answer.json["error"]


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
            with memory.open(driver="GTiff", height=image.shape[0], width=image.shape[1],
                             count=3, dtype=dtype, **options) as dataset:
                dataset.write(np.moveaxis(image, -1, 0).astype(dtype))
            return memory.read()


def direct_collection(segmenter, image, transform=None, crs=None) -> dict:
    """What the server should answer, computed in this process."""
    from zoo.polygons import footprints_geojson

    probabilities = segmenter.probabilities(image)
    mask = (probabilities >= segmenter.threshold).astype(np.uint8)
    np.testing.assert_array_equal(mask, segmenter.predict(image))
    from affine import Affine

    return footprints_geojson(mask, probabilities, transform and Affine(*transform), crs)


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
    for kwargs in ({"params": {"format": "geojson"}},
                   {"headers": {"Accept": "application/geo+json"}}):
        answer = geojson_of(requests.post(f"{app_server}/inference", files=upload, timeout=60,
                                          **kwargs))
        assert answer["features"] == expected["features"]
        assert "PNG carries no georeferencing" in answer["why_pixels"]


def test_geotiff_upload_gives_lon_lat_and_square_metres(app_server, small_segmenter):
    from shapely.geometry import shape

    image = blobby(128, 160, seed=23)
    answer = geojson_of(requests.post(
        f"{app_server}/inference", params={"format": "geojson"}, timeout=60,
        files={"file": ("scene.tif", geotiff_bytes(image), "image/tiff")}))
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
    answer = requests.post(f"{app_server}/inference", timeout=60,
                           files={"file": ("scene.tif", geotiff_bytes(image), "image/tiff")})
    np.testing.assert_array_equal(prediction_of(answer), small_segmenter.predict(image))


def test_tiff_without_georeferencing_falls_back_to_pixels(client):
    image = blobby(48, 48, seed=25)
    answer = client.post("/inference?format=geojson", content_type="multipart/form-data",
                         data={"file": (io.BytesIO(geotiff_bytes(image, crs=None)), "plain.tif")})
    assert answer.status_code == 200, answer.json
    assert answer.json["georeferenced"] is False and answer.json["crs"] is None
    assert "TIFF 'plain.tif' has no CRS" in answer.json["why_pixels"]


def png_16_bit(pixels: np.ndarray) -> bytes:
    """A 16-bit PNG (gray for H x W, RGB for H x W x 3), written chunk by chunk: PIL writes
    16-bit gray but no 16-bit RGB."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    height, width = pixels.shape[:2]
    colour = 2 if pixels.ndim == 3 else 0
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)
    header = struct.pack(">IIBBBBB", width, height, 16, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("name, data", [
    ("deep.tif", lambda: geotiff_bytes(rgb(8, 8), dtype="uint16")),
    ("deep-rgb.png", lambda: png_16_bit(rgb(8, 8).astype(np.uint16) * 257)),
    ("deep-gray.png", lambda: png_16_bit(np.full((8, 8), 40000, np.uint16))),
    ("dim.png", lambda: png_16_bit(np.full((8, 8), 200, np.uint16))),  # 16-bit, values < 256
])
def test_16_bit_uploads_are_refused_naming_the_bit_depth(client, name, data):
    # One rule for PNG and TIFF, as the training reader has: PIL used to clip a 16-bit gray
    # PNG at 255 (and keep the high byte of a 16-bit RGB one) and answer 200.
    answer = client.post("/inference", content_type="multipart/form-data", data={
        "file": (io.BytesIO(data()), name)})
    assert answer.status_code == 400, answer.json
    assert f"'{name}'" in answer.json["error"] and "16-bit" in answer.json["error"]
    assert "8-bit" in answer.json["error"]


def test_8_bit_png_with_a_palette_or_fewer_bits_is_still_taken(client, small_segmenter):
    image = rgb(16, 16, seed=3)
    buffer = io.BytesIO()
    Image.fromarray(image).convert("P").save(buffer, format="PNG", bits=4)
    answer = client.post("/inference", content_type="multipart/form-data", data={
        "file": (io.BytesIO(buffer.getvalue()), "palette.png")})
    assert answer.status_code == 200, answer.json


@pytest.mark.parametrize("body, named", [
    (b'{"image": [[[1, 2, 3]]], "format": "shp"}', "field 'format' must be one of json, png, geojson"),
    (b'{"image": [[[1, 2, 3]]], "format": 7}', "field 'format' must be a string"),
    (b'{"format": "kml", "image": [[[1, 2, 3]]]}', "must be one of json, png, geojson; got 'kml'"),
])
def test_unknown_format_in_the_body_is_400_naming_the_choices(client, body, named):
    answer = client.post("/inference", data=body, content_type="application/json")
    assert answer.status_code == 400 and named in answer.json["error"]


def test_format_asked_twice_differently_is_400(client):
    answer = client.post("/inference?format=png", content_type="application/json",
                         data=b'{"image": [[[1, 2, 3]]], "format": "geojson"}')
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

    for body, chosen in [(b'{"format": "geojson", "image": [[[1, 2, 3]]]}', "geojson"),
                         (b'{"image": [[[1, 2, 3]]], "format": "png", "format": "geojson"}',
                          "geojson"),
                         (b'{"image": [[[1, 2, 3]]], "format": null}', None)]:
        assert json_request(body, 4096).format == orjson.loads(body).get("format") == chosen


def test_include_gives_the_page_mask_image_and_pixel_outlines(client, small_segmenter):
    from shapely.geometry import shape

    image = blobby(64, 80, seed=27)
    answer = client.post("/inference?format=geojson&include=mask,image,pixels",
                         content_type="multipart/form-data",
                         data={"file": (io.BytesIO(geotiff_bytes(image)), "scene.tif")})
    collection = answer.json
    assert answer.status_code == 200 and collection["count"] > 0
    decode = lambda text: np.asarray(Image.open(io.BytesIO(base64.b64decode(text))))  # noqa: E731
    np.testing.assert_array_equal(decode(collection["mask_png"]),
                                  small_segmenter.predict(image) * 255)
    np.testing.assert_array_equal(decode(collection["image_png"]), image)
    for feature in collection["features"]:
        outline = shape(feature["properties"]["pixel_geometry"])
        assert outline.area == pytest.approx(feature["properties"]["area_px"])
    bad = client.post("/inference?format=geojson&include=everything",
                      json={"image": [[[1, 2, 3]]]})
    assert bad.status_code == 400 and "mask, image, pixels" in bad.json["error"]


# -- health, metadata, page ----------------------------------------------------------------------

def test_health_and_model(app_server, small_model_file):
    recorded = json.loads(small_model_file.with_suffix(".json").read_text())
    health = requests.get(f"{app_server}/health", timeout=10).json()
    assert health["status"] == "ok" and health["model"].startswith("unet_")
    assert health["sha256"] == recorded["sha256"] and health["max_side"] == 4096
    model = requests.get(f"{app_server}/model", timeout=10).json()
    for key in ("config", "threshold", "metrics", "data", "versions", "sha256"):
        assert model[key] == recorded[key]
    assert model["name"] == health["model"]
    assert model["serving"]["threshold"] == recorded["threshold"]
    assert model["serving"]["scales"] == [1.0]  # the page shows what the server applies


def test_page_is_self_contained(app_server):
    page = requests.get(f"{app_server}/", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    for element in ('id="file"', 'id="image"', 'id="mask"', 'id="overlay"', 'id="status"',
                    'id="model-name"', 'id="download-geojson"', 'id="download-mask"'):
        assert element in page.text
    assert "http://" not in page.text and "https://" not in page.text  # offline: no CDN


# -- concurrency ----------------------------------------------------------------------------------

def test_concurrent_clients_get_the_serial_masks(app_server):
    images = [rgb(256, 256, seed=seed) for seed in range(4)]
    bodies = [orjson.dumps({"image": image}, option=orjson.OPT_SERIALIZE_NUMPY) for image in images]
    serial = [prediction_of(post_json(app_server, body)) for body in bodies]
    failures = []

    def client_thread(index: int) -> None:
        with requests.Session() as session:
            for request in range(20):
                which = (index + request) % len(bodies)
                answer = post_json(app_server, bodies[which], session=session)
                if answer.status_code != 200:
                    failures.append(f"{answer.status_code}: {answer.text[:200]}")
                elif not np.array_equal(np.asarray(answer.json()["prediction"]), serial[which]):
                    failures.append(f"client {index} request {request}: mask differs")

    threads = [threading.Thread(target=client_thread, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []


# -- the client ------------------------------------------------------------------------------------

def write_folder(root: Path) -> Path:
    """Three images of odd sizes, one JPEG; masks as 0/255 and as 0/1."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(7)
    shapes = [(40, 52, "PNG"), (33, 47, "JPEG"), (64, 64, "PNG")]
    for index, (height, width, fmt) in enumerate(shapes):
        image = rgb(height, width, seed=100 + index)
        mask = np.zeros((height, width), np.uint8)
        top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
        mask[top:top + height // 2, left:left + width // 2] = 255 if index % 2 == 0 else 1
        suffix = ".png" if fmt == "PNG" else ".jpg"
        Image.fromarray(image).save(root / "images" / f"tile{index}{suffix}", format=fmt)
        Image.fromarray(mask, mode="L").save(root / "masks" / f"tile{index}.png")
    return root


def test_client_cli_metrics_equal_direct_zoo_metrics(app_server, small_segmenter, run_module,
                                                     tmp_path):
    data, out = write_folder(tmp_path / "data"), tmp_path / "report"
    done = run_module("app.client", "--url", app_server, "--data", data, "--out", out,
                      "--samples", 2)
    assert done.returncode == 0, done.stderr
    assert "building IoU = TP/(TP+FP+FN)" in done.stdout and "mean IoU" in done.stdout

    confusion, ious = Confusion(), []
    for image_path in sorted((data / "images").iterdir()):
        image = np.asarray(Image.open(image_path).convert("RGB"))
        truth = np.asarray(Image.open(data / "masks" / f"{image_path.stem}.png")) > 0
        prediction = small_segmenter.predict(image)
        confusion.update(truth, prediction)
        ious.append(per_image_iou(truth, prediction))
    report = json.loads((out / "metrics.json").read_text())
    assert report["images"] == 3
    assert report["metrics"] == confusion.scores()
    assert report["per_image_building_iou"] == iou_distribution(ious)
    assert len(list(out.glob("sample_*.png"))) == 2


def test_client_evaluate_respects_limit(app_server, tmp_path):
    from app import client as app_client

    result = app_client.evaluate(app_server, write_folder(tmp_path / "data"), limit=2)
    assert result["images"] == 2 and set(result["metrics"]) >= {"building_iou", "mean_iou"}
    assert "per-image building IoU" in app_client.markdown_table(result)


def test_client_reads_folders_like_the_harness(app_server, small_segmenter, run_module, tmp_path):
    from app import client as app_client

    data = write_folder(tmp_path / "data")
    # A TIFF mask, which the data layer reads and the client used not to.
    mask = np.asarray(Image.open(data / "masks" / "tile2.png"))
    (data / "masks" / "tile2.png").unlink()
    Image.fromarray(mask).save(data / "masks" / "tile2.tif")
    result = app_client.evaluate(app_server, data)
    image = np.asarray(Image.open(data / "images" / "tile2.png").convert("RGB"))
    assert result["images"] == 3
    assert result["per_image"][2]["building_iou"] == per_image_iou(
        mask > 0, small_segmenter.predict(image))

    # A bad mask stops the run before any request (the URL answers nothing), naming the file.
    Image.fromarray(np.full((64, 64), 7, np.uint8)).save(data / "masks" / "tile2.tif")
    done = run_module("app.client", "--url", "http://127.0.0.1:9", "--data", data)
    assert done.returncode == 1
    assert str(data / "masks" / "tile2.tif") in done.stderr and "Traceback" not in done.stderr


def test_error_overlay_colours():
    from app.client import ERROR_COLOURS, error_overlay

    overlay = error_overlay(np.array([[1, 1, 0, 0]]), np.array([[1, 0, 1, 0]]))
    assert [tuple(p) for p in overlay[0]] == [ERROR_COLOURS[k] for k in ("tp", "fn", "fp", "tn")]


def test_notebook_is_valid_and_uses_the_client():
    import nbformat

    notebook = nbformat.read(REPO / "app" / "client.ipynb", as_version=4)
    nbformat.validate(notebook)
    code = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    assert "from app import client" in code and "client.evaluate(" in code
    assert "client.markdown_table(" in code and "client.draw_side_by_side(" in code


# -- starting, and refusing to start ---------------------------------------------------------------

def test_missing_model_exits_naming_the_command_that_makes_one(run_module, tmp_path):
    done = run_module("app", "--model", tmp_path / "absent.keras", "--port", 0, timeout=30)
    assert done.returncode != 0
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1  # one message
    assert str(tmp_path / "absent.keras") in done.stderr
    assert f"`{MAKE_ONE}` ({MAKE_ONE_TIME}" in done.stderr and f"`{MAKE_SMOKE}`" in done.stderr


def test_the_command_in_the_message_writes_the_served_model(tmp_path):
    """Both commands parse, and MAKE_ONE's --out holds the model that a results folder without
    a MODEL file serves (the fit also points MODEL at it)."""
    import shlex

    from training import fit

    for command in (MAKE_ONE, MAKE_SMOKE):
        words = shlex.split(command)
        assert words[:3] == ["python", "-m", "training.fit"]
        fit.parse_args(words[3:])
    out = fit.parse_args(shlex.split(MAKE_ONE)[3:]).out
    assert default_model_path(tmp_path) == tmp_path / out.relative_to("results") / "model.keras"


def test_default_model_follows_results_pointer(tmp_path):
    assert default_model_path(tmp_path) == tmp_path / "final/model.keras"
    (tmp_path / "MODEL").write_text("other_study/best/model.keras\n")
    assert default_model_path(tmp_path) == tmp_path / "other_study/best/model.keras"


@pytest.mark.slow
def test_corrupted_model_is_refused(small_model_file, run_module, tmp_path):
    copy = tmp_path / "model.keras"
    data = bytearray(small_model_file.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 16] = bytes(byte ^ 0xFF for byte in data[middle:middle + 16])
    copy.write_bytes(bytes(data))
    copy.with_suffix(".json").write_text(small_model_file.with_suffix(".json").read_text())
    done = run_module("app", "--model", copy, "--port", 0)
    assert done.returncode != 0
    assert f"refusing to serve {copy}" in done.stderr and "sha256" in done.stderr


def test_gunicorn_with_two_workers_serves_the_views_zoo_tta_names(small_model_file, small_segmenter,
                                                                  serve):
    from zoo.predict import Segmenter

    url = serve([sys.executable, "-m", "gunicorn", "-w", "2", "-b", "127.0.0.1:{port}",
                 "--timeout", "120", "app.wsgi:app"], ZOO_MODEL=str(small_model_file), ZOO_TTA="flips")
    image = rgb(37, 61, seed=9)
    flipped = Segmenter(small_segmenter.model, tta="flips").predict(image)
    assert (flipped != small_segmenter.predict(image)).any()  # else the override would go unseen
    for _ in range(2):  # whichever worker answers
        np.testing.assert_array_equal(prediction_of(post_json(url, {"image": image})), flipped)
    serving = requests.get(f"{url}/model", timeout=10).json()["serving"]
    assert serving["tta"] == "flips" and serving["tta_of_model"] == "none"


def test_tta_override_replaces_the_models_views_and_says_so(small_model_file, small_segmenter):
    from app.model import ModelUnavailable, load_segmenter, override_tta
    from zoo.predict import Segmenter

    image = rgb(64, 96, seed=4)  # (load_for_serving would also freeze this worker's heap)
    served = override_tta(load_segmenter(small_model_file, "keras"), "dihedral")
    assert served.tta == "dihedral" and served.metadata["serving"]["tta_of_model"] == "none"
    np.testing.assert_array_equal(served.predict(image),
                                  Segmenter(small_segmenter.model, tta="dihedral").predict(image))
    kept = override_tta(load_segmenter(small_model_file, "keras"), "model")
    assert kept.tta == "none" and "tta_of_model" not in kept.metadata["serving"]
    choices = "model, none, rot180, transpose, flips, dihedral"
    with pytest.raises(ModelUnavailable, match=f"tta must be one of {choices}"):
        override_tta(kept, "rot90")
    from app.model import load_for_serving

    with pytest.raises(ModelUnavailable, match="tta must be"):  # said before looking for the model
        load_for_serving(small_model_file.parent / "no_such.keras", "keras", "rot90")


# -- fuzz: no body, however odd, makes a 500 ----------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers(-300, 300) | st.integers()
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=4))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=24)
pixels = st.integers(-2, 258) | st.sampled_from([0, 255, 1.5, 3.0, True, None, "7"])


@st.composite
def image_like(draw):
    """Rectangular nested lists of 1 to 4 levels, mostly valid-looking pixels."""
    shape = draw(st.lists(st.integers(0, 5), min_size=1, max_size=4))
    values = draw(st.lists(pixels, min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
    nested = np.array(values, dtype=object).reshape(shape).tolist()
    return nested


bodies = st.one_of(
    st.binary(max_size=40),
    json_values.map(lambda value: json.dumps(value).encode()),
    json_values.map(lambda value: json.dumps({"image": value}).encode()),
    image_like().map(lambda value: json.dumps({"image": value}).encode()),
)


# database=None: no .hypothesis/ folder in the repository.
@settings(max_examples=100, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies)
def test_fuzzed_bodies_never_cause_a_500(client, body):
    answer = client.post("/inference", data=body, content_type="application/json")
    assert answer.status_code < 500, answer.json
    if answer.status_code >= 400:
        assert answer.json["error"]
    else:
        assert set(np.unique(answer.json["prediction"])) <= {0, 1}


@settings(max_examples=40, deadline=None, database=None)
@given(data=st.binary(max_size=200), header=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n",
                                                             b"\xff\xd8\xff\xe0", b"II*\x00",
                                                             b"MM\x00*"]))
def test_fuzzed_uploads_never_cause_a_500(client, data, header):
    answer = client.post("/inference", data={"file": (io.BytesIO(header + data), "f.png")},
                         content_type="multipart/form-data")
    assert answer.status_code < 500, answer.json


# -- python -m app.predict -------------------------------------------------------------------------

@pytest.mark.slow
def test_predict_cli_writes_lon_lat_geojson_and_the_mask(small_model_file, small_segmenter,
                                                         run_module, tmp_path):
    image = blobby(128, 160, seed=28)
    (tmp_path / "scene.tif").write_bytes(geotiff_bytes(image))
    out, mask_path = tmp_path / "footprints.geojson", tmp_path / "mask.png"
    done = run_module("app.predict", tmp_path / "scene.tif", "--out", out, "--mask", mask_path,
                      "--model", small_model_file, timeout=300)
    assert done.returncode == 0, done.stderr
    collection = json.loads(out.read_text())
    expected = direct_collection(small_segmenter, image, HALF_METRE, UTM_37S)
    assert collection["features"] == orjson.loads(orjson.dumps(expected["features"]))
    assert collection["georeferenced"] and collection["image"]["file"] == "scene.tif"
    assert f"{collection['count']} buildings, {collection['total_area_m2']:.1f} m²" in done.stdout
    np.testing.assert_array_equal(np.asarray(Image.open(mask_path)),
                                  small_segmenter.predict(image) * 255)


@pytest.mark.slow
def test_predict_cli_on_a_png_says_pixels_applies_its_views_and_names_a_bad_file(
        small_model_file, small_segmenter, run_module, tmp_path):
    picture = blobby(64, 64, seed=29)
    (tmp_path / "tile.png").write_bytes(encoded(picture))
    done = run_module("app.predict", tmp_path / "tile.png", "--model", small_model_file,
                      "--tta", "dihedral", "--mask", tmp_path / "mask.png", timeout=300)
    assert done.returncode == 0, done.stderr
    collection = json.loads((tmp_path / "tile.geojson").read_text())
    assert collection["crs"] is None and "PNG carries no georeferencing" in collection["why_pixels"]
    # --tta replaces the model's views (none): the mask is the eight views' average, thresholded
    from zoo.predict import Segmenter

    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "mask.png")),
                                  Segmenter(small_segmenter.model, tta="dihedral").predict(picture) * 255)
    (tmp_path / "broken.tif").write_bytes(b"II*\x00 not really")
    done = run_module("app.predict", tmp_path / "broken.tif", "--model", small_model_file)
    assert done.returncode == 1 and "broken.tif' is not a readable" in done.stderr


def test_a_large_tiff_predicted_in_parts_equals_the_whole(tmp_path):
    # A model that looks at each pixel alone predicts the same in parts as whole, so here the
    # parts, their offsets and the joined buildings must give exactly the whole scene's outlines.
    from shapely.geometry import shape

    from app.predict import scene_footprints
    from zoo.polygons import footprints_geojson

    class PerPixel:
        threshold, metadata, model = 0.5, {"name": "per-pixel stub"}, None

        def probabilities(self, image):
            return image[..., 0].astype(np.float32) / 255

    image = blobby(150, 170, seed=30).copy()
    image[..., 0] = np.where(image[..., 0] > 128, 230, 20)  # buildings of every shape
    (tmp_path / "big.tif").write_bytes(geotiff_bytes(image))
    probabilities = PerPixel().probabilities(image)
    mask = (probabilities >= 0.5).astype(np.uint8)
    from affine import Affine

    whole = footprints_geojson(mask, probabilities, Affine(*HALF_METRE), UTM_37S, tolerance=0)
    parts, joined_mask = scene_footprints(PerPixel(), tmp_path / "big.tif", window=64,
                                          tolerance=0, keep_mask=True)
    np.testing.assert_array_equal(joined_mask, mask)
    assert parts["parts"] == {"count": 12, "window": 64, "margin": 4}  # 3 x 4 parts of 56 px
    assert parts["count"] == whole["count"] >= 3 and parts["source_crs"] == UTM_37S
    for joined, alone in zip(parts["features"], whole["features"]):
        a, b = shape(joined["geometry"]), shape(alone["geometry"])
        # In lon/lat a vertex a join adds on a straight edge bends it by ~1e-8 of the area.
        assert a.symmetric_difference(b).area < 1e-6 * b.area
        assert joined["properties"]["mask_pixels"] == alone["properties"]["mask_pixels"]
        assert joined["properties"]["area_m2"] == pytest.approx(alone["properties"]["area_m2"])
        assert joined["properties"]["mean_probability"] == pytest.approx(
            alone["properties"]["mean_probability"], abs=1e-4)


def test_predict_cli_goes_in_parts_above_the_window(small_model_file, small_segmenter,
                                                    run_module, tmp_path):
    image = blobby(200, 120, seed=31)
    (tmp_path / "scene.tif").write_bytes(geotiff_bytes(image))
    done = run_module("app.predict", tmp_path / "scene.tif", "--window", 128, "--model",
                      small_model_file, "--mask", tmp_path / "mask.png", timeout=300)
    assert done.returncode == 0, done.stderr
    collection = json.loads((tmp_path / "scene.geojson").read_text())
    assert collection["parts"]["count"] == 4 and " in 4 parts " in done.stdout
    assert collection["georeferenced"] and collection["count"] > 0
    # Context differs near the joins, so the mask may differ there, but barely.
    whole = small_segmenter.predict(image)
    assert (np.asarray(Image.open(tmp_path / "mask.png")) > 0).mean() == pytest.approx(
        whole.mean(), abs=0.02)
