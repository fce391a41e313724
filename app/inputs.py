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

Well-formed JSON images take a fast path (`fast_image_from_json`, `app.fastjson`): a body that is exactly
`{"image": [...]}` holding a rectangular list of plain integers or integral decimals such as
`12.0` (digits, points, commas, brackets and JSON whitespace only) is checked with two passes
over its bytes and read by simdjson straight into one buffer, instead of building ~H*W*3
Python objects. Anything else, every mistake included, goes through the careful path, so
error messages do not depend on the fast path. Besides its cost, the careful path holds the
GIL while orjson parses: 2 s for 64 MiB, during which the server answers nothing, /health
included; decimals used to take it.

A JSON body may also name the answer's format and how to outline its buildings:
`{"image": [...], "format": "geojson", "outline": "regular", "min_area_m2": 4}` (BODY_FIELDS;
`app.options` checks their values). The fast path takes a body that has them after the image
(`app.fastjson.split_tail`).

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

import warnings
from dataclasses import dataclass, field

import numpy as np
import orjson
from PIL import Image, ImageOps, UnidentifiedImageError

from app import fastjson

FIELD = "image"
UPLOAD_FIELD = "file"
FORMAT_FIELD = "format"
# What a JSON body may hold besides the image and its format (app.options checks the values).
BODY_FIELDS = ("outline", "min_area_m2", "min_pixels")
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
    them can only be in pixels. `format` is a format named in a JSON body, `fields` the other
    members of BODY_FIELDS it has (checked by app.options)."""

    image: np.ndarray
    transform: object = None
    crs: object = None
    why_pixels: str | None = None
    format: str | None = None
    fields: dict = field(default_factory=dict)


def image_from_json(body: bytes, max_side: int) -> np.ndarray:
    return json_request(body, max_side).image


def json_request(body: bytes, max_side: int) -> Upload:
    """The image of a JSON body, the format it names, if any, and its other BODY_FIELDS."""
    why = "the image came as a JSON array, which carries no georeferencing"
    head, members = fastjson.split_tail(body)
    image = fast_image_from_json(head, max_side)
    if image is None:
        image, members = _careful(body, max_side)
    chosen = members.get(FORMAT_FIELD)
    if chosen is not None and not isinstance(chosen, str):
        raise InputError(f"field '{FORMAT_FIELD}' must be a string, got a JSON {_json_type(chosen)}")
    fields = {name: members[name] for name in BODY_FIELDS if name in members}
    return Upload(image, why_pixels=why, format=chosen, fields=fields)


def careful_image_from_json(body: bytes, max_side: int) -> np.ndarray:
    """The reference path: orjson to Python lists, then numpy; every refusal is made here."""
    return _careful(body, max_side)[0]


def _careful(body: bytes, max_side: int) -> tuple[np.ndarray, dict]:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise InputError(
            f'body is not valid JSON ({error}); send {{"{FIELD}": [...]}} '
            f"or a multipart upload in field '{UPLOAD_FIELD}'"
        ) from None
    if not isinstance(payload, dict):
        raise InputError(f"body must be a JSON object with field '{FIELD}', got a JSON {_json_type(payload)}")
    if FIELD not in payload:
        raise InputError(f"missing field '{FIELD}': send an {SHAPES} nested list of 0..255")
    nested = payload[FIELD]
    if not isinstance(nested, list):
        raise InputError(f"field '{FIELD}' must be a nested list, {SHAPES}; got a JSON {_json_type(nested)}")
    _check_outer_size(nested, max_side)
    # The bool walk is slow, so run it only when the body could hold a JSON boolean at all.
    may_hold_bools = b"true" in body or b"false" in body
    return to_rgb(_as_array(nested, may_hold_bools), max_side), payload


def fast_image_from_json(body: bytes, max_side: int) -> np.ndarray | None:
    """The H x W x 3 uint8 image of a well-formed body, or None to leave it to the careful path:
    `app.fastjson.image_array` (which says what it takes), made RGB."""
    array = fastjson.image_array(body, max_side)
    return None if array is None else to_rgb(array, max_side)


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
        raise InputError(
            f"file '{path}' is not a readable {UPLOAD_KINDS} image ({_short_reason(error)})"
        ) from None


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
            return Upload(
                np.asarray(image, dtype=np.uint8),
                why_pixels=f"a {kind} carries no georeferencing; upload a GeoTIFF "
                "for longitude/latitude and m²",
            )
    except InputError:
        raise
    except Image.DecompressionBombError as error:
        raise InputError(f"file '{name}' is too large to decode: {error}", 413) from None
    except Exception as error:  # noqa: BLE001 - a malformed file can fail in many ways, all
        # of them the client's: PIL raises OSError, SyntaxError, struct.error, EOFError ...
        raise InputError(
            f"file '{name}' is not a readable {UPLOAD_KINDS} image ({_short_reason(error)})"
        ) from None


def _refuse_deep_png(head: bytes, name: str) -> None:
    """InputError for a PNG of more than 8 bits a sample, read off its IHDR chunk (the first,
    by the PNG standard): bytes 16-23 are width and height, byte 24 the bit depth."""
    if head[:8] == PNG_MAGIC and head[12:16] == b"IHDR" and len(head) > 24 and head[24] > 8:
        raise InputError(
            f"file '{name}' is a {head[24]}-bit PNG; the model reads 8-bit RGB "
            f"(0..255) and deeper values would be clipped: {CONVERT_TO_8_BIT}"
        )


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
        raise InputError(
            f"file '{name}' has {bits}-bit pixels ({dataset.dtypes[0]}); the model "
            f"reads 8-bit RGB (uint8 0..255): {CONVERT_TO_8_BIT}"
        )
    interp = list(dataset.colorinterp)
    if ColorInterp.palette in interp:
        raise InputError(f"file '{name}' is a palette image; convert it to RGB first")
    rgb = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
    if all(colour in interp for colour in rgb):
        return [interp.index(colour) + 1 for colour in rgb]
    if dataset.count in (1, 3, 4):
        return list(range(1, min(dataset.count, 3) + 1))
    raise InputError(f"file '{name}' has {dataset.count} bands; send 1 (gray), 3 (RGB) or 4 (RGBA)")


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
        raise InputError(
            f"file '{name}' is not a readable {UPLOAD_KINDS} image ({_short_reason(error)})"
        ) from None


def to_rgb(array: np.ndarray, max_side: int) -> np.ndarray:
    """Check a numeric array and return it as contiguous H x W x 3 uint8."""
    if array.size == 0:
        raise InputError(f"field '{FIELD}' is empty (shape {list(array.shape)})")
    channels = array.shape[2] if array.ndim == 3 else None
    if array.ndim not in (2, 3) or channels not in (None, 1, 3, 4):
        raise InputError(f"field '{FIELD}' has shape {list(array.shape)}; it must be {SHAPES}")
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
            raise InputError(
                f"field '{FIELD}' is ragged: its rows differ in length or "
                f"depth, and an image needs every row the same"
            ) from None
        raise InputError(
            f"field '{FIELD}' is not a rectangular array of numbers: {str(error).split('.')[0]}"
        ) from None
    kind = array.dtype.kind
    if kind == "b" or (kind in "iuf" and may_hold_bools and _holds_bool(nested)):
        raise InputError(f"field '{FIELD}' holds booleans; values must be integers 0..255")
    if kind not in "iuf":
        raise InputError(f"field '{FIELD}' must hold only integers 0..255; found {_describe_kind(kind)}")
    return array


def _check_values(array: np.ndarray) -> None:
    low, high = array.min(), array.max()
    if low < 0 or high > 255:
        raise InputError(f"field '{FIELD}' has values outside 0..255 (min {low:g}, max {high:g})")
    if array.dtype.kind == "f":
        fractional = np.argwhere(array != np.floor(array))
        if fractional.size:
            where = tuple(int(i) for i in fractional[0])
            raise InputError(
                f"field '{FIELD}' has non-integer values, e.g. {array[where]:g} "
                f"at index {list(where)}; values must be integers 0..255"
            )


def _check_outer_size(nested: list, max_side: int) -> None:
    """Cheap early refusal of an oversized image, before numpy copies it."""
    width = len(nested[0]) if nested and isinstance(nested[0], list) else 0
    _check_side(len(nested), width, max_side)


def _check_side(height: int, width: int, max_side: int) -> None:
    if max(height, width) > max_side:
        raise InputError(
            f"image is {height} x {width} pixels (H x W); the largest side "
            f"allowed is {max_side}. For a larger scene run `python -m app.predict "
            f"IMAGE --window {max_side}` where the model is: it takes any size (a "
            f"TIFF part by part) and writes the same GeoJSON",
            413,
        )


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
        kind, f"values of numpy kind {kind!r}"
    )


def _json_type(value) -> str:
    names = {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        int: "number",
        float: "number",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)
