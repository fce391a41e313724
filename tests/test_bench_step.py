"""bench.step: every decoder layer of the served decoder is timed on the shapes it
meets in a step, and the report's shares add up to its own total."""

from __future__ import annotations

import json
import re

import pytest

from bench import step
from training.recipe import SERVED
from zoo import unet

pytestmark = pytest.mark.slow  # builds and trains a decoder: ~30 s


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("step")
    assert step.main(["--size", "64", "--batch", "2", "--repeats", "1", "--out", str(out)]) == 0
    return json.loads((out / "step_profile.json").read_text()), (out / "step_profile.md").read_text()


def test_every_decoder_layer_is_timed_on_its_step_shape(profiled):
    run, _ = profiled
    decoder = unet.decoder_of(unet.build(SERVED.decoder, weights=None))
    timed = {r["layer"]: r for r in run["layers"]}
    convs = [layer.name for layer in decoder.layers if type(layer).__name__ == "Conv2D"]
    assert convs and set(convs) <= set(timed)
    assert all(r["ms"] > 0 for r in run["layers"]) and run["fit_step_ms"] > 0
    full_resolution = [r for r in run["layers"] if r["layer"].startswith("dec4_s1_block")]
    assert full_resolution and all(r["input"][:3] == [2, 64, 64] for r in full_resolution)


def test_every_layer_falls_in_a_level_of_the_report_and_the_shares_add_up(profiled):
    run, page = profiled
    total = sum(r["ms"] for r in run["layers"])
    level_table = page.split("## By decoder level")[1].split("## By kind")[0]
    levels = {step.level_of(r["layer"]) for r in run["layers"]}
    assert {"dec0_s16", "dec4_s1", "logits"} <= levels and len(levels) == 6
    assert all(f"| {level} " in level_table for level in levels)
    cells = [float(ms) for ms in re.findall(r"\|\s*([\d.]+) \(\d+%\)", level_table)]
    assert sum(cells) == pytest.approx(total, abs=len(cells))  # each cell rounded to 1 ms
    assert step.level_of("dec3_s2_block_a_conv") == "dec3_s2" and step.level_of("logits") == "logits"
