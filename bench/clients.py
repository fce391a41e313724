"""Many HTTP clients against one running server: JSON /inference bodies, each body's answer
alone, then concurrent clients whose every answer must equal it byte for byte.

`bench.load` (the load test) and `bench.runtimes` (one server per runtime) both send requests
through these.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
import orjson
import requests

JSON_HEADERS = {"Content-Type": "application/json"}
MAX_ERRORS_KEPT = 20


class CannotRun(RuntimeError):
    """The test cannot start: exit status 2."""


@dataclass
class Tally:
    """What every client thread adds to, under one lock."""

    latencies: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    error_count: int = 0
    done: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def error(self, text: str) -> None:
        with self.lock:
            self.error_count += 1
            if len(self.errors) < MAX_ERRORS_KEPT:
                self.errors.append(text)

    def answered(self, seconds: float) -> int:
        """Record one answer's latency; the number of answers so far."""
        with self.lock:
            self.latencies.append(seconds)
            self.done += 1
            return self.done


def client_bodies(clients: int, size: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [
        orjson.dumps(
            {"image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8)},
            option=orjson.OPT_SERIALIZE_NUMPY,
        )
        for _ in range(clients)
    ]


def reference_answers(base: str, bodies: list[bytes], size: int, timeout: float) -> list[bytes]:
    """Each body's answer, alone: what every answer under load must equal."""
    answers = []
    for body in bodies:
        answer = requests.post(f"{base}/inference", data=body, headers=JSON_HEADERS, timeout=timeout)
        if answer.status_code != 200:
            raise CannotRun(f"the warm-up request got {answer.status_code}: {answer.text[:300]}")
        mask = np.asarray(orjson.loads(answer.content)["prediction"])
        if mask.shape != (size, size) or not set(np.unique(mask)) <= {0, 1}:
            raise CannotRun(f"the warm-up answer is not a {size} x {size} 0/1 mask")
        answers.append(answer.content)
    return answers


def run_clients(
    base: str, bodies: list[bytes], answers: list[bytes], counts: list[int], timeout: float, on_done=None
) -> tuple[Tally, float]:
    """Client i sends bodies[i] counts[i] times; returns the tally and the wall time.
    `on_done(n)`, when given, is called after the n-th answer."""
    tally = Tally()
    start = threading.Barrier(len(bodies) + 1)

    def client(index: int) -> None:
        with requests.Session() as session:
            start.wait()
            for _ in range(counts[index]):
                done = _one_request(
                    session, base, bodies[index], answers[index], timeout, tally, f"client {index}"
                )
                if done and on_done is not None:
                    on_done(done)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    return tally, time.perf_counter() - began


def _one_request(
    session: requests.Session, base: str, body: bytes, expected: bytes, timeout: float, tally: Tally, who: str
) -> int:
    """POST one body and tally it; the number of answers so far, 0 when none came."""
    began = time.perf_counter()
    try:
        answer = session.post(f"{base}/inference", data=body, headers=JSON_HEADERS, timeout=timeout)
    except requests.RequestException as error:
        tally.error(f"{who}: {type(error).__name__}: {error}")
        return 0
    elapsed = time.perf_counter() - began
    if answer.status_code != 200:
        tally.error(f"{who}: status {answer.status_code}: {answer.text[:200]}")
    elif answer.content != expected:
        tally.error(f"{who}: the answer differs from the serial answer")
    return tally.answered(elapsed)


def split_evenly(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def healthy(base: str, timeout: float) -> bool:
    try:
        return requests.get(f"{base}/health", timeout=timeout).status_code == 200
    except requests.RequestException:
        return False
