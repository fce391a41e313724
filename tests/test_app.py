"""The served contract, end to end: a real `python -m app` (and gunicorn) on a small model.

Answers are compared with `Segmenter.predict` run in this process on the same file, so a
passing test means the HTTP layer changes nothing about the masks.
"""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import numpy as np
import orjson
import pytest
import requests
from PIL import Image

from app import create_app

REPO = Path(__file__).resolve().parent.parent


def rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def post_json(url: str, payload, session=None, **kwargs) -> requests.Response:
    if not isinstance(payload, bytes):
        payload = orjson.dumps(
            {
                key: np.ascontiguousarray(value) if isinstance(value, np.ndarray) else value
                for key, value in payload.items()
            },
            option=orjson.OPT_SERIALIZE_NUMPY,
        )
    return (session or requests).post(
        f"{url}/inference", data=payload, timeout=120, headers={"Content-Type": "application/json"}, **kwargs
    )


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
        np.testing.assert_array_equal(prediction_of(post_json(app_server, {"image": shaped})), expected_gray)


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
    answer = requests.post(
        f"{app_server}/inference", timeout=60, files={"file": ("tile.jpg", data, "image/jpeg")}
    )
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


@pytest.mark.parametrize("body, status, named", BAD_JSON, ids=[body.decode()[:30] for body, _, _ in BAD_JSON])
def test_bad_json_is_refused_with_its_reason(app_server, body, status, named):
    answer = post_json(app_server, body)
    assert answer.status_code == status
    assert named in error_of(answer)


def test_image_over_the_side_limit_is_413(app_server):
    tall = np.zeros((4097, 1, 3), np.uint8)
    for answer in (
        post_json(app_server, {"image": tall}),
        requests.post(f"{app_server}/inference", timeout=60, files={"file": ("tall.png", encoded(tall))}),
    ):
        assert answer.status_code == 413
        assert "4097 x 1" in error_of(answer) and "4096" in error_of(answer)
        assert "python -m app.predict IMAGE --window 4096" in error_of(answer)


def test_body_over_the_limit_is_413(app_server):
    body = b'{"image": [' + b"0," * (33 * 2**20) + b"0]}"  # 66 MB > 64 MB
    answer = post_json(app_server, body)
    assert answer.status_code == 413
    assert "64 MB" in error_of(answer) and "PNG upload" in error_of(answer)
    assert "python -m app.predict IMAGE --window 4096" in error_of(answer)  # a scene too large for that


def chunks(body: bytes, size: int = 2**20):
    """`body` as a generator, which requests sends chunked: with no Content-Length."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


def multipart(name: str, filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = "zoo-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def test_chunked_body_over_the_limit_is_413_json_or_multipart(app_server):
    # Werkzeug cuts a chunked body at the limit without a word: this was 400 "not valid JSON
    # ... char 67108864" for JSON.
    over = 64 * 2**20 + 2**20
    json_body = b'{"image": [' + b"0," * (over // 2) + b"0]}"
    upload, content_type = multipart("file", "big.png", b"\x00" * over)
    for body, kind in ((json_body, "application/json"), (upload, content_type)):
        answer = requests.post(
            f"{app_server}/inference", data=chunks(body), timeout=120, headers={"Content-Type": kind}
        )
        assert answer.status_code == 413, (kind, answer.text[:200])
        assert "64 MB" in error_of(answer)
    assert requests.get(f"{app_server}/health", timeout=10).ok  # and the server goes on


def test_chunked_body_under_the_limit_is_served_whole(app_server, small_segmenter):
    image = rgb(40, 56, seed=11)
    body = orjson.dumps({"image": image}, option=orjson.OPT_SERIALIZE_NUMPY)
    answer = requests.post(
        f"{app_server}/inference",
        data=chunks(body, 4096),
        timeout=120,
        headers={"Content-Type": "application/json"},
    )
    np.testing.assert_array_equal(prediction_of(answer), small_segmenter.predict(image))
    upload, content_type = multipart("file", "small.png", encoded(image))
    answer = requests.post(
        f"{app_server}/inference",
        data=chunks(upload, 4096),
        timeout=120,
        headers={"Content-Type": content_type},
    )
    np.testing.assert_array_equal(prediction_of(answer), small_segmenter.predict(image))


@pytest.mark.parametrize(
    "files, named",
    [
        ({"upload": ("a.png", b"x")}, "missing multipart field 'file'"),
        ({"file": ("a.png", b"not an image")}, "file 'a.png' is not a readable PNG, JPEG or TIFF"),
        ({"file": ("a.gif", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;")}, "not a readable PNG, JPEG or TIFF"),
        ({"file": ("a.tif", b"II*\x00broken")}, "file 'a.tif' is not a readable PNG, JPEG or TIFF"),
    ],
)
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

    answer = create_app(segmenter=Broken()).test_client().post("/inference", json={"image": [[[1, 2, 3]]]})
    assert answer.status_code == 500
    assert "internal error" in answer.json["error"] and "secret" not in answer.json["error"]


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
    for element in (
        'id="file"',
        'id="image"',
        'id="mask"',
        'id="overlay"',
        'id="status"',
        'id="model-name"',
        'id="download-geojson"',
        'id="download-mask"',
    ):
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
