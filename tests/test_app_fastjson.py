"""The fast JSON path of /inference against the careful one (fuzzing of headers and multipart
bodies: test_app_fuzz.py).

`app.inputs.fast_image_from_json` is only an optimisation: for any body it either declines
(None) or returns exactly the array `careful_image_from_json` returns, so every refusal, and
every error message, still comes from the careful path. These tests hold it to that with
random valid images in random JSON layouts and with random corruptions of them.
"""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from app import create_app
from app.inputs import InputError, careful_image_from_json, fast_image_from_json, image_from_json

MAX_SIDE = 4096
# database=None: no .hypothesis/ folder in the repository.
FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@pytest.fixture(scope="module")
def client(small_segmenter):
    return create_app(segmenter=small_segmenter).test_client()


def outcome(body: bytes, max_side: int = MAX_SIDE):
    """The careful path's answer: ("ok", array) or ("error", status, message)."""
    try:
        return "ok", careful_image_from_json(body, max_side)
    except InputError as error:
        return "error", error.status, str(error)


def expected_rgb(array: np.ndarray) -> np.ndarray:
    array = array.astype(np.uint8)
    if array.ndim == 2:
        array = array[..., None]
    return np.ascontiguousarray(np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array[..., :3])


# -- valid images in any JSON layout --------------------------------------------------------------

pixel_values = st.integers(0, 255) | st.sampled_from([0, 9, 10, 99, 100, 199, 255])


