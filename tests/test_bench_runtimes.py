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
    assert f"test-time views `{tta}`: {images} images through the network a request" in section
    assert runtimes.section_of(runtimes.replace_section("# Benchmark\n\nkept\n", section)).strip() == section.strip()
