"""No request, however odd, makes the server answer 500: fuzzed JSON bodies, uploads, headers
and multipart forms, against the app in this process (`app.create_app` on the fixture model).
"""

from __future__ import annotations

import io
import json

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from test_app_fastjson import FUZZ

from app import create_app


@pytest.fixture(scope="module")
def client(small_segmenter):
    return create_app(segmenter=small_segmenter).test_client()


# -- fuzz: no body, however odd, makes a 500 ----------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-300, 300)
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=4)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=24,
)
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
@settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies)
def test_fuzzed_bodies_never_cause_a_500(client, body):
    answer = client.post("/inference", data=body, content_type="application/json")
    assert answer.status_code < 500, answer.json
    if answer.status_code >= 400:
        assert answer.json["error"]
    else:
        assert set(np.unique(answer.json["prediction"])) <= {0, 1}


@settings(max_examples=40, deadline=None, database=None)
@given(
    data=st.binary(max_size=200),
    header=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"II*\x00", b"MM\x00*"]),
)
def test_fuzzed_uploads_never_cause_a_500(client, data, header):
    answer = client.post(
        "/inference", data={"file": (io.BytesIO(header + data), "f.png")}, content_type="multipart/form-data"
    )
    assert answer.status_code < 500, answer.json


# -- fuzzed headers and multipart bodies: never a 5xx ----------------------------------------------


def png_bytes(height: int = 3, width: int = 5) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 120, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


VALID_JSON = orjson.dumps({"image": np.full((3, 5, 3), 120, np.uint8)}, option=orjson.OPT_SERIALIZE_NUMPY)
content_types = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/json; charset=latin-1",
        "text/plain",
        "text/json",
        "application/x-www-form-urlencoded",
        "application/octet-stream",
        "image/png",
        "",
        "*/*",
        "application/",
        "multipart/form-data",
        "multipart/form-data; boundary=",
        "multipart/form-data; boundary=xyz",
        'multipart/form-data; boundary="',
        "multipart/mixed",
        "multipart/",
        "multipart/form-data; boundary=" + "b" * 80,
        "application/json;;;",
    ]
) | st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
accepts = st.sampled_from(
    [
        None,
        "application/json",
        "image/png",
        "*/*",
        "image/*",
        "",
        "text/html",
        "image/png;q=0.1, application/json;q=0.9",
        "q=x;;,",
    ]
)
formats = st.sampled_from([None, "json", "png", "PNG", "", "bmp", "json,png"])
any_bodies = st.sampled_from([VALID_JSON, b"", b"{}", b"not json", png_bytes()]) | st.binary(max_size=64)


def check_answer(answer) -> None:
    assert answer.status_code < 500, answer.get_data()[:300]
    if answer.status_code >= 400:
        assert answer.json["error"]
    elif answer.mimetype == "image/png":
        assert Image.open(io.BytesIO(answer.get_data())).mode == "L"
    else:
        assert set(np.unique(answer.json["prediction"])) <= {0, 1}


@FUZZ
@given(body=any_bodies, content_type=content_types, accept=accepts, fmt=formats)
def test_fuzzed_headers_never_cause_a_500(client, body, content_type, accept, fmt):
    headers = {"Content-Type": content_type}
    if accept is not None:
        headers["Accept"] = accept
    query = {} if fmt is None else {"format": fmt}
    check_answer(client.post("/inference", data=body, headers=headers, query_string=query))


field_names = st.sampled_from(["file", "image", "upload", "", "file[]"]) | st.text(max_size=8)
file_names = st.sampled_from(
    ["tile.png", "a.jpg", "", "../../etc/passwd", "x" * 300, "é.png", 'no"quote.png']
) | st.text(max_size=12)
payloads = st.sampled_from(
    [png_bytes(), png_bytes()[:40], b"", b"\xff\xd8\xff\xe0" + bytes(30), b"\x89PNG\r\n\x1a\n" + bytes(20)]
) | st.binary(max_size=100)


@FUZZ
@given(
    parts=st.lists(st.tuples(field_names, file_names, payloads, st.booleans()), max_size=3),
    texts=st.dictionaries(field_names, st.text(max_size=10), max_size=2),
    fmt=formats,
)
def test_fuzzed_multipart_forms_never_cause_a_500(client, parts, texts, fmt):
    data = dict(texts)
    for name, filename, payload, as_file in parts:
        data[name] = (io.BytesIO(payload), filename) if as_file else payload.decode("latin-1")
    query = {} if fmt is None else {"format": fmt}
    check_answer(client.post("/inference", data=data, content_type="multipart/form-data", query_string=query))


def test_nameless_and_text_parts_are_400_not_500(client):
    # Found by the fuzz above: a part without a usable name is keyed None, and sorting the
    # received names beside a named one raised TypeError (a 500).
    body = (
        b'--xyz\r\nContent-Disposition: form-data; name="\\"\r\n\r\nabc\r\n'
        b'--xyz\r\nContent-Disposition: form-data; name="other"\r\n\r\nabc\r\n--xyz--\r\n'
    )
    answer = client.post(
        "/inference", data=body, headers={"Content-Type": "multipart/form-data; boundary=xyz"}
    )
    assert answer.status_code == 400
    assert answer.json["error"].endswith("fields received: ['(no name)', 'other']")
    answer = client.post("/inference", data={"file": "not a file"}, content_type="multipart/form-data")
    assert answer.status_code == 400 and "'file' came as text" in answer.json["error"]


@st.composite
def raw_multipart(draw) -> tuple[bytes, bytes]:
    """A hand-made multipart body: a boundary, then parts with odd or missing headers."""
    boundary = draw(st.sampled_from([b"xyz", b"--", b"a" * 70, b"b'q"]))
    pieces = []
    for _ in range(draw(st.integers(0, 3))):
        header = draw(
            st.sampled_from(
                [
                    b'Content-Disposition: form-data; name="file"; filename="a.png"',
                    b'Content-Disposition: form-data; name="file"',
                    b'Content-Disposition: form-data; name="file"; filename=""',
                    b"Content-Disposition: form-data",
                    b"Content-Type: image/png",
                    b"",
                    b"Content-Disposition: form-data; name=\"file\"; filename*=UTF-8''%e2%82%ac.png",
                ]
            )
        )
        pieces.append(b"--" + boundary + b"\r\n" + header + b"\r\n\r\n" + draw(payloads) + b"\r\n")
    ending = draw(st.sampled_from([b"--" + boundary + b"--\r\n", b"--" + boundary, b"", b"--"]))
    body = b"".join(pieces) + ending
    if draw(st.booleans()):  # cut anywhere
        body = body[: draw(st.integers(0, len(body)))]
    return boundary, body


@FUZZ
@given(case=raw_multipart(), declared=st.sampled_from(["same", "other", "none"]))
def test_fuzzed_raw_multipart_bodies_never_cause_a_500(client, case, declared):
    boundary, body = case
    content_type = {
        "same": f"multipart/form-data; boundary={boundary.decode()}",
        "other": "multipart/form-data; boundary=other",
        "none": "multipart/form-data",
    }[declared]
    check_answer(client.post("/inference", data=body, headers={"Content-Type": content_type}))
