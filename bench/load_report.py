"""The markdown report of `python -m bench.load` and the lines it prints: the verdict, the
machine and its load, latency and throughput, server memory over the run, and the fuzz."""

from __future__ import annotations

import platform
from pathlib import Path


def markdown(run: dict) -> str:
    lines = _header_lines(run) + _latency_lines(run)
    if run.get("memory"):
        lines += _memory_lines(run)
    if run.get("fuzz"):
        lines += _fuzz_lines(run)
    return "\n".join(lines) + "\n"


def _header_lines(run: dict) -> list[str]:
    load_start, load_end = run["loadavg_start"], run["loadavg_end"]
    cpus = run["cpus"]
    lines = [
        "# /inference under load",
        "",
        f"Verdict: **{'PASS' if run['passed'] else 'FAIL'}**"
        + ("" if run["passed"] else f" ({'; '.join(run['failures'])})"),
        "",
        f"- Server: {run['url']} (PID {run['pid']}; model `{run['model']}`), loopback only",
        f"- Started {run['started']}, took {run['took_s']:.0f} s; `python -m bench.load {run['argv']}`",
        f"- Machine: {cpus} CPUs, {platform.machine()}, Python {platform.python_version()}; "
        f"load average (1, 5, 15 min) at start {_triple(load_start)}, at end {_triple(load_end)}",
    ]
    if max(load_start[0], load_end[0]) > 0.5 * cpus:
        lines.append(
            f"- **Other work was running** (load average above half of the {cpus} "
            "CPUs): latencies and throughput are slower and noisier than on an idle "
            "machine; compare them only with runs under the same load."
        )
    return lines


def _latency_lines(run: dict) -> list[str]:
    lat = run["latency"]
    return [
        "",
        f"## Latency and throughput: {run['clients']} clients x {run['per_client']} "
        f"requests, JSON {run['size']} x {run['size']}",
        "",
        f"Each request carries a {run['body_mb']:.2f} MB body. Latency is measured at the "
        "client, from sending to the whole answer read; throughput is answered requests over "
        "the phase's wall time.",
        "",
        "| requests | errors | p50 ms | p95 ms | max ms | mean ms | requests/s | wall s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {lat['requests']} | {lat['errors']} | {lat['p50_ms']:.1f} | {lat['p95_ms']:.1f} | "
        f"{lat['max_ms']:.1f} | {lat['mean_ms']:.1f} | {lat['throughput_per_s']:.2f} | "
        f"{lat['wall_s']:.1f} |",
    ] + _error_lines(lat["error_samples"], lat["errors"])


def _memory_lines(run: dict) -> list[str]:
    mem = run["memory"]
    growth_pct = 100 * mem["growth_mb"] / max(_mb_at(mem, mem["growth_from"]), 1e-9)
    return [
        "",
        f"## Server memory over {mem['requests']} more requests",
        "",
        f"RSS of PID {run['pid']} and its children, sampled before, every "
        f"{run['sample_every']} requests, and after {run['settle']:g} s idle. "
        f"{mem['errors']} errors in this phase.",
        "",
        f"- Before: {mem['before_mb']:.1f} MB; peak sampled: {mem['peak_mb']:.1f} MB; "
        f"after: {mem['after_mb']:.1f} MB",
        f"- Growth from request {mem['growth_from']} to {mem['growth_to']}: "
        f"**{mem['growth_mb']:+.1f} MB** ({growth_pct:+.1f} %); bound "
        f"{mem['bound_mb']:g} MB: {'within' if mem['within_bound'] else 'EXCEEDED'}",
        "",
        "| requests done | RSS MB |",
        "|---:|---:|",
        *[f"| {done} | {value / 2**20:.1f} |" for done, value in mem["series"]],
        f"| after {run['settle']:g} s idle | {mem['after_mb']:.1f} |",
    ] + _error_lines(mem["error_samples"], mem["errors"])


def _fuzz_lines(run: dict) -> list[str]:
    fuzz = run["fuzz"]
    statuses = ", ".join(f"{code}: {count}" for code, count in fuzz["statuses"].items())
    kinds = ", ".join(f"{kind} {count}" for kind, count in fuzz["kinds"].items())
    return [
        "",
        f"## Fuzz: {fuzz['requests']} odd requests (seed {run['seed']})",
        "",
        f"- Kinds: {kinds}",
        f"- Statuses: {statuses or 'none'}",
        f"- 5xx or non-JSON errors: {fuzz['problem_count']}; /health after: "
        f"{'ok' if fuzz['healthy_after'] else 'NOT ANSWERING'}",
        "- The property-based versions (hypothesis: bodies, Content-Type/Accept/format "
        "headers, multipart forms and raw multipart bodies; never a 5xx) run in "
        "tests/test_app.py and tests/test_app_fastjson.py.",
        *[f"  - {problem}" for problem in fuzz["problems"]],
    ]


def _triple(values) -> str:
    return ", ".join(f"{value:.2f}" for value in values)


def _mb_at(mem: dict, done: int) -> float:
    return next(value for count, value in mem["series"] if count == done) / 2**20


def _error_lines(samples: list[str], count: int) -> list[str]:
    if not count:
        return []
    return ["", f"Errors ({count}; the first {len(samples)}):", "", *[f"- {sample}" for sample in samples]]


def summary(result: dict, out: Path) -> str:
    """The lines `main` prints: latency, memory growth, the verdict and where the report is."""
    lat = result["latency"]
    lines = [
        f"{lat['requests']} requests: p50 {lat['p50_ms']:.1f} ms, p95 {lat['p95_ms']:.1f} ms, "
        f"max {lat['max_ms']:.1f} ms, {lat['throughput_per_s']:.2f} requests/s, "
        f"{lat['errors']} errors"
    ]
    if "memory" in result:
        mem = result["memory"]
        lines.append(
            f"RSS growth from request {mem['growth_from']} to {mem['growth_to']}: "
            f"{mem['growth_mb']:+.1f} MB (bound {mem['bound_mb']:g} MB)"
        )
    lines.append(f"{'PASS' if result['passed'] else 'FAIL: ' + '; '.join(result['failures'])}; report: {out}")
    return "\n".join(lines)
