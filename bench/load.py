"""`python -m bench.load --url URL [--clients 4] [--requests 200] [--size 256] [--out results/load.md]`

A bounded load test of a running server, over loopback only, that writes a markdown report:

1. Latency and throughput: `--clients` threads, each with its own keep-alive session and its
   own random image, send `--requests` JSON /inference requests of `--size` x `--size`
   pixels each. Reported: p50, p95 and max latency, requests per second, errors. An error is
   a failed connection, a status other than 200, or an answer that differs byte for byte
   from the answer the same image got alone before the test (the model is deterministic).
   The clients are `bench.clients`'.
2. Server memory: `--memory-requests` (1,000) more requests by the same clients, with the
   server's resident memory (RSS, psutil: the server process and its children, e.g.
   gunicorn workers) sampled before, every `--sample-every` requests, and after a short
   idle pause. Reported: the series, and the growth from request `--growth-from` (200) to
   the last, which must stay under `--max-growth-mb`.
3. A short fuzz (`--fuzz` requests, seeded; `bench.fuzz`): corrupted JSON bodies, odd Content-Type and
   Accept headers, odd multipart forms and raw bytes. None may get a 5xx, every 4xx must be a
   JSON error, and /health must still answer after.

The server's PID comes from `--pid`, else from the process listening on the URL's port.
The exit status is 0 when there were no errors, no 5xx and the memory bound held, 1
otherwise, 2 when the test could not run (a URL that is not loopback, no server, no PID).
The machine's load average is recorded at the start and the end: latencies measured beside
other work (a training run, say) are slower and noisier than on an idle machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import psutil
import requests

from bench.clients import CannotRun, client_bodies, reference_answers, run_clients, split_evenly
from bench.fuzz import fuzz_phase
from bench.load_report import markdown, summary
from zoo.files import write_text_atomic


@dataclasses.dataclass(frozen=True)
class LoadTest:
    """What `python -m bench.load` was asked to do (its flags, less --out)."""

    url: str
    clients: int = 4
    requests: int = 200  # per client, in the latency phase
    size: int = 256
    pid: int | None = None  # None: the process listening on the URL's port
    memory_requests: int = 1000  # 0: no memory phase
    sample_every: int = 50
    growth_from: int = 200
    max_growth_mb: float = 64.0
    settle: float = 2.0
    fuzz: int = 100  # 0: no fuzz
    seed: int = 0
    timeout: float = 120.0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.load",
        description="A bounded load test of POST /inference over loopback, with a markdown report.",
    )
    add = parser.add_argument
    add("--url", required=True, help="the server, e.g. http://127.0.0.1:8000")
    add("--clients", type=int, default=LoadTest.clients, help="concurrent clients (default %(default)s)")
    add(
        "--requests",
        type=int,
        default=LoadTest.requests,
        help="requests per client in the latency phase (default %(default)s)",
    )
    add("--size", type=int, default=LoadTest.size, help="image side in pixels (default %(default)s)")
    add("--out", type=Path, default=Path("results/load.md"), help="the markdown report (default %(default)s)")
    add("--pid", type=int, help="the server's PID (default: the process listening on the URL's port)")
    add(
        "--memory-requests",
        type=int,
        default=LoadTest.memory_requests,
        help="requests in the memory phase, 0 to skip it (default %(default)s)",
    )
    add(
        "--sample-every",
        type=int,
        default=LoadTest.sample_every,
        help="RSS sample every N requests of the memory phase (default %(default)s)",
    )
    add(
        "--growth-from",
        type=int,
        default=LoadTest.growth_from,
        help="memory growth is measured from this request to the last (default %(default)s)",
    )
    add(
        "--max-growth-mb",
        type=float,
        default=LoadTest.max_growth_mb,
        help="largest RSS growth allowed after --growth-from (default %(default)s MB)",
    )
    add(
        "--settle",
        type=float,
        default=LoadTest.settle,
        help="idle seconds before the 'after' RSS sample (default %(default)s)",
    )
    add("--fuzz", type=int, default=LoadTest.fuzz, help="fuzzed requests, 0 to skip (default %(default)s)")
    add("--seed", type=int, default=LoadTest.seed)
    add("--timeout", type=float, default=LoadTest.timeout, help="seconds per request")
    args = parser.parse_args(argv)
    for name in ("clients", "requests", "size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.memory_requests < 0 or args.sample_every < 1 or args.fuzz < 0:
        parser.error("--memory-requests and --fuzz must be >= 0, --sample-every >= 1")
    return args


# -- the server ------------------------------------------------------------------------------------


def loopback_base(url: str) -> tuple[str, int]:
    """`url` without a trailing slash, and its port; CannotRun unless it is loopback HTTP."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if parts.scheme != "http" or not loopback:
        raise CannotRun(
            f"--url must be http:// on loopback (127.0.0.1), got {url!r}: this test "
            "is not meant to load another machine"
        )
    return url.rstrip("/"), parts.port or 80


def listening_pid(port: int) -> int | None:
    """The PID of the process listening on TCP `port`: the eldest one when several share the
    socket (gunicorn's master and workers)."""
    pids = {
        conn.pid
        for conn in psutil.net_connections(kind="tcp")
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid
    }
    for pid in sorted(pids):
        try:
            if psutil.Process(pid).ppid() not in pids:
                return pid
        except psutil.NoSuchProcess:
            continue
    return None


def rss_bytes(process: psutil.Process) -> int:
    """RSS of the process and all its descendants (gunicorn workers hold the models)."""
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