@st.composite
def images(draw, max_side: int = 6):
    height, width = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    shape = draw(
        st.sampled_from([(height, width), (height, width, 1), (height, width, 3), (height, width, 4)])
    )
    values = draw(st.lists(pixel_values, min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
    return np.array(values, dtype=np.int64).reshape(shape)


json_space = st.text(alphabet=" \t\n\r", max_size=3).map(str.encode)


def spaced_json(value, space) -> bytes:
    """JSON of nested lists of ints with `space()` (JSON whitespace) between every token."""
    if isinstance(value, list):
        inner = b",".join(space() + spaced_json(item, space) + space() for item in value)
        return b"[" + (inner or space()) + b"]"
    return str(value).encode()


@st.composite
def layouts(draw, image: np.ndarray) -> bytes:
    style = draw(st.sampled_from(["orjson", "json", "indent", "random", "decimals"]))
    if style == "orjson":
        return orjson.dumps({"image": image}, option=orjson.OPT_SERIALIZE_NUMPY)
    if style == "decimals":  # what float_array.tolist() gives: 12.0
        return json.dumps({"image": image.astype(float).tolist()}).encode()
    if style == "json":
        return json.dumps({"image": image.tolist()}).encode()
    if style == "indent":
        return json.dumps({"image": image.tolist()}, indent=draw(st.integers(0, 3))).encode()
    space = lambda: draw(json_space)  # noqa: E731
    return (
        space()
        + b"{"
        + space()
        + b'"image"'
        + space()
        + b":"
        + space()
        + spaced_json(image.tolist(), space)
        + space()
        + b"}"
        + space()
    )


@FUZZ
@given(data=st.data())
def test_fast_path_takes_every_valid_image_and_matches_the_careful_path(data):
    image = data.draw(images())
    body = data.draw(layouts(image))
    fast = fast_image_from_json(body, MAX_SIDE)
    assert fast is not None, body  # no valid image of these shapes falls back
    kind, careful = outcome(body)
    assert kind == "ok"
    np.testing.assert_array_equal(fast, careful)
    np.testing.assert_array_equal(fast, expected_rgb(image))
    assert fast.dtype == np.uint8 and fast.flags.c_contiguous and fast.shape[2] == 3


@pytest.mark.parametrize("size", [256, 1024])
def test_fast_path_on_full_size_images(size):
    image = np.random.default_rng(size).integers(0, 256, (size, size, 3), dtype=np.uint8)
    for body in (
        orjson.dumps({"image": image}, option=orjson.OPT_SERIALIZE_NUMPY),
        json.dumps({"image": image.tolist()}).encode(),
    ):
        np.testing.assert_array_equal(fast_image_from_json(body, MAX_SIDE), image)


def test_threads_reading_at_once_each_get_their_own_image():
    # A simdjson parser serves one thread at a time (a shared one would hand one thread's
    # numbers, or an error, to another): the server's threads read bodies concurrently.
    import sys
    from concurrent.futures import ThreadPoolExecutor

    images = [np.random.default_rng(n).integers(0, 256, (96, 64 + n, 3), dtype=np.uint8) for n in range(6)]
    bodies = [orjson.dumps({"image": image}, option=orjson.OPT_SERIALIZE_NUMPY) for image in images]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads between almost any two steps
    try:
        with ThreadPoolExecutor(6) as pool:
            read = list(
                pool.map(lambda n: [fast_image_from_json(bodies[n], MAX_SIDE) for _ in range(30)], range(6))
            )
    finally:
        sys.setswitchinterval(interval)
    for image, copies in zip(images, read):
        assert all(copy is not None and np.array_equal(copy, image) for copy in copies)


def test_image_from_json_goes_the_fast_way(monkeypatch):
    import app.inputs

    def refuse(*_):
        raise AssertionError("the careful path ran for a well-formed body")

    monkeypatch.setattr(app.inputs, "careful_image_from_json", refuse)
    image = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    body = orjson.dumps({"image": image}, option=orjson.OPT_SERIALIZE_NUMPY)
    np.testing.assert_array_equal(image_from_json(body, MAX_SIDE), image)


# -- anything else falls back, so the careful path answers -------------------------------------

DECLINED = [
    b'{"image": [[01, 2, 3]]}',  # leading zero: not JSON
    b'{"image": [[[00, 2, 3]]]}',
    b'{"image": [[256]]}',
    b'{"image": [[1000]]}',
    b'{"image": [[99999999999999999999999]]}',
    b'{"image": [[-0]]}',
    b'{"image": [[-1]]}',
    b'{"image": [[1e2]]}',
    b'{"image": [[1.5]]}',
    b'{"image": [[1.]]}',
    b'{"image": [[.5]]}',
    b'{"image": [[1.2.3]]}',
    b'{"image": [[255.5]]}',
    b'{"image": [[256.0]]}',
    b'{"image": [[1.0e0]]}',
    b'{"image": [[255.99999999999999999]]}',  # 256.0 as a double, for simdjson and orjson
    b'{"image": [[1 2]]}',
    b'{"image": [[1\n2]]}',  # whitespace inside a number
    b'{"image": []}',
    b'{"image": [[]]}',
    b'{"image": [[[]]]}',
    b'{"image": [[], []]}',
    b'{"image": [[1, ]]}',
    b'{"image": [[, 1]]}',
    b'{"image": [[1,,2]]}',
    b'{"image": [[1] [2]]}',
    b'{"image": [[1], [2, 3]]}',
    b'{"image": [[1, 2], 3]}',
    b'{"image": [[1, [2]]]}',
    b'{"image": [1, 2, 3]}',
    b'{"image": [[[[1, 2, 3]]]]}',
    b'{"image": [[[1, 2]]]}',
    b'{"image": [[[1, 2, 3, 4, 5]]]}',
    b'{"image": [[[1, 2, 3]], [[1, 2]]]}',
    b'{"image": [[1]]]}',
    b'{"image": [[1]]',
    b'{"image": [[1]]}}',
    b'{"image": [[1]], }',
    b'{"image": [[1]], "x": 1}',
    b'{"x": 1, "image": [[1]]}',
    b'{"image": [[1]], "image": [[2]]}',
    b'{"\\u0069mage": [[1]]}',
    b'{"image" [[1]]}',
    b'{"Image": [[1]]}',
    b'\xef\xbb\xbf{"image": [[1]]}',
    b'{"image": [[1]]}\x00',
    b'{"image":\x0c[[1]]}',
    b'{"image": [[1]]} x',
    b'[{"image": [[1]]}]',
    b'{"image": [[true]]}',
    b'{"image": [[null]]}',
    b'{"image": [["1"]]}',
]


@pytest.mark.parametrize("body", DECLINED, ids=[body.decode("latin-1")[:40] for body in DECLINED])
def test_fast_path_declines_and_the_careful_path_answers(body):
    assert fast_image_from_json(body, MAX_SIDE) is None
    expected = outcome(body)
    try:
        got = "ok", image_from_json(body, MAX_SIDE)
    except InputError as error:
        got = "error", error.status, str(error)
    assert got[0] == expected[0]
    if got[0] == "ok":
        np.testing.assert_array_equal(got[1], expected[1])
    else:
        assert got == expected


def test_over_the_side_limit_is_left_to_the_careful_path():
    body = orjson.dumps({"image": np.zeros((5, 2, 3), np.uint8)}, option=orjson.OPT_SERIALIZE_NUMPY)
    assert fast_image_from_json(body, 4) is None
    with pytest.raises(InputError, match="5 x 2 pixels") as refused:
        image_from_json(body, 4)
    assert refused.value.status == 413


# -- random corruptions of valid bodies ------------------------------------------------------------

edit_bytes = st.sampled_from(list(b'0123456789[],.-e "\t\n\r\x0ctfnul{}:\x00\xff'))


@st.composite
def corrupted(draw) -> bytes:
    image = draw(images(max_side=4))
    body = bytearray(draw(layouts(image)))
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.integers(0, len(body)))
        how = draw(st.sampled_from(["insert", "delete", "replace"]))
        if how == "insert" or where == len(body):
            body[where:where] = bytes([draw(edit_bytes)])
        elif how == "delete":
            del body[where]
        else:
            body[where] = draw(edit_bytes)
    return bytes(body)


SENTINEL = 987654321
leaf_tokens = st.sampled_from(
    [
        b"256",
        b"-1",
        b"1.0",
        b"255.0",
        b"1.5",
        b"true",
        b"false",
        b"null",
        b'"7"',
        b"01",
        b"00",
        b"1e2",
        b"-0",
        b"0",
        b"[]",
        b"[1]",
        b"{}",
        b"1000",
        b"99999999999999999999999",
    ]
)


@st.composite
def mutated(draw) -> bytes:
    """Valid JSON, mostly, with one leaf replaced or one list made ragged or deeper."""
    image = draw(images(max_side=4))
    nested = image.tolist()
    path = [draw(st.integers(0, size - 1)) for size in image.shape]
    depth = draw(st.integers(1, len(path)))
    parent = nested
    for index in path[: depth - 1]:
        parent = parent[index]
    how = draw(st.sampled_from(["leaf", "drop", "extra", "wrap"]))
    if how == "leaf":
        for index in path[depth - 1 : -1]:
            parent = parent[index]
        parent[path[-1]] = SENTINEL
    elif how == "drop":
        del parent[path[depth - 1]]
    elif how == "extra":
        parent.append(SENTINEL)
    else:
        parent[path[depth - 1]] = [parent[path[depth - 1]]]
    separators = draw(st.sampled_from([(",", ":"), (", ", ": ")]))
    body = json.dumps({"image": nested}, separators=separators).encode()
    return body.replace(str(SENTINEL).encode(), draw(leaf_tokens))


@FUZZ
@given(body=corrupted() | mutated())
def test_corrupted_bodies_get_the_careful_answer(body):
    fast = fast_image_from_json(body, MAX_SIDE)
    expected = outcome(body)
    if expected[0] == "error":
        assert fast is None, body
    elif fast is not None:
        np.testing.assert_array_equal(fast, expected[1])


@settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(body=corrupted() | mutated())
def test_corrupted_bodies_served_are_4xx_naming_the_careful_reason(client, body):
    expected = outcome(body)
    assume(expected[0] == "error")  # some edits leave a valid image, e.g. a digit for a digit
    answer = client.post("/inference", data=body, content_type="application/json")
    assert answer.status_code == expected[1]
    assert answer.json == {"error": expected[2]}


def test_decimals_take_the_fast_path_without_the_gil_bound_careful_one(monkeypatch):
    # A float image's tolist() writes 12.0: the careful path read it, holding the GIL about
    # 2 s for 64 MiB while orjson built its lists, and the server answered nothing meanwhile.
    import app.inputs

    def refuse(*_):
        raise AssertionError("the careful path ran for a well-formed body")

    monkeypatch.setattr(app.inputs, "_careful", refuse)
    image = np.random.default_rng(7).integers(0, 256, (64, 48, 3), dtype=np.uint8)
    for body in (
        orjson.dumps({"image": image.astype(np.float64)}, option=orjson.OPT_SERIALIZE_NUMPY),
        json.dumps({"image": image.astype(float).tolist()}).encode(),
        json.dumps({"image": [[[*px[:2], float(px[2])] for px in row] for row in image.tolist()]}).encode(),
    ):  # ints and 12.0
        np.testing.assert_array_equal(image_from_json(body, MAX_SIDE), image)
