"""How a request wants its buildings outlined: `outline` ("raw" or "regular"), `min_area_m2`
(georeferenced images) and `min_pixels` (images in pixels), from the query string or the JSON
body, checked, with the served defaults (`zoo.polygons`, chosen in experiments/outlines).

Each may come in the query (`?outline=regular&min_area_m2=4`, the only way for an upload) or
as a member of a JSON body; both at once must agree. A bad value gets a 400 naming the field.
They shape a GeoJSON answer; a mask (format json or png) does not depend on them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from app.inputs import InputError
from zoo.polygons import DEFAULT_MIN_AREA_M2, DEFAULT_MIN_PIXELS, DEFAULT_OUTLINE, OUTLINES

OUTLINE_FIELD, MIN_AREA_FIELD, MIN_PIXELS_FIELD = "outline", "min_area_m2", "min_pixels"
# Far above any building (a large warehouse is 10^4 m², a 4096 px side 1.7 x 10^7 pixels),
# so a larger value is a mistake rather than a wish to see nothing.
MOST_M2 = 1e6
MOST_PIXELS = 2**26


@dataclass(frozen=True)
class OutlineOptions:
    outline: str = DEFAULT_OUTLINE
    min_area_m2: float = DEFAULT_MIN_AREA_M2
    min_pixels: int = DEFAULT_MIN_PIXELS

    def as_dict(self) -> dict:
        return {
            OUTLINE_FIELD: self.outline,
            MIN_AREA_FIELD: self.min_area_m2,
            MIN_PIXELS_FIELD: self.min_pixels,
        }


def outline_options(query: Mapping[str, str], body: Mapping[str, object]) -> OutlineOptions:
    """The options a request asks for, the defaults for the rest; InputError naming the field."""
    chosen = {}
    for name, from_text, from_json in (
        (OUTLINE_FIELD, _outline, _outline),
        (MIN_AREA_FIELD, _area_text, _area),
        (MIN_PIXELS_FIELD, _pixels_text, _pixels),
    ):
        queried = from_text(query[name], f"query parameter '{name}'") if name in query else None
        sent = from_json(body[name], f"field '{name}'") if body.get(name) is not None else None
        if queried is not None and sent is not None and queried != sent:
            raise InputError(
                f"{name} asked twice and differently: {queried!r} in the query, {sent!r} in the body"
            )
        value = queried if queried is not None else sent
        if value is not None:
            chosen[name] = value
    return OutlineOptions(**chosen)


def _outline(value, where: str) -> str:
    if value not in OUTLINES:
        raise InputError(f"{where} must be one of {', '.join(OUTLINES)}; got {value!r}")
    return value


def _area(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{where} must be a number of m² (0 to {MOST_M2:g}); got {value!r}")
    return _in_range(float(value), MOST_M2, where, "m²")


def _area_text(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{where} must be a number of m² (0 to {MOST_M2:g}); got {text!r}") from None
    return _in_range(value, MOST_M2, where, "m²")


def _pixels(value, where: str) -> int:
    # 12.0 passes, as for image values: it is what a float's tolist() writes.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise InputError(f"{where} must be a whole number of pixels (0 to {MOST_PIXELS}); got {value!r}")
    return int(_in_range(float(value), MOST_PIXELS, where, "pixels"))


def _pixels_text(text: str, where: str) -> int:
    if not text.strip().isdigit():
        raise InputError(f"{where} must be a whole number of pixels (0 to {MOST_PIXELS}); got {text!r}")
    return int(_in_range(float(text), MOST_PIXELS, where, "pixels"))


def _in_range(value: float, most: float, where: str, unit: str) -> float:
    if not math.isfinite(value) or not 0 <= value <= most:
        raise InputError(f"{where} must be between 0 and {most:g} {unit}; got {value:g}")
    return value
