"""`python -m bench.scaling`: each point measured in its own process, composed, resumable."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import scaling

REPO = Path(__file__).resolve().parents[1]


def run_scaling(*args, env_extra=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench.scaling", *args],
        cwd=REPO,
        env={**os.environ, **(env_extra or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    out = tmp_path_factory.mktemp("scaling")
    cache = {"XDG_CACHE_HOME": str(tmp_path_factory.mktemp("xdg"))}
    first = run_scaling("--budget", "smoke", "--points", "24x64", "--out", str(out), env_extra=cache)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    again = run_scaling("--budget", "smoke", "--points", "24x64", "--out", str(out), env_extra=cache)
    return out, first, again


def test_a_point_is_measured_in_its_own_process_and_reported(measured):
    out, _, _ = measured
    report = json.loads((out / "scaling.json").read_text())
    (point,) = report["points"]
    assert point["images"] == 24 and point["size"] == 64
    assert sum(point["counts"].values()) == 24
    for part in ("load_s", "encode_s", "first_epoch_s", "steady_epoch_s", "score_s", "peak_rss_gib"):
        assert point[part] > 0, part
    assert (out / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert re.search(r"\|\s+24\s+\|\s+64\s+\|", (out / "scaling.md").read_text())


def test_a_rerun_keeps_finished_points(measured):
    out, first, again = measured
    assert again.returncode == 0
    assert "24x64: measured before, kept" in again.stdout
    assert "measuring" not in again.stdout


def test_study_cost_is_composed_from_the_measured_parts():
    point = {
        "load_s": 60,
        "encode_s": 120,
        "first_epoch_s": 50,
        "steady_epoch_s": 40,
        "score_s": 10,
        "epochs": 4,
        "trials": 16,
    }
    assert scaling.composed_study_minutes(point) == pytest.approx((60 + 120 + 16 * (50 + 3 * 40 + 10)) / 60)


@pytest.mark.parametrize("text", ["500", "10x256", "500x250", "axb"])
def test_a_bad_point_is_refused_with_its_text(text):
    with pytest.raises(SystemExit, match=text):
        scaling.parse_point(text)
