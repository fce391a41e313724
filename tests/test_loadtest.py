"""`python -m bench.load` against the session's server, with small numbers."""

from __future__ import annotations

import dataclasses
import random
import re

import psutil
import pytest

from bench import clients, fuzz, load
from bench.server import free_port


def test_load_test_passes_and_reports(app_server, run_module, tmp_path):
    out = tmp_path / "reports" / "load.md"
    done = run_module(
        "bench.load",
        "--url",
        app_server,
        "--clients",
        2,
        "--requests",
        10,
        "--memory-requests",
        50,
        "--sample-every",
        10,
        "--growth-from",
        10,
        "--max-growth-mb",
        256,
        "--fuzz",
        30,
        "--settle",
        0.2,
        "--out",
        out,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS" in done.stdout and "20 requests: p50" in done.stdout
    report = out.read_text()
    assert "Verdict: **PASS**" in report
    assert "2 clients x 10 requests, JSON 256 x 256" in report
    row = re.search(
        r"^\| 20 \| 0 \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", report, re.MULTILINE
    )
    assert row, report
    p50, p95, top, _, throughput = map(float, row.groups())
    assert 0 < p50 <= p95 <= top and throughput > 0
    assert re.search(
        r"load average \(1, 5, 15 min\) at start [\d.]+, [\d.]+, [\d.]+, "
        r"at end [\d.]+",
        report,
    )
    # RSS before, at every 10th request, after; growth from request 10 to 50 within the bound.
    for done_requests in (0, 10, 20, 30, 40, 50):
        assert re.search(rf"^\| {done_requests} \| [\d.]+ \|$", report, re.MULTILINE), report
    assert re.search(r"Growth from request 10 to 50: \*\*[+-][\d.]+ MB\*\* .*: within", report)
    # The PID found from the port is the server's.
    pid = int(re.search(r"\(PID (\d+);", report).group(1))
    assert "app" in psutil.Process(pid).cmdline()
    assert re.search(r"Fuzz: 30 odd requests", report) and "5xx or non-JSON errors: 0" in report
    assert not list(out.parent.glob(".load.md.*"))  # written atomically: no temporary left


def test_memory_bound_failure_exits_1_and_says_so(app_server, run_module, tmp_path):
    out = tmp_path / "load.md"
    done = run_module(
        "bench.load",
        "--url",
        app_server,
        "--clients",
        1,
        "--requests",
        2,
        "--memory-requests",
        4,
        "--sample-every",
        2,
        "--growth-from",
        2,
        "--max-growth-mb",
        -1e9,
        "--fuzz",
        0,
        "--settle",
        0,
        "--size",
        32,
        "--out",
        out,
        timeout=300,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL" in done.stdout
    assert "Verdict: **FAIL** (RSS grew" in out.read_text()
    assert "EXCEEDED" in out.read_text()


@pytest.mark.parametrize("url", ["http://10.1.2.3:8000", "https://127.0.0.1:8000", "http://example.com"])
def test_only_loopback_urls_are_loaded(url, run_module, tmp_path):
    done = run_module("bench.load", "--url", url, "--out", tmp_path / "load.md", timeout=60)
    assert done.returncode == 2 and "loopback" in done.stderr
    assert not (tmp_path / "load.md").exists()


def test_no_server_exits_2(run_module, tmp_path):
    done = run_module(
        "bench.load", "--url", f"http://127.0.0.1:{free_port()}", "--out", tmp_path / "load.md", timeout=60
    )
    assert done.returncode == 2 and "no server answering" in done.stderr


def test_split_evenly():
    assert clients.split_evenly(10, 4) == [3, 3, 2, 2]
    assert sum(clients.split_evenly(1000, 3)) == 1000


def test_the_flags_and_the_frozen_load_test_agree():
    # main builds a LoadTest from every flag but --out: the names and the defaults must match.
    args = vars(load.parse_args(["--url", "http://127.0.0.1:8000"]))
    del args["out"]
    assert load.LoadTest(**args) == load.LoadTest(url="http://127.0.0.1:8000")
    with pytest.raises(dataclasses.FrozenInstanceError):
        load.LoadTest(url="x").clients = 3


def test_the_fuzz_is_seeded_and_covers_every_kind():
    def cases(seed):
        rng = random.Random(seed)
        png = fuzz.png_bytes(8, rng)
        return [fuzz.fuzz_case(rng, b'{"image": [[[0, 0, 0]]]}', png) for _ in range(60)]

    first = cases(0)
    assert first == cases(0) and first != cases(1)
    assert {kind for kind, _ in first} == set(fuzz.KINDS)
