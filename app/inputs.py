"""Request bodies to H x W x 3 uint8 RGB arrays, or an `InputError` that names the problem.

JSON body `{"image": [...]}`, a nested list of integers 0..255 in one of these shapes:

- H x W x 3: RGB, the contract.
- H x W x 4: RGBA; the alpha channel is dropped, not composited, because a canvas or PNG
  export often carries an all-opaque alpha the client never meant as data.
- H x W or H x W x 1: grayscale, replicated to the three RGB channels.

Anything else is refused (2 or 5+ channels, rank 1 or 4+). Values must be integers 0..255;
integral floats such as `12.0` pass because that is what `float_array.tolist()` emits, but
`1.5`, booleans, strings and null are refused. Neither side may exceed `max_side`
(4096 by default): that is about 1.6 GB of floats through the model's first layers.

Well-formed JSON images take a fast path (`fast_image_from_json`): a body that is exactly
`{"image": [...]}` holding a rectangular list of plain integers or integral decimals such as
`12.0` (digits, points, commas, brackets and JSON whitespace only) is checked with two passes
over its bytes and read by simdjson straight into one buffer, instead of building ~H*W*3
Python objects. Anything else, every mistake included, goes through the careful path, so
error messages do not depend on the fast path. Besides its cost, the careful path holds the
GIL while orjson parses: 2 s for 64 MiB, during which the server answers nothing, /health
included; decimals used to take it.

A JSON body may also name the answer's format: `{"image": [...], "format": "geojson"}`.
The fast path takes a body whose last member is `"format"` too (`json_request`).

Multipart body: field `file`, a PNG, JPEG or TIFF. A PNG or JPEG has its EXIF orientation
applied (a browser shows it that way, so the mask lines up with what the user sees). A TIFF
is read with rasterio, which keeps a GeoTIFF's transform and CRS for georeferenced outlines;
it must hold pixels in 1, 3 or 4 bands (R, G, B picked by their colour interpretation
when the file names them, else the first three). Either is then converted to RGB the same way
(alpha dropped, gray replicated).

Pixels must be 8-bit, in a PNG as in a TIFF: a 16-bit (or deeper) upload is refused with a
400 naming its bit depth, as the training reader refuses one (`data.folders`). Reading it
anyway would clip or truncate it silently (PIL clips 16-bit gray at 255 and keeps the high
byte of 16-bit RGB), and the model never saw such values scaled either way.
"""
from __future__ import annotations

import queue
import re
import warnings
from dataclasses import dataclass

import numpy as np
import orjson
import simdjson
from PIL import Image, ImageOps, UnidentifiedImageError

FIELD = "image"
UPLOAD_FIELD = "file"
FORMAT_FIELD = "format"
UPLOAD_FORMATS = ("PNG", "JPEG")
UPLOAD_KINDS = "PNG, JPEG or TIFF"
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CONVERT_TO_8_BIT = "scale it to 8-bit RGB first (e.g. gdal_translate -ot Byte -scale IN OUT)"
SHAPES = "H x W x 3 RGB (or H x W x 4 RGBA, or H x W grayscale)"