# -- the phases ------------------------------------------------------------------------------------


def latency_phase(
    base: str, bodies: list[bytes], answers: list[bytes], per_client: int, timeout: float
) -> dict:
    """Every client sends its body `per_client` times at once: latency spread, throughput, errors."""
    tally, wall = run_clients(base, bodies, answers, [per_client] * len(bodies), timeout)
    ms = np.asarray(tally.latencies) * 1000 if tally.latencies else np.asarray([np.nan])
    return {
        "requests": len(bodies) * per_client,
        "answered": len(tally.latencies),
        "errors": tally.error_count,
        "error_samples": tally.errors,
        "wall_s": wall,
        "throughput_per_s": len(tally.latencies) / wall if wall else float("nan"),
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "max_ms": float(ms.max()),
        "mean_ms": float(ms.mean()),
    }


def memory_phase(
    base: str, bodies: list[bytes], answers: list[bytes], process: psutil.Process, test: LoadTest
) -> dict:
    """`test.memory_requests` more requests, the server's RSS sampled along: its growth from
    request `test.growth_from` to the last against `test.max_growth_mb`."""
    series = [(0, rss_bytes(process))]
    lock = threading.Lock()

    def sample(done: int) -> None:
        if done % test.sample_every == 0 or done == test.memory_requests:
            value = rss_bytes(process)
            with lock:
                series.append((done, value))

    counts = split_evenly(test.memory_requests, len(bodies))
    tally, wall = run_clients(base, bodies, answers, counts, test.timeout, on_done=sample)
    time.sleep(test.settle)
    after = rss_bytes(process)
    series.sort()
    start_at = min(test.growth_from, test.memory_requests)
    origin = min((point for point in series if point[0] >= start_at), default=series[0])
    last = series[-1]
    growth = (last[1] - origin[1]) / 2**20
    return {
        "requests": test.memory_requests,
        "errors": tally.error_count,
        "error_samples": tally.errors,
        "wall_s": wall,
        "series": series,
        "before_mb": series[0][1] / 2**20,
        "after_mb": after / 2**20,
        "peak_mb": max(value for _, value in series) / 2**20,
        "growth_from": origin[0],
        "growth_to": last[0],
        "growth_mb": growth,
        "bound_mb": test.max_growth_mb,
        "within_bound": growth <= test.max_growth_mb,
    }


# -- main ------------------------------------------------------------------------------------------


def run(test: LoadTest, argv_text: str = "") -> dict:
    """The whole test against the server at `test.url`: the phases' numbers and the verdict."""
    base, port = loopback_base(test.url)
    health, pid, process = server_process(base, port, test.pid, test.timeout)
    started, began = datetime.now(timezone.utc), time.perf_counter()
    loadavg_start = os.getloadavg()
    bodies = client_bodies(test.clients, test.size, test.seed)
    answers = reference_answers(base, bodies, test.size, test.timeout)
    result = {
        "url": base,
        "pid": pid,
        "model": health.get("model", "?"),
        "started": started.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "argv": argv_text,
        "cpus": os.cpu_count(),
        "loadavg_start": loadavg_start,
        "clients": test.clients,
        "per_client": test.requests,
        "size": test.size,
        "seed": test.seed,
        "body_mb": len(bodies[0]) / 2**20,
        "sample_every": test.sample_every,
        "settle": test.settle,
    }
    result["latency"] = latency_phase(base, bodies, answers, test.requests, test.timeout)
    if test.memory_requests:
        result["memory"] = memory_phase(base, bodies, answers, process, test)
    if test.fuzz:
        result["fuzz"] = fuzz_phase(base, test.fuzz, test.seed, test.timeout)
    result["loadavg_end"] = os.getloadavg()
    result["took_s"] = time.perf_counter() - began
    result["failures"] = failures(result)
    result["passed"] = not result["failures"]
    return result


def server_process(base: str, port: int, pid: int | None, timeout: float) -> tuple[dict, int, psutil.Process]:
    """The server's /health answer, its PID (`pid`, else the one listening on `port`), its process."""
    try:
        health = requests.get(f"{base}/health", timeout=timeout).json()
    except (requests.RequestException, ValueError) as error:
        raise CannotRun(f"no server answering at {base}/health: {error}") from None
    pid = pid or listening_pid(port)
    if pid is None:
        raise CannotRun(f"cannot find the process listening on port {port}; pass --pid")
    try:
        return health, pid, psutil.Process(pid)
    except psutil.NoSuchProcess:
        raise CannotRun(f"no process with PID {pid}") from None


def failures(result: dict) -> list[str]:
    """Why the run fails, one phrase each; empty when it passes."""
    found = []
    errors = result["latency"]["errors"] + result.get("memory", {}).get("errors", 0)
    if errors:
        found.append(f"{errors} failed requests")
    if "memory" in result and not result["memory"]["within_bound"]:
        found.append(
            f"RSS grew {result['memory']['growth_mb']:.1f} MB (bound {result['memory']['bound_mb']:g} MB)"
        )
    if result.get("fuzz", {}).get("problem_count"):
        found.append(
            f"{result['fuzz']['problem_count']} fuzz problems (5xx, non-JSON errors, or no /health after)"
        )
    return found


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    test = LoadTest(**{name: value for name, value in vars(args).items() if name != "out"})
    try:
        result = run(test, " ".join(argv))
    except CannotRun as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    write_text_atomic(args.out, markdown(result))
    print(summary(result, args.out))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
