"""`python -m ablations.bench.ensemble`: one row per number of heads and side, written atomically."""
from __future__ import annotations

import json
from pathlib import Path

from zoo.config import DecoderConfig


def test_the_ensemble_bench_measures_every_head_count_and_side(tmp_path):
    from ablations.bench import ensemble

    assert ensemble.main(["--heads", "1,2", "--sides", "64,96", "--tta", "none,flips", "--repeats", "2",
                          "--weights", "none", "--out", str(tmp_path)]) == 0
    rows = [r for r in json.loads((tmp_path / "ensemble.json").read_text())["rows"] if r["tta"] == "none"]
    assert [(r["heads"], r["side"]) for r in rows] == [(1, 64), (1, 96), (2, 64), (2, 96)]
    assert all(r["p95_ms"] >= r["p50_ms"] > 0 for r in rows)
    flips = [r for r in json.loads((tmp_path / "ensemble.json").read_text())["rows"] if r["tta"] == "flips"]
    assert len(flips) == 4
    single, double = rows[0]["decoder_params"], rows[2]["decoder_params"]
    assert double == 2 * single  # two full decoders, one encoder
    table = (tmp_path / "ensemble.md").read_text()
    assert "| 1       | flips" in table and "1.00x" in table
    served = json.loads((Path(__file__).resolve().parents[1] / "results" / "final" / "model.json").read_text())
    assert f"architecture `{DecoderConfig.from_dict(served['config']).name}` per head" in table  # what is served
    assert "Other work on the machine" in table