class InputError(ValueError):
    """A client mistake: `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Upload:
    """An RGB image and, for a GeoTIFF, where it lies: `transform` (affine.Affine, pixel
    corner to CRS) and `crs` (rasterio CRS). `why_pixels` says why outlines of an image without
    them can only be in pixels. `format` is a format named in a JSON body."""
    image: np.ndarray
    transform: object = None
    crs: object = None
    why_pixels: str | None = None
    format: str | None = None


def image_from_json(body: bytes, max_side: int) -> np.ndarray:
    return json_request(body, max_side).image


# `, "format": "name"}` closing a body; a name has no quote or escape, so this cannot match
# inside a string, and what precedes it must still pass the fast path whole.
_FORMAT_TAIL = re.compile(rb',[ \t\n\r]*"format"[ \t\n\r]*:[ \t\n\r]*"([A-Za-z0-9_+-]{0,32})"'
                          rb'[ \t\n\r]*\}[ \t\n\r]*\Z')


def json_request(body: bytes, max_side: int) -> Upload:
    """The image of a JSON body and the format it names, if any."""
    why = "the image came as a JSON array, which carries no georeferencing"
    tail = _FORMAT_TAIL.search(body, max(0, len(body) - 128))
    head = body[:tail.start()] + b"}" if tail else body
    fast = fast_image_from_json(head, max_side)
    if fast is not None:
        return Upload(fast, why_pixels=why, format=tail.group(1).decode() if tail else None)
    image, payload = _careful(body, max_side)
    chosen = payload.get(FORMAT_FIELD)
    if chosen is not None and not isinstance(chosen, str):
        raise InputError(f"field '{FORMAT_FIELD}' must be a string, got a JSON "
                         f"{_json_type(chosen)}")
    return Upload(image, why_pixels=why, format=chosen)


def careful_image_from_json(body: bytes, max_side: int) -> np.ndarray:
    """The reference path: orjson to Python lists, then numpy; every refusal is made here."""
    return _careful(body, max_side)[0]


def _careful(body: bytes, max_side: int) -> tuple[np.ndarray, dict]:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise InputError(f"body is not valid JSON ({error}); send {{\"{FIELD}\": [...]}} "
                         f"or a multipart upload in field '{UPLOAD_FIELD}'") from None
    if not isinstance(payload, dict):
        raise InputError(f"body must be a JSON object with field '{FIELD}', "
                         f"got a JSON {_json_type(payload)}")
    if FIELD not in payload:
        raise InputError(f"missing field '{FIELD}': send an {SHAPES} nested list of 0..255")
    nested = payload[FIELD]
    if not isinstance(nested, list):
        raise InputError(f"field '{FIELD}' must be a nested list, {SHAPES}; "
                         f"got a JSON {_json_type(nested)}")
    _check_outer_size(nested, max_side)
    # The bool walk is slow, so run it only when the body could hold a JSON boolean at all.
    may_hold_bools = b"true" in body or b"false" in body
    return to_rgb(_as_array(nested, may_hold_bools), max_side), payload


# -- the fast path -------------------------------------------------------------------------------

_JSON_SPACE = b" \t\n\r"  # JSON's only whitespace (not Python's \s: no \x0b or \x0c)
_DIGITS = b"0123456789"
_FAST_HEAD = re.compile(rb'[ \t\n\r]*\{[ \t\n\r]*"image"[ \t\n\r]*:[ \t\n\r]*(?=\[)')


def fast_image_from_json(body: bytes, max_side: int) -> np.ndarray | None:
    """The H x W x 3 uint8 image of a well-formed body, or None to leave it to the careful path.

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
    if body[end - 1:end] != b"}":
        return None
    text = body[head.end():end - 1]
    marks = text.translate(None, _DIGITS + _JSON_SPACE + b".")
    shape = _skeleton_shape(marks)
    if (shape is None or (len(shape) == 3 and shape[2] not in (1, 3, 4))
            or max(shape[0], shape[1]) > max_side or marks != _skeleton(shape)):
        return None
    values = _read_numbers(text, int(np.prod(shape)), decimals=b"." in text)
    if values is None:
        return None
    return to_rgb(values.reshape(shape), max_side)


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


def image_from_upload(storage, max_side: int) -> np.ndarray:
    return read_upload(storage, max_side).image


def read_upload(storage, max_side: int) -> Upload:
    """A multipart file as an `Upload`: a TIFF through rasterio, a PNG or JPEG through PIL."""
    name = storage.filename or UPLOAD_FIELD
    start = storage.stream.read(4)
    storage.stream.seek(0)
    if start in TIFF_MAGIC:
        return _tiff_upload(storage.stream.read(), name, max_side)
    return _picture(storage.stream, name, max_side)


