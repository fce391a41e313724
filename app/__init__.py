"""The Flask app that serves the building-footprint model `training.fit` fitted (`results/MODEL`).

Routes (every answer, errors included, is JSON except `/` and a PNG mask); the whole contract,
its limits and measured costs are in docs/serving.md:

- `POST /inference`: JSON `{"image": H x W x 3 nested list of 0..255}` or a multipart upload
  (field `file`: PNG, JPEG or TIFF) -> `{"prediction": H x W nested list of 0/1}`, a PNG mask
  (`?format=png`), or the buildings as GeoJSON (`?format=geojson`; `zoo.polygons`), outlined as
  `app.options` reads from the query or the body. Input rules: `app/inputs.py`.
- `GET /health`: takes no lock and does no work, so it answers while other requests run: the
  model call releases the GIL, and the outline step holds it at most ~0.3 s at a time.
- `GET /model`: the model's metadata, and under `serving` what this server applies.
- `GET /`: the page (`app/page.html`).

Limits, each a 4xx naming what is wrong: a side over `max_side` (4096 px) or a body over
`max_body_mb` (64 MiB, with a length or chunked) is a 413 naming `python -m app.predict`, which
takes any size; a GeoJSON answer gets `budget_s` (60 s) from the request's arrival, then a 503
with the reason, so no request can hold a worker for long. No client input can cause a 500.

Run it with `python -m app` (development server, a thread a request) or with gunicorn
(`app/wsgi.py`).
"""

from __future__ import annotations

import base64
import io
import logging
import threading
import time
from pathlib import Path

import numpy as np
import orjson
from flask import Flask, Response, request
from PIL import Image
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from app.inputs import FORMAT_FIELD, UPLOAD_FIELD, UPLOAD_KINDS, InputError, Upload, json_request, read_upload
from app.model import load_segmenter, model_name, resolve_model_path
from app.options import OutlineOptions, outline_options
from zoo.polygons import OutlineBudgetExceeded, footprints_geojson

# What POST /inference answers: the mask as JSON (the contract), as a PNG, or as outlines.
FORMATS = {"json": "application/json", "png": "image/png", "geojson": "application/geo+json"}
EXTRAS = ("mask", "image", "pixels")  # ?include= for format geojson: what the page draws

MAX_SIDE = 4096
MAX_BODY_MB = 64
# Seconds a GeoJSON request may take, from its arrival to its outlines: a 4096 x 4096 noise
# image takes about 20 s on 2 CPU cores, and gunicorn's --timeout 120 kills a worker later.
BUDGET_S = 60.0
# Bytes a pixel of a JSON image, the most of 33 real 256 x 256 tiles of oam_buildings: with
# Python's default json.dumps (", " between values) and compact (separators=(",", ":")).
JSON_BYTES_PER_PIXEL = {"default": 17.0, "compact": 14.0}
PAGE = Path(__file__).with_name("page.html")
log = logging.getLogger(__name__)


def create_app(
    model_path=None,
    segmenter=None,
    max_side: int = MAX_SIDE,
    max_body_mb: float = MAX_BODY_MB,
    budget_s: float = BUDGET_S,
) -> Flask:
    """`segmenter` (a zoo.predict.Segmenter) wins over `model_path`; with neither, the default
    model is loaded (see app.model). Raises app.model.ModelUnavailable if it cannot be."""
    if segmenter is None:
        segmenter = load_segmenter(resolve_model_path(model_path))
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = int(max_body_mb * 2**20)
    predict, predict_probabilities = _guarded(segmenter)
    name = model_name(segmenter)
    page = PAGE.read_bytes()

    @app.get("/")
    def index():
        return Response(page, mimetype="text/html")

    @app.get("/health")
    def health():
        return _json(
            {
                "status": "ok",
                "model": name,
                "sha256": segmenter.metadata.get("sha256"),
                "threshold": segmenter.threshold,
                "max_side": max_side,
                "max_body_mb": max_body_mb,
            }
        )

    @app.get("/model")
    def model():
        # "serving": what this server applies, whatever the saved metadata says (the page shows
        # it), beside the runtime that app.model records there.
        serving = {
            **(segmenter.metadata.get("serving") or {}),
            "threshold": segmenter.threshold,
            "scales": list(getattr(segmenter, "scales", (1.0,))),
            "tta": getattr(segmenter, "tta", "none"),
            "outlines": OutlineOptions().as_dict(),
        }
        return _json({"name": name, **segmenter.metadata, "serving": serving})

    @app.post("/inference")
    def inference():
        deadline = time.monotonic() + budget_s
        queried = _query_format()
        upload = _read_upload(max_side)
        options = outline_options(request.args, upload.fields)
        chosen = _chosen_format(queried, upload.format)
        if chosen == "geojson":
            extras = _extras()
            mask, probabilities = predict_probabilities(upload.image)
            return _geojson(
                upload,
                mask,
                probabilities,
                extras,
                deadline,
                options,
                model=name,
                threshold=segmenter.threshold,
            )
        mask = predict(upload.image)
        return _png(mask) if chosen == "png" else _json({"prediction": mask})

    _add_error_handlers(app, max_body_mb, budget_s)
    return app


