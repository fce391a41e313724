"""The fast path of a JSON image: a well-formed `{"image": [...]}` body read by simdjson
straight into one buffer, without a Python object a number (`app.inputs` says when it applies).

Also the members a body may add after the image (`, "format": "geojson", "outline": "regular"}`),
split off its tail so that the image before them can still take this path (`split_tail`).
"""

from __future__ import annotations

import queue
import re

import numpy as np
import orjson
import simdjson

# `, "name": value` members closing a body: a known name, and a short string (no quote or
# escape), number or literal, so this cannot match inside a string, and what precedes them
# must still pass the fast path whole. The names are app.inputs.BODY_FIELDS besides "image".
_MEMBER = (
    rb'[ \t\n\r]*,[ \t\n\r]*"(?:format|outline|min_area_m2|min_pixels)"[ \t\n\r]*:[ \t\n\r]*'
    rb'(?:"[A-Za-z0-9_+.-]{0,32}"|-?[0-9][0-9.eE+-]{0,31}|true|false|null)'
)
_TAIL = re.compile(rb"(?:" + _MEMBER + rb")+[ \t\n\r]*\}[ \t\n\r]*\Z")
_TAIL_SEARCHED = 1024  # bytes at the end of a body where its tail may start


def split_tail(body: bytes) -> tuple[bytes, dict]:
    """(The body with its closing members cut off, those members), or (body, {}) when it has
    none that this path reads; the members as JSON reads them (orjson: the last of a repeated
    name wins, as with the whole body)."""
    tail = _TAIL.search(body, max(0, len(body) - _TAIL_SEARCHED))
    if tail is None:
        return body, {}
    try:
        members = orjson.loads(b"{" + body[tail.start() :].lstrip(b" \t\n\r")[1:])
    except orjson.JSONDecodeError:  # e.g. a number like 1e999 or 1.2.3: the careful path names it
        return body, {}
    return body[: tail.start()] + b"}", members


_JSON_SPACE = b" \t\n\r"  # JSON's only whitespace (not Python's \s: no \x0b or \x0c)
_DIGITS = b"0123456789"
_FAST_HEAD = re.compile(rb'[ \t\n\r]*\{[ \t\n\r]*"image"[ \t\n\r]*:[ \t\n\r]*(?=\[)')


def image_array(body: bytes, max_side: int) -> np.ndarray | None:
    """The numbers of a well-formed body's image as a uint8 H x W or H x W x C array (the
    caller makes it RGB), or None to leave it to the careful path.

    Returns an image only for a body that is `{"image": A}` (JSON whitespace anywhere JSON
    allows it), where A is a rectangular H x W or H x W x C (C in 1, 3, 4) list of integers
    0..255 (or integral decimals, `12.0`) without leading zeros and no side over `max_side`:
    bodies that orjson parses and `careful_image_from_json` accepts, and then to the same
    array. None for everything else (other shapes, 1.5, exponents, -0, booleans, other keys,
    escapes, values over 255 ...).

    How: with the digits, points and whitespace deleted, what is left of A must be byte for
    byte the skeleton (brackets and commas) of a rectangular array of the shape read off its
    start (`_skeleton`): so A holds nothing but digits and points there, in that nesting.
    simdjson then parses A as JSON, which places exactly one number between each pair of
    separators (and refuses "1.", ".5" or "1.2.3"), and reads the numbers straight into one
    buffer (`_read_numbers`), without a Python object each."""
    head = _FAST_HEAD.match(body)
    if head is None:
        return None
    end = len(body.rstrip(_JSON_SPACE))
    if body[end - 1 : end] != b"}":
        return None
    text = body[head.end() : end - 1]
    marks = text.translate(None, _DIGITS + _JSON_SPACE + b".")
    shape = _skeleton_shape(marks)
    if (
        shape is None
        or (len(shape) == 3 and shape[2] not in (1, 3, 4))
        or max(shape[0], shape[1]) > max_side
        or marks != _skeleton(shape)
    ):
        return None
    values = _read_numbers(text, int(np.prod(shape)), decimals=b"." in text)
    if values is None:
        return None
    return values.reshape(shape)


def _skeleton_shape(marks: bytes) -> tuple[int, ...] | None:
    """The shape a rectangular array whose skeleton starts like `marks` has, if rank 2 or 3.

    The first innermost list is `[` + (n-1) commas + `]`; the first list one level up ends at
    the first `]]`, and so on. Only a candidate: the caller compares the whole skeleton."""
    rank = len(marks) - len(marks.lstrip(b"["))
    if rank not in (2, 3):
        return None
    length = marks.find(b"]") - rank + 2  # of the first innermost list, brackets included
    shape = [length - 1]
    for level in range(rank - 1, 0, -1):  # 1-based; list `level` starts at index level - 1
        close = marks.find(b"]" * (rank - level + 1))
        outer = close + (rank - level) - (level - 1) + 1
        count, rest = divmod(outer - 1, length + 1)  # outer = count * (length + 1) + 1
        if close < 0 or rest or count < 1:
            return None
        shape.insert(0, count)
        length = outer
    if shape[-1] < 1 or length != len(marks):
        return None
    return tuple(shape)


def _skeleton(shape: tuple[int, ...]) -> bytes:
    """`[[,,],[,,]]` for shape (2, 3): the JSON of an array of that shape without its digits."""
    text = b"[" + b"," * (shape[-1] - 1) + b"]"
    for count in reversed(shape[:-1]):
        text = b"[" + b",".join([text] * count) + b"]"
    return text


_PARSERS: queue.SimpleQueue = queue.SimpleQueue()  # idle simdjson parsers, shared by all threads
_REUSED_UP_TO = 4 * 2**20  # bytes of JSON: a 512 x 512 image is about 3 MiB


def _parser_for() -> simdjson.Parser:
    """An idle parser from the shared pool, or a new one. A reused parser keeps its buffers
    warm (a new one each call made reading 256 x 256 twice as slow: 12 ms against 6.5 ms),
    which a thread-local one would lose with every thread the server starts per connection.
    A parser also keeps them as large as the largest body it read (about 8.5x the body), so
    only parsers that read at most _REUSED_UP_TO go back (`_done_with`)."""
    try:
        return _PARSERS.get_nowait()
    except queue.Empty:
        return simdjson.Parser()


def _done_with(parser: simdjson.Parser, size: int) -> None:
    if size <= _REUSED_UP_TO:
        _PARSERS.put(parser)


def _read_numbers(array_json: bytes, count: int, decimals: bool = False) -> np.ndarray | None:
    """The `count` numbers of a JSON array of arrays of unsigned integers (or, with
    `decimals`, of numbers), in order, as uint8; None unless it is valid JSON (so "01", "1 2"
    or "[1,,2]" are refused) holding exactly `count` numbers, each an integer 0..255."""
    parser = _parser_for()  # taken out of the pool: no other thread uses it until it is back
    kind, dtype = ("d", np.float64) if decimals else ("u", np.uint64)
    try:
        flat = np.frombuffer(parser.parse(array_json).as_buffer(of_type=kind), dtype)
    except (ValueError, TypeError, RuntimeError):  # bad JSON, a float, a negative, a big integer
        return None
    finally:
        _done_with(parser, len(array_json))  # no parsed element outlives this call
    if len(flat) != count or flat.max() > 255 or (decimals and np.any(flat != np.floor(flat))):
        return None  # the careful path names the range or the fraction in its refusal
    return flat.astype(np.uint8)
