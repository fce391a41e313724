"""The load test's short fuzz (`python -m bench.load --fuzz N`): seeded odd requests to
/inference (corrupted JSON bodies, odd Content-Type and Accept headers, odd multipart forms,
raw bytes). None may get a 5xx, every 4xx must be a JSON error, and /health must answer after.

The property-based versions (hypothesis) run in tests/test_app.py and tests/test_app_fastjson.py.
"""

from __future__ import annotations

import io
import random

import numpy as np
import orjson
import requests
from PIL import Image

from bench.clients import JSON_HEADERS, MAX_ERRORS_KEPT, healthy

KINDS = ("corrupted json", "content type", "multipart form", "raw multipart", "random bytes")
CONTENT_TYPES = [
    "application/json",
    "application/json; charset=latin-1",
    "text/plain",
    "",
    "application/x-www-form-urlencoded",
    "image/png",
    "multipart/form-data",
    "multipart/form-data; boundary=",
    "multipart/form-data; boundary=xyz",
    'multipart/mixed; boundary="',
    "*/*",
    "application/json;;;",
]
ACCEPTS = [None, "image/png", "*/*", "text/html", "", "image/png;q=0.1, application/json"]
BYTES = b'0123456789[],.-e "\t\ntfnul{}:\x00\xff'


def png_bytes(size: int, rng: random.Random) -> bytes:
    pixels = np.frombuffer(rng.randbytes(size * size * 3), np.uint8).reshape(size, size, 3)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def fuzz_case(rng: random.Random, valid: bytes, png: bytes) -> tuple[str, dict]:
    """One odd request, as (kind, keyword arguments for requests.post)."""
    kind = rng.choice(KINDS)
    headers = {}
    accept = rng.choice(ACCEPTS)
    if accept is not None:
        headers["Accept"] = accept
    if kind == "corrupted json":
        return kind, {"data": _corrupted(rng, valid), "headers": {**headers, **JSON_HEADERS}}
    if kind == "content type":
        body = rng.choice([valid, png, b"", b"{}"])
        return kind, {"data": body, "headers": {**headers, "Content-Type": rng.choice(CONTENT_TYPES)}}
    if kind == "multipart form":
        name = rng.choice(["file", "image", "", "file[]", "upload"])
        filename = rng.choice(["tile.png", "", "../x.png", "é.png", "x" * 300])
        payload = rng.choice([png, png[: rng.randrange(1, len(png))], b"", rng.randbytes(40)])
        return kind, {"files": {name: (filename, payload)}, "headers": headers}
    if kind == "raw multipart":
        part = (
            b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
            + png
            + b"\r\n--xyz--\r\n"
        )
        body = part[: rng.randrange(len(part) + 1)]
        return kind, {
            "data": body,
            "headers": {
                **headers,
                "Content-Type": rng.choice(
                    ["multipart/form-data; boundary=xyz", "multipart/form-data; boundary=abc"]
                ),
            },
        }
    return kind, {
        "data": rng.randbytes(rng.randrange(64)),
        "headers": {**headers, "Content-Type": rng.choice(CONTENT_TYPES)},
    }


def _corrupted(rng: random.Random, valid: bytes) -> bytes:
    """`valid` with one to three bytes inserted, deleted or replaced."""
    body = bytearray(valid)
    for _ in range(rng.randint(1, 3)):
        where = rng.randrange(len(body))
        action = rng.choice(["insert", "delete", "replace"])
        if action == "insert":
            body[where:where] = bytes([rng.choice(BYTES)])
        elif action == "delete":
            del body[where]
        else:
            body[where] = rng.choice(BYTES)
    return bytes(body)


def fuzz_phase(base: str, count: int, seed: int, timeout: float) -> dict:
    """`count` odd requests from `seed`: their statuses, kinds and problems (5xx, a 4xx
    without a JSON error, a failed connection, no /health after)."""
    rng = random.Random(seed)
    valid = orjson.dumps({"image": np.full((8, 8, 3), 120, np.uint8)}, option=orjson.OPT_SERIALIZE_NUMPY)
    png = png_bytes(8, rng)
    statuses, kinds, problems = {}, {}, []
    with requests.Session() as session:
        for _ in range(count):
            kind, kwargs = fuzz_case(rng, valid, png)
            kinds[kind] = kinds.get(kind, 0) + 1
            try:
                answer = session.post(f"{base}/inference", timeout=timeout, **kwargs)
            except requests.RequestException as error:
                problems.append(f"{kind}: {type(error).__name__}: {error}")
                continue
            statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
            problems += _problems(kind, answer)
    healthy_after = healthy(base, timeout)
    if not healthy_after:
        problems.append("/health does not answer after the fuzz")
    return {
        "requests": count,
        "statuses": dict(sorted(statuses.items())),
        "kinds": dict(sorted(kinds.items())),
        "problems": problems[:MAX_ERRORS_KEPT],
        "problem_count": len(problems),
        "healthy_after": healthy_after,
    }


def _problems(kind: str, answer: requests.Response) -> list[str]:
    if answer.status_code >= 500:
        return [f"{kind}: status {answer.status_code}: {answer.text[:200]}"]
    if answer.status_code >= 400 and not _is_json_error(answer):
        return [f"{kind}: a {answer.status_code} without a JSON error"]
    return []


def _is_json_error(answer: requests.Response) -> bool:
    try:
        return bool(orjson.loads(answer.content)["error"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return False
