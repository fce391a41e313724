"""`python -m bench.load --url URL [--clients 4] [--requests 200] [--size 256] [--out results/load.md]`

A bounded load test of a running server, over loopback only, that writes a markdown report:

1. Latency and throughput: `--clients` threads, each with its own keep-alive session and its
   own random image, send `--requests` JSON /inference requests of `--size` x `--size`
   pixels each. Reported: p50, p95 and max latency, requests per second, errors. An error is
   a failed connection, a status other than 200, or an answer that differs byte for byte
   from the answer the same image got alone before the test (the model is deterministic).
2. Server memory: `--memory-requests` (1,000) more requests by the same clients, with the
   server's resident memory (RSS, psutil: the server process and its children, e.g.
   gunicorn workers) sampled before, every `--sample-every` requests, and after a short
   idle pause. Reported: the series, and the growth from request `--growth-from` (200) to
   the last, which must stay under `--max-growth-mb`.
3. A short fuzz (`--fuzz` requests, seeded): corrupted JSON bodies, odd Content-Type and
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
import io
import ipaddress
import os
import platform
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import orjson
import psutil
import requests

JSON_HEADERS = {"Content-Type": "application/json"}
MAX_ERRORS_KEPT = 20


class CannotRun(RuntimeError):
    """The test cannot start: exit status 2."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.load",
                                     description="A bounded load test of POST /inference over "
                                                 "loopback, with a markdown report.")
    parser.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    parser.add_argument("--requests", type=int, default=200,
                        help="requests per client in the latency phase (default 200)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    parser.add_argument("--out", type=Path, default=Path("results/load.md"),
                        help="the markdown report (default results/load.md)")
    parser.add_argument("--pid", type=int, help="the server's PID (default: the process "
                        "listening on the URL's port)")
    parser.add_argument("--memory-requests", type=int, default=1000,
                        help="requests in the memory phase, 0 to skip it (default 1000)")
    parser.add_argument("--sample-every", type=int, default=50,
                        help="RSS sample every N requests of the memory phase (default 50)")
    parser.add_argument("--growth-from", type=int, default=200,
                        help="memory growth is measured from this request to the last (default 200)")
    parser.add_argument("--max-growth-mb", type=float, default=64.0,
                        help="largest RSS growth allowed after --growth-from (default 64 MB)")
    parser.add_argument("--settle", type=float, default=2.0,
                        help="idle seconds before the 'after' RSS sample (default 2)")
    parser.add_argument("--fuzz", type=int, default=100,
                        help="fuzzed requests, 0 to skip (default 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
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
        raise CannotRun(f"--url must be http:// on loopback (127.0.0.1), got {url!r}: this test "
                        "is not meant to load another machine")
    return url.rstrip("/"), parts.port or 80


def listening_pid(port: int) -> int | None:
    """The PID of the process listening on TCP `port`: the eldest one when several share the
    socket (gunicorn's master and workers)."""
    pids = {conn.pid for conn in psutil.net_connections(kind="tcp")
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port
            and conn.pid}
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


# -- sending requests ------------------------------------------------------------------------------

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


def client_bodies(clients: int, size: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [orjson.dumps({"image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8)},
                         option=orjson.OPT_SERIALIZE_NUMPY) for _ in range(clients)]


def reference_answers(base: str, bodies: list[bytes], size: int, timeout: float) -> list[bytes]:
    """Each body's answer, alone: what every answer under load must equal."""
    answers = []
    for body in bodies:
        answer = requests.post(f"{base}/inference", data=body, headers=JSON_HEADERS,
                               timeout=timeout)
        if answer.status_code != 200:
            raise CannotRun(f"the warm-up request got {answer.status_code}: {answer.text[:300]}")
        mask = np.asarray(orjson.loads(answer.content)["prediction"])
        if mask.shape != (size, size) or not set(np.unique(mask)) <= {0, 1}:
            raise CannotRun(f"the warm-up answer is not a {size} x {size} 0/1 mask")
        answers.append(answer.content)
    return answers


def run_clients(base: str, bodies: list[bytes], answers: list[bytes], counts: list[int],
                timeout: float, on_done=None) -> tuple[Tally, float]:
    """Client i sends bodies[i] counts[i] times; returns the tally and the wall time."""
    tally = Tally()
    start = threading.Barrier(len(bodies) + 1)

    def client(index: int) -> None:
        with requests.Session() as session:
            start.wait()
            for _ in range(counts[index]):
                began = time.perf_counter()
                try:
                    answer = session.post(f"{base}/inference", data=bodies[index],
                                          headers=JSON_HEADERS, timeout=timeout)
                except requests.RequestException as error:
                    tally.error(f"client {index}: {type(error).__name__}: {error}")
                    continue
                elapsed = time.perf_counter() - began
                if answer.status_code != 200:
                    tally.error(f"client {index}: status {answer.status_code}: "
                                f"{answer.text[:200]}")
                elif answer.content != answers[index]:
                    tally.error(f"client {index}: the answer differs from the serial answer")
                with tally.lock:
                    tally.latencies.append(elapsed)
                    tally.done += 1
                    done = tally.done
                if on_done is not None:
                    on_done(done)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    return tally, time.perf_counter() - began


def split_evenly(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


# -- the phases ------------------------------------------------------------------------------------

def latency_phase(base, bodies, answers, args) -> dict:
    tally, wall = run_clients(base, bodies, answers, [args.requests] * args.clients, args.timeout)
    ms = np.asarray(tally.latencies) * 1000 if tally.latencies else np.asarray([np.nan])
    return {"requests": args.clients * args.requests, "answered": len(tally.latencies),
            "errors": tally.error_count, "error_samples": tally.errors, "wall_s": wall,
            "throughput_per_s": len(tally.latencies) / wall if wall else float("nan"),
            "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "max_ms": float(ms.max()), "mean_ms": float(ms.mean())}


def memory_phase(base, bodies, answers, process: psutil.Process, args) -> dict:
    series = [(0, rss_bytes(process))]
    lock = threading.Lock()

    def sample(done: int) -> None:
        if done % args.sample_every == 0 or done == args.memory_requests:
            value = rss_bytes(process)
            with lock:
                series.append((done, value))

    counts = split_evenly(args.memory_requests, len(bodies))
    tally, wall = run_clients(base, bodies, answers, counts, args.timeout, on_done=sample)
    time.sleep(args.settle)
    after = rss_bytes(process)
    series.sort()
    start_at = min(args.growth_from, args.memory_requests)
    origin = min((point for point in series if point[0] >= start_at), default=series[0])
    last = series[-1]
    growth = (last[1] - origin[1]) / 2**20
    return {"requests": args.memory_requests, "errors": tally.error_count,
            "error_samples": tally.errors, "wall_s": wall, "series": series,
            "before_mb": series[0][1] / 2**20, "after_mb": after / 2**20,
            "peak_mb": max(value for _, value in series) / 2**20,
            "growth_from": origin[0], "growth_to": last[0], "growth_mb": growth,
            "bound_mb": args.max_growth_mb, "within_bound": growth <= args.max_growth_mb}


def png_bytes(size: int, rng: random.Random) -> bytes:
    from PIL import Image

    pixels = np.frombuffer(rng.randbytes(size * size * 3), np.uint8).reshape(size, size, 3)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


FUZZ_CONTENT_TYPES = ["application/json", "application/json; charset=latin-1", "text/plain", "",
                      "application/x-www-form-urlencoded", "image/png", "multipart/form-data",
                      "multipart/form-data; boundary=", "multipart/form-data; boundary=xyz",
                      "multipart/mixed; boundary=\"", "*/*", "application/json;;;"]
FUZZ_ACCEPTS = [None, "image/png", "*/*", "text/html", "", "image/png;q=0.1, application/json"]
FUZZ_BYTES = b'0123456789[],.-e "\t\ntfnul{}:\x00\xff'


def fuzz_case(rng: random.Random, valid: bytes, png: bytes) -> tuple[str, dict]:
    """One odd request, as (kind, keyword arguments for requests.post)."""
    kind = rng.choice(["corrupted json", "content type", "multipart form", "raw multipart",
                       "random bytes"])
    headers = {}
    accept = rng.choice(FUZZ_ACCEPTS)
    if accept is not None:
        headers["Accept"] = accept
    if kind == "corrupted json":
        body = bytearray(valid)
        for _ in range(rng.randint(1, 3)):
            where = rng.randrange(len(body))
            action = rng.choice(["insert", "delete", "replace"])
            if action == "insert":
                body[where:where] = bytes([rng.choice(FUZZ_BYTES)])
            elif action == "delete":
                del body[where]
            else:
                body[where] = rng.choice(FUZZ_BYTES)
        return kind, {"data": bytes(body), "headers": {**headers, **JSON_HEADERS}}
    if kind == "content type":
        body = rng.choice([valid, png, b"", b"{}"])
        return kind, {"data": body, "headers": {**headers,
                                                "Content-Type": rng.choice(FUZZ_CONTENT_TYPES)}}
    if kind == "multipart form":
        name = rng.choice(["file", "image", "", "file[]", "upload"])
        filename = rng.choice(["tile.png", "", "../x.png", "é.png", "x" * 300])
        payload = rng.choice([png, png[:rng.randrange(1, len(png))], b"", rng.randbytes(40)])
        return kind, {"files": {name: (filename, payload)}, "headers": headers}
    if kind == "raw multipart":
        part = (b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\n"
                + png + b"\r\n--xyz--\r\n")
        body = part[:rng.randrange(len(part) + 1)]
        return kind, {"data": body, "headers": {
            **headers, "Content-Type": rng.choice(["multipart/form-data; boundary=xyz",
                                                   "multipart/form-data; boundary=abc"])}}
    return kind, {"data": rng.randbytes(rng.randrange(64)),
                  "headers": {**headers, "Content-Type": rng.choice(FUZZ_CONTENT_TYPES)}}


def fuzz_phase(base: str, args) -> dict:
    rng = random.Random(args.seed)
    valid = orjson.dumps({"image": np.full((8, 8, 3), 120, np.uint8)},
                         option=orjson.OPT_SERIALIZE_NUMPY)
    png = png_bytes(8, rng)
    statuses, kinds, problems = {}, {}, []
    with requests.Session() as session:
        for _ in range(args.fuzz):
            kind, kwargs = fuzz_case(rng, valid, png)
            kinds[kind] = kinds.get(kind, 0) + 1
            try:
                answer = session.post(f"{base}/inference", timeout=args.timeout, **kwargs)
            except requests.RequestException as error:
                problems.append(f"{kind}: {type(error).__name__}: {error}")
                continue
            statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
            if answer.status_code >= 500:
                problems.append(f"{kind}: status {answer.status_code}: {answer.text[:200]}")
            elif answer.status_code >= 400 and not _is_json_error(answer):
                problems.append(f"{kind}: a {answer.status_code} without a JSON error")
    healthy = _healthy(base, args.timeout)
    if not healthy:
        problems.append("/health does not answer after the fuzz")
    return {"requests": args.fuzz, "statuses": dict(sorted(statuses.items())),
            "kinds": dict(sorted(kinds.items())), "problems": problems[:MAX_ERRORS_KEPT],
            "problem_count": len(problems), "healthy_after": healthy}


def _is_json_error(answer: requests.Response) -> bool:
    try:
        return bool(orjson.loads(answer.content)["error"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return False


def _healthy(base: str, timeout: float) -> bool:
    try:
        return requests.get(f"{base}/health", timeout=timeout).status_code == 200
    except requests.RequestException:
        return False


# -- the report ------------------------------------------------------------------------------------

def markdown(run: dict) -> str:
    lat, mem, fuzz = run["latency"], run.get("memory"), run.get("fuzz")
    load_start, load_end = run["loadavg_start"], run["loadavg_end"]
    cpus = run["cpus"]
    busy = max(load_start[0], load_end[0]) > 0.5 * cpus
    lines = [
        "# /inference under load", "",
        f"Verdict: **{'PASS' if run['passed'] else 'FAIL'}**"
        + ("" if run["passed"] else f" ({'; '.join(run['failures'])})"), "",
        f"- Server: {run['url']} (PID {run['pid']}; model `{run['model']}`), "
        "loopback only", f"- Started {run['started']}, took {run['took_s']:.0f} s; "
        f"`python -m bench.load {run['argv']}`",
        f"- Machine: {cpus} CPUs, {platform.machine()}, Python {platform.python_version()}; "
        f"load average (1, 5, 15 min) at start {_triple(load_start)}, at end {_triple(load_end)}",
    ]
    if busy:
        lines.append(f"- **Other work was running** (load average above half of the {cpus} "
                     "CPUs): latencies and throughput are slower and noisier than on an idle "
                     "machine; compare them only with runs under the same load.")
    lines += [
        "", f"## Latency and throughput: {run['clients']} clients x {run['per_client']} "
        f"requests, JSON {run['size']} x {run['size']}", "",
        f"Each request carries a {run['body_mb']:.2f} MB body. Latency is measured at the "
        "client, from sending to the whole answer read; throughput is answered requests over "
        "the phase's wall time.", "",
        "| requests | errors | p50 ms | p95 ms | max ms | mean ms | requests/s | wall s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {lat['requests']} | {lat['errors']} | {lat['p50_ms']:.1f} | {lat['p95_ms']:.1f} | "
        f"{lat['max_ms']:.1f} | {lat['mean_ms']:.1f} | {lat['throughput_per_s']:.2f} | "
        f"{lat['wall_s']:.1f} |",
    ]
    lines += _error_lines(lat["error_samples"], lat["errors"])
    if mem:
        growth_pct = 100 * mem["growth_mb"] / max(_mb_at(mem, mem["growth_from"]), 1e-9)
        lines += [
            "", f"## Server memory over {mem['requests']} more requests", "",
            f"RSS of PID {run['pid']} and its children, sampled before, every "
            f"{run['sample_every']} requests, and after {run['settle']:g} s idle. "
            f"{mem['errors']} errors in this phase.", "",
            f"- Before: {mem['before_mb']:.1f} MB; peak sampled: {mem['peak_mb']:.1f} MB; "
            f"after: {mem['after_mb']:.1f} MB",
            f"- Growth from request {mem['growth_from']} to {mem['growth_to']}: "
            f"**{mem['growth_mb']:+.1f} MB** ({growth_pct:+.1f} %); bound "
            f"{mem['bound_mb']:g} MB: {'within' if mem['within_bound'] else 'EXCEEDED'}", "",
            "| requests done | RSS MB |", "|---:|---:|",
            *[f"| {done} | {value / 2**20:.1f} |" for done, value in mem["series"]],
            f"| after {run['settle']:g} s idle | {mem['after_mb']:.1f} |",
        ]
        lines += _error_lines(mem["error_samples"], mem["errors"])
    if fuzz:
        statuses = ", ".join(f"{code}: {count}" for code, count in fuzz["statuses"].items())
        kinds = ", ".join(f"{kind} {count}" for kind, count in fuzz["kinds"].items())
        lines += [
            "", f"## Fuzz: {fuzz['requests']} odd requests (seed {run['seed']})", "",
            f"- Kinds: {kinds}", f"- Statuses: {statuses or 'none'}",
            f"- 5xx or non-JSON errors: {fuzz['problem_count']}; /health after: "
            f"{'ok' if fuzz['healthy_after'] else 'NOT ANSWERING'}",
            "- The property-based versions (hypothesis: bodies, Content-Type/Accept/format "
            "headers, multipart forms and raw multipart bodies; never a 5xx) run in "
            "tests/test_app.py and tests/test_app_fastjson.py.",
        ]
        lines += [f"  - {problem}" for problem in fuzz["problems"]]
    return "\n".join(lines) + "\n"


def _triple(values) -> str:
    return ", ".join(f"{value:.2f}" for value in values)


def _mb_at(mem: dict, done: int) -> float:
    return next(value for count, value in mem["series"] if count == done) / 2**20


def _error_lines(samples: list[str], count: int) -> list[str]:
    if not count:
        return []
    return ["", f"Errors ({count}; the first {len(samples)}):", "",
            *[f"- {sample}" for sample in samples]]


# -- main ------------------------------------------------------------------------------------------

def run(args, argv_text: str = "") -> dict:
    base, port = loopback_base(args.url)
    try:
        health = requests.get(f"{base}/health", timeout=args.timeout).json()
    except (requests.RequestException, ValueError) as error:
        raise CannotRun(f"no server answering at {base}/health: {error}") from None
    pid = args.pid or listening_pid(port)
    if pid is None:
        raise CannotRun(f"cannot find the process listening on port {port}; pass --pid")
    try:
        process = psutil.Process(pid)
    except psutil.NoSuchProcess:
        raise CannotRun(f"no process with PID {pid}") from None

    started, began = datetime.now(timezone.utc), time.perf_counter()
    loadavg_start = os.getloadavg()
    bodies = client_bodies(args.clients, args.size, args.seed)
    answers = reference_answers(base, bodies, args.size, args.timeout)
    result = {"url": base, "pid": pid, "model": health.get("model", "?"),
              "started": started.strftime("%Y-%m-%d %H:%M:%S UTC"), "argv": argv_text,
              "cpus": os.cpu_count(), "loadavg_start": loadavg_start, "clients": args.clients,
              "per_client": args.requests, "size": args.size, "seed": args.seed,
              "body_mb": len(bodies[0]) / 2**20, "sample_every": args.sample_every,
              "settle": args.settle}
    result["latency"] = latency_phase(base, bodies, answers, args)
    if args.memory_requests:
        result["memory"] = memory_phase(base, bodies, answers, process, args)
    if args.fuzz:
        result["fuzz"] = fuzz_phase(base, args)
    result["loadavg_end"] = os.getloadavg()
    result["took_s"] = time.perf_counter() - began

    failures = []
    errors = result["latency"]["errors"] + result.get("memory", {}).get("errors", 0)
    if errors:
        failures.append(f"{errors} failed requests")
    if "memory" in result and not result["memory"]["within_bound"]:
        failures.append(f"RSS grew {result['memory']['growth_mb']:.1f} MB "
                        f"(bound {args.max_growth_mb:g} MB)")
    if result.get("fuzz", {}).get("problem_count"):
        failures.append(f"{result['fuzz']['problem_count']} fuzz problems (5xx, non-JSON "
                        "errors, or no /health after)")
    result["failures"], result["passed"] = failures, not failures
    return result


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    try:
        result = run(args, " ".join(argv))
    except CannotRun as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # zoo.saving imports Keras
    from zoo.files import write_text_atomic

    report = markdown(result)
    write_text_atomic(args.out, report)
    lat = result["latency"]
    print(f"{lat['requests']} requests: p50 {lat['p50_ms']:.1f} ms, p95 {lat['p95_ms']:.1f} ms, "
          f"max {lat['max_ms']:.1f} ms, {lat['throughput_per_s']:.2f} requests/s, "
          f"{lat['errors']} errors")
    if "memory" in result:
        mem = result["memory"]
        print(f"RSS growth from request {mem['growth_from']} to {mem['growth_to']}: "
              f"{mem['growth_mb']:+.1f} MB (bound {mem['bound_mb']:g} MB)")
    print(f"{'PASS' if result['passed'] else 'FAIL: ' + '; '.join(result['failures'])}; "
          f"report: {args.out}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