def _guarded(segmenter):
    """Serialise model calls. TF already spreads one call over every core, so the lock costs
    little throughput, and it bounds peak memory when several big images arrive at once;
    request parsing, polygons and answer encoding still run in parallel. Scale out with workers."""
    lock = threading.Lock()

    def predict(image: np.ndarray) -> np.ndarray:
        with lock:
            mask = segmenter.predict(image)
        return np.ascontiguousarray(mask, dtype=np.uint8)

    def predict_probabilities(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with lock:
            probabilities = segmenter.probabilities(image)
        # The same rule as Segmenter.predict, so the outlines are those of the served mask.
        return (probabilities >= segmenter.threshold).astype(np.uint8), probabilities

    return predict, predict_probabilities


def _read_upload(max_side: int) -> Upload:
    if request.mimetype.startswith("multipart/"):
        files = request.files
        _refuse_a_body_past_the_limit()
        upload = files.get(UPLOAD_FIELD)
        if upload is None:
            if UPLOAD_FIELD in request.form:
                raise InputError(
                    f"multipart field '{UPLOAD_FIELD}' came as text; send it as a "
                    f"file (a {UPLOAD_KINDS}, with a filename)"
                )
            # A part without a usable name comes keyed None: name it, do not sort None.
            got = (
                sorted(
                    {
                        name if isinstance(name, str) else "(no name)"
                        for name in [*request.files, *request.form]
                    }
                )
                or "none"
            )
            raise InputError(
                f"missing multipart field '{UPLOAD_FIELD}' (a {UPLOAD_KINDS}); fields received: {got}"
            )
        return read_upload(upload, max_side)
    body = request.get_data(cache=False)
    _refuse_a_body_past_the_limit()
    return json_request(body, max_side)


def _refuse_a_body_past_the_limit() -> None:
    """413 for a body sent without a length (chunked) that goes on past the limit.

    Werkzeug stops reading such a body at the limit and hands on what it read as if the body
    ended there, so a larger JSON image used to get 400 "not valid JSON ... char 67108864".
    A body with a Content-Length over the limit never gets here (Werkzeug answers 413)."""
    if request.content_length is not None or not getattr(request.stream, "is_exhausted", False):
        return
    raw = request.environ["wsgi.input"]  # where Werkzeug's limited view of it stopped
    if raw.read(1):
        _drain(raw, request.max_content_length or 0)
        raise RequestEntityTooLarge()


def _drain(stream, most: int) -> None:
    """Read and drop up to `most` bytes more, so that a client still sending its body reads
    the 413 instead of a reset connection; beyond that, the server closes it."""
    while most > 0:
        chunk = stream.read(min(most, 1 << 20))
        if not chunk:
            return
        most -= len(chunk)


def _query_format() -> str | None:
    chosen = request.args.get(FORMAT_FIELD)
    if chosen is not None and chosen not in FORMATS:
        raise InputError(
            f"query parameter '{FORMAT_FIELD}' must be one of {', '.join(FORMATS)}; got {chosen!r}"
        )
    return chosen


def _chosen_format(queried: str | None, in_body: str | None) -> str:
    if in_body is not None and in_body not in FORMATS:
        raise InputError(f"field '{FORMAT_FIELD}' must be one of {', '.join(FORMATS)}; got {in_body!r}")
    if queried and in_body and queried != in_body:
        raise InputError(
            f"format asked twice and differently: {queried!r} in the query, {in_body!r} in the body"
        )
    if queried or in_body:
        return queried or in_body
    best = request.accept_mimetypes.best_match(list(FORMATS.values()))
    return {mimetype: name for name, mimetype in FORMATS.items()}.get(best, "json")


def _extras() -> set[str]:
    asked = {part.strip() for part in request.args.get("include", "").split(",") if part.strip()}
    unknown = asked - set(EXTRAS)
    if unknown:
        raise InputError(
            f"query parameter 'include' takes {', '.join(EXTRAS)}; got {', '.join(sorted(unknown))}"
        )
    return asked


def _geojson(
    upload: Upload,
    mask: np.ndarray,
    probabilities: np.ndarray,
    extras: set[str],
    deadline: float,
    options: OutlineOptions,
    **members,
) -> Response:
    height, width = mask.shape
    if "mask" in extras:
        members["mask_png"] = _base64_png(mask * 255)
    if "image" in extras:
        members["image_png"] = _base64_png(upload.image)
    collection = footprints_geojson(
        mask,
        probabilities,
        upload.transform,
        upload.crs,
        why_pixels=upload.why_pixels,
        pixel_geometry="pixels" in extras,
        deadline=deadline,
        outline=options.outline,
        min_area_m2=options.min_area_m2,
        min_pixels=options.min_pixels,
        image={"height": height, "width": width},
        **members,
    )
    return _json(collection, mimetype=FORMATS["geojson"])


def _json(payload, status: int = 200, mimetype: str = "application/json") -> Response:
    body = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY, default=str)
    return Response(body, status=status, mimetype=mimetype)