def read_image_file(path, max_side: int | None = None) -> Upload:
    """A PNG, JPEG or (Geo)TIFF file on disk as an `Upload`; a TIFF is read in place."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with open(path, "rb") as handle:
        if handle.read(4) not in TIFF_MAGIC:
            handle.seek(0)
            return _picture(handle, str(path), max_side)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)  # reported in why_pixels
            with rasterio.open(path) as dataset:
                return read_tiff(dataset, str(path), max_side)
    except InputError:
        raise
    except Exception as error:  # noqa: BLE001 - GDAL raises RasterioIOError, CPLE_* ...
        raise InputError(f"file '{path}' is not a readable {UPLOAD_KINDS} image "
                         f"({_short_reason(error)})") from None


def _picture(stream, name: str, max_side: int | None) -> Upload:
    head = stream.read(26)
    stream.seek(0)
    _refuse_deep_png(head, name)
    try:
        with Image.open(stream, formats=UPLOAD_FORMATS) as image:
            # The header is read, the pixels not yet: refuse a huge image before decoding it.
            if max_side is not None:
                _check_side(image.height, image.width, max_side)
            kind = image.format
            image = ImageOps.exif_transpose(image).convert("RGB")
            return Upload(np.asarray(image, dtype=np.uint8),
                          why_pixels=f"a {kind} carries no georeferencing; upload a GeoTIFF "
                                     "for longitude/latitude and m²")
    except InputError:
        raise
    except Image.DecompressionBombError as error:
        raise InputError(f"file '{name}' is too large to decode: {error}", 413) from None
    except Exception as error:  # noqa: BLE001 - a malformed file can fail in many ways, all
        # of them the client's: PIL raises OSError, SyntaxError, struct.error, EOFError ...
        raise InputError(f"file '{name}' is not a readable {UPLOAD_KINDS} image "
                         f"({_short_reason(error)})") from None


def _refuse_deep_png(head: bytes, name: str) -> None:
    """InputError for a PNG of more than 8 bits a sample, read off its IHDR chunk (the first,
    by the PNG standard): bytes 16-23 are width and height, byte 24 the bit depth."""
    if head[:8] == PNG_MAGIC and head[12:16] == b"IHDR" and len(head) > 24 and head[24] > 8:
        raise InputError(f"file '{name}' is a {head[24]}-bit PNG; the model reads 8-bit RGB "
                         f"(0..255) and deeper values would be clipped: {CONVERT_TO_8_BIT}")


def read_tiff(dataset, name: str, max_side: int | None = None, window=None) -> Upload:
    """An open rasterio dataset (or its `window`, a rasterio Window) as an `Upload`: RGB bands,
    transform and CRS of the whole dataset; or InputError."""
    if max_side is not None:
        _check_side(dataset.height, dataset.width, max_side)
    pixels = dataset.read(tiff_bands(dataset, name), window=window)
    image = to_rgb(np.moveaxis(pixels, 0, -1), max(pixels.shape[1:]))
    transform, crs, why_pixels = tiff_georeference(dataset, name)
    return Upload(image, transform, crs, why_pixels)


def tiff_bands(dataset, name: str) -> list[int]:
    """The 1-based bands to read as R, G, B (or the one gray band), or InputError."""
    from rasterio.enums import ColorInterp

    if dataset.dtypes[0] != "uint8":
        bits = np.dtype(dataset.dtypes[0]).itemsize * 8
        raise InputError(f"file '{name}' has {bits}-bit pixels ({dataset.dtypes[0]}); the model "
                         f"reads 8-bit RGB (uint8 0..255): {CONVERT_TO_8_BIT}")
    interp = list(dataset.colorinterp)
    if ColorInterp.palette in interp:
        raise InputError(f"file '{name}' is a palette image; convert it to RGB first")
    rgb = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
    if all(colour in interp for colour in rgb):
        return [interp.index(colour) + 1 for colour in rgb]
    if dataset.count in (1, 3, 4):
        return list(range(1, min(dataset.count, 3) + 1))
    raise InputError(f"file '{name}' has {dataset.count} bands; send 1 (gray), 3 (RGB) "
                     "or 4 (RGBA)")


def tiff_georeference(dataset, name: str) -> tuple:
    """(transform, crs, None) of a georeferenced dataset, else (None, None, why not)."""
    from zoo.polygons import is_georeferenced

    if is_georeferenced(dataset.transform, dataset.crs):
        return dataset.transform, dataset.crs, None
    missing = "no CRS" if dataset.crs is None else "no geotransform"
    return None, None, f"the TIFF '{name}' has {missing}, so it is not georeferenced"


def _tiff_upload(data: bytes, name: str, max_side: int) -> Upload:
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.io import MemoryFile

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)  # reported in the answer
            with MemoryFile(data) as memory, memory.open() as dataset:
                return read_tiff(dataset, name, max_side)
    except InputError:
        raise
    except Exception as error:  # noqa: BLE001 - GDAL raises RasterioIOError, CPLE_* ...
        raise InputError(f"file '{name}' is not a readable {UPLOAD_KINDS} image "
                         f"({_short_reason(error)})") from None


def to_rgb(array: np.ndarray, max_side: int) -> np.ndarray:
    """Check a numeric array and return it as contiguous H x W x 3 uint8."""
    if array.size == 0:
        raise InputError(f"field '{FIELD}' is empty (shape {list(array.shape)})")
    channels = array.shape[2] if array.ndim == 3 else None
    if array.ndim not in (2, 3) or channels not in (None, 1, 3, 4):
        raise InputError(f"field '{FIELD}' has shape {list(array.shape)}; it must be "
                         f"{SHAPES}")
    _check_side(array.shape[0], array.shape[1], max_side)
    _check_values(array)
    array = array.astype(np.uint8)
    if array.ndim == 2:
        array = array[..., None]
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array[..., :3])


def _as_array(nested: list, may_hold_bools: bool) -> np.ndarray:
    try:
        array = np.asarray(nested)
    except (ValueError, TypeError, OverflowError) as error:
        if "inhomogeneous" in str(error):
            raise InputError(f"field '{FIELD}' is ragged: its rows differ in length or "
                             f"depth, and an image needs every row the same") from None
        raise InputError(f"field '{FIELD}' is not a rectangular array of numbers: "
                         f"{str(error).split('.')[0]}") from None
    kind = array.dtype.kind
    if kind == "b" or (kind in "iuf" and may_hold_bools and _holds_bool(nested)):
        raise InputError(f"field '{FIELD}' holds booleans; values must be integers 0..255")
    if kind not in "iuf":
        raise InputError(f"field '{FIELD}' must hold only integers 0..255; "
                         f"found {_describe_kind(kind)}")
    return array


def _check_values(array: np.ndarray) -> None:
    low, high = array.min(), array.max()
    if low < 0 or high > 255:
        raise InputError(f"field '{FIELD}' has values outside 0..255 (min {low:g}, max {high:g})")
    if array.dtype.kind == "f":
        fractional = np.argwhere(array != np.floor(array))
        if fractional.size:
            where = tuple(int(i) for i in fractional[0])
            raise InputError(f"field '{FIELD}' has non-integer values, e.g. {array[where]:g} "
                             f"at index {list(where)}; values must be integers 0..255")


def _check_outer_size(nested: list, max_side: int) -> None:
    """Cheap early refusal of an oversized image, before numpy copies it."""
    width = len(nested[0]) if nested and isinstance(nested[0], list) else 0
    _check_side(len(nested), width, max_side)


def _check_side(height: int, width: int, max_side: int) -> None:
    if max(height, width) > max_side:
        raise InputError(f"image is {height} x {width} pixels (H x W); the largest side "
                         f"allowed is {max_side}. For a larger scene run `python -m app.predict "
                         f"IMAGE --window {max_side}` where the model is: it takes any size (a "
                         f"TIFF part by part) and writes the same GeoJSON", 413)


def _holds_bool(nested: list) -> bool:
    stack = [nested]
    while stack:
        for item in stack.pop():
            if item is True or item is False:
                return True
            if isinstance(item, list):
                stack.append(item)
    return False


def _short_reason(error: Exception) -> str:
    if isinstance(error, UnidentifiedImageError):
        return f"not recognised as any of {UPLOAD_KINDS}"  # PIL's text names a temp file: no help
    return f"{type(error).__name__}: {error}"


def _describe_kind(kind: str) -> str:
    return {"U": "strings", "S": "strings", "O": "null, objects or integers too large"}.get(
        kind, f"values of numpy kind {kind!r}")


def _json_type(value) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean",
             int: "number", float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)
