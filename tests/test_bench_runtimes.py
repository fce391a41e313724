"""ablations.bench.runtimes' report says how much work a request is: every scale in every
test-time view goes through the network, so a 4-view model is 4 images a request."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from ablations.bench import runtimes

RECORDED = Path(__file__).resolve().parents[1] / "results" / "bench_runtimes.json"


@pytest.mark.parametrize("scales, tta, images", [([1.0], "none", 1), ([1.0], "flips", 4),
                                                 ([1.0, 0.5, 0.25], "flips", 12),
                                                 ([1.0, 0.5], "dihedral", 16)])
def test_the_section_counts_scales_times_views(scales, tta, images):
    if not RECORDED.is_file():
        pytest.skip("no recorded runtimes bench in results/")
    run = copy.deepcopy(json.loads(RECORDED.read_text()))
    run.update(scales=scales, tta=tta)
    section = runtimes.section(run)
    noun = "image" if images == 1 else "images"
    assert f"test-time views `{tta}`: {images} {noun} through the network a request" in section
    assert runtimes.section_of(runtimes.replace_section("# Benchmark\n\nkept\n", section)).strip() == section.strip()


def test_an_override_of_the_views_has_its_own_section_beside_the_models():
    if not RECORDED.is_file():
        pytest.skip("no recorded runtimes bench in results/")
    run = json.loads(RECORDED.read_text())
    models = runtimes.section({**run, "tta_override": None})
    override = runtimes.section({**run, "tta": "none", "tta_override": "none"})
    assert override.startswith(f"{runtimes.SECTION}, --tta none\n")
    assert "test-time views `none`: 1 image through the network a request" in override
    report = runtimes.replace_section(runtimes.replace_section("# Benchmark\n", models), override)
    again = runtimes.replace_section(report, override.replace("CPU only", "CPU only, again"))
    assert again.count(f"{runtimes.SECTION}\n") == 1 and again.count(f"{runtimes.SECTION}, --tta none\n") == 1
    assert "again" in again and models.strip() in again
    assert runtimes.section_of(again).count("## ") == 2
