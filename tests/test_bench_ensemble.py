"""`python -m ablations.bench.ensemble`: one row per number of heads and side, written atomically."""
from __future__ import annotations

import json

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
    served = ensemble.head_config()  # the served model's decoder, wherever results/MODEL points
    assert f"architecture `{served.name}` per head" in table
    assert "Other work on the machine" in table


def test_the_ensemble_bench_times_a_named_decoder_and_refuses_a_missing_one(tmp_path, capsys):
    from ablations.bench import ensemble

    named = tmp_path / "model.json"
    named.write_text(json.dumps({"config": DecoderConfig(upsampler="bilinear", skip="add", width=0.25).to_dict()}))
    assert ensemble.head_config(named).name == "bilinear-add-double-w0.25"
    assert ensemble.main(["--config-from", str(tmp_path / "missing.json"), "--out", str(tmp_path)]) == 2
    assert "missing.json is not a file" in capsys.readouterr().err
    named.write_text("{}")
    assert ensemble.main(["--config-from", str(named), "--out", str(tmp_path)]) == 2
    assert "names no decoder config" in capsys.readouterr().err and not (tmp_path / "ensemble.md").exists()