def _png(mask: np.ndarray) -> Response:
    # 0/255 rather than 0/1 so the file is visible in any image viewer.
    return Response(_png_bytes(mask * 255), mimetype="image/png")


def _png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _base64_png(pixels: np.ndarray) -> str:
    return base64.b64encode(_png_bytes(pixels)).decode("ascii")


def _add_error_handlers(app: Flask, max_body_mb: float, budget_s: float) -> None:
    @app.errorhandler(InputError)
    def bad_input(error: InputError):
        return _json({"error": str(error)}, error.status)

    @app.errorhandler(OutlineBudgetExceeded)
    def over_budget(error: OutlineBudgetExceeded):
        # 503, not 4xx: the image is valid, the server will not spend more time on it.
        return _json(
            {
                "error": f"the building outlines of this image took longer than the "
                f"{budget_s:g} s a request may take: its mask is too intricate "
                f"(noise-like, or one region with thousands of holes). Ask for "
                f"the mask instead (format json or png), or run `python -m "
                f"app.predict IMAGE`, which has no time limit."
            },
            503,
        )

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        return _json({"error": _http_message(error, max_body_mb)}, error.code or 500)

    @app.errorhandler(Exception)
    def unexpected(error: Exception):
        # A bug of ours, never the client's input: log it whole, answer without internals.
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _json({"error": f"internal error ({type(error).__name__}); see the server log"}, 500)


def _http_message(error: HTTPException, max_body_mb: float) -> str:
    if error.code == 404:
        return f"no route {request.method} {request.path}; routes: /, /health, /model, /inference"
    if error.code == 405:
        allowed = ", ".join(sorted(getattr(error, "valid_methods", None) or []))
        return f"method {request.method} not allowed on {request.path}; use {allowed}"
    if error.code == 413:
        default = JSON_BYTES_PER_PIXEL["default"]
        compact = JSON_BYTES_PER_PIXEL["compact"]
        return (
            f"request body is larger than the limit of {max_body_mb:g} MB (MiB); a JSON "
            f"image takes up to {compact:g} bytes a pixel written compactly and {default:g} "
            f"with Python's default json.dumps: send a larger image as a PNG upload "
            f"(multipart field '{UPLOAD_FIELD}'); a scene too large for that, run `python -m "
            f"app.predict IMAGE --window 4096` where the model is: it takes any size"
        )
    return f"{error.name}: {error.description}"
