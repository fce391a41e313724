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

Multipart body: field `file`, a PNG or JPEG. Its EXIF orientation is applied (a browser
shows it that way, so the mask lines up with what the user sees), then it is converted to
RGB the same way (alpha dropped, gray replicated).
"""
from __future__ import annotations

import numpy as np
import orjson
from PIL import Image, ImageOps, UnidentifiedImageError

FIELD = "image"
UPLOAD_FIELD = "file"
UPLOAD_FORMATS = ("PNG", "JPEG")
SHAPES = "H x W x 3 RGB (or H x W x 4 RGBA, or H x W grayscale)"


class InputError(ValueError):
    """A client mistake: `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def image_from_json(body: bytes, max_side: int) -> np.ndarray:
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
    return to_rgb(_as_array(nested, may_hold_bools), max_side)


def image_from_upload(storage, max_side: int) -> np.ndarray:
    name = storage.filename or UPLOAD_FIELD
    try:
        with Image.open(storage.stream, formats=UPLOAD_FORMATS) as image:
            # The header is read, the pixels not yet: refuse a huge image before decoding it.
            _check_side(image.height, image.width, max_side)
            image = ImageOps.exif_transpose(image).convert("RGB")
            return np.asarray(image, dtype=np.uint8)
    except InputError:
        raise
    except Image.DecompressionBombError as error:
        raise InputError(f"file '{name}' is too large to decode: {error}", 413) from None
    except Exception as error:  # noqa: BLE001 - a malformed file can fail in many ways, all
        # of them the client's: PIL raises OSError, SyntaxError, struct.error, EOFError ...
        raise InputError(f"file '{name}' is not a readable PNG or JPEG image "
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
        raise InputError(f"image is {height} x {width} pixels (H x W); "
                         f"the largest side allowed is {max_side}", 413)


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
        return "not recognised as either format"  # PIL's text names a temp file: no help
    return f"{type(error).__name__}: {error}"


def _describe_kind(kind: str) -> str:
    return {"U": "strings", "S": "strings", "O": "null, objects or integers too large"}.get(
        kind, f"values of numpy kind {kind!r}")


def _json_type(value) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean",
             int: "number", float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)
