"""bench.quantize's rule: an integer model is served by default only when it loses under
0.005 building IoU over the held-out cities and is at least 1.5x faster, in wall and CPU time;
and which operations `int8-decoder` keeps in float."""

from __future__ import annotations

import pytest

from bench import quantize_report

FLOAT_IOU = {"a": 0.60, "b": 0.40}


def scores(iou: float) -> dict:
    return {"building_iou": iou, "building_f1": 0.5, "pixels_changed": 0.01}


def run(losses: dict, scene_seconds: dict) -> dict:
    folds = [
        {"city": city, "tiles": 10, "keras_building_iou": iou, "float": scores(iou)}
        | {name: scores(iou - loss) for name, loss in losses.items()}
        for city, iou in FLOAT_IOU.items()
    ]
    timing = {name: [(seconds, seconds * 2)] * 3 for name, seconds in scene_seconds.items()}
    return {
        "command": "python -m bench.quantize",
        "machine": "2 cores",
        "date": "today",
        "other_work": "Other work: none.",
        "folds_dir": "results/final/folds/seed0",
        "model": "results/final/model.keras",
        "calibration_tiles": 100,
        "variants": list(losses),
        "served": {"scales": [1.0, 0.5], "tta": "none", "threshold": 0.5},
        "min_m2": 4.0,
        "folds": folds,
        "speed": {"tile_512": timing, "scene_2048": timing, "scene": "somewhere"},
    }


@pytest.mark.parametrize(
    "loss, seconds, served",
    [(0.002, 1.0, True), (0.006, 1.0, False), (0.002, 1.6, False), (-0.001, 1.3, True)],
)
def test_served_only_under_the_loss_and_over_the_speed_up(loss, seconds, served):
    measured = run({"int8": loss}, {"float": 2.0, "int8": seconds})
    verdict = quantize_report.verdicts(measured)["int8"]
    assert verdict["serve"] is served and verdict["loss"] == pytest.approx(loss)
    text = quantize_report.report(measured)
    assert ("**served by default**" in text) is served
    assert ("The float LiteRT model stays the default" in text) is not served


def test_the_report_has_a_column_per_variant():
    text = quantize_report.report(
        run({"int8": 0.01, "int8-decoder": 0.0}, {"float": 2, "int8": 1, "int8-decoder": 1.5})
    )
    assert "| a | 10 | 0.6000 | 0.6000 | 0.5900 (-0.0100) | 0.6000 (+0.0000) |" in text
    assert "int8 **+0.0100**, int8-decoder **+0.0000**" in text


def test_int8_decoder_keeps_the_encoder_and_the_input_in_float():
    from bench.quantize import VARIANTS

    keep_float = VARIANTS["int8-decoder"]
    assert keep_float("tfl.quantize") and keep_float("unet_x/preprocess_1/mul")
    assert keep_float("unet_x/encoder_1/block_1_expand/Conv2D")
    assert not keep_float("unet_x/decoder_1/logits_1/Add") and not keep_float("StatefulPartitionedCall_1:0")
    assert VARIANTS["int8"] is None
