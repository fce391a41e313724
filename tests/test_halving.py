"""Successive halving (`ablations.run STUDY --cv areas --halving KEEP`): the cut, and that a
survivor ends exactly where a full run of its configuration ends. The runs are real
subprocesses on the smoke budget; the ranking is checked in process."""
from __future__ import annotations

import json
import types

import pandas as pd
import pytest

from test_ablations import cache_home, run_cli, weights_flag  # noqa: F401  (cache_home: a fixture)

GRID = ["--only", "upsampler=bilinear,nearest", "--only", "skip=concat"]


@pytest.fixture(scope="module")
def halving_run(tmp_path_factory, cache_home):
    out = tmp_path_factory.mktemp("halving")
    halved = run_cli("decoder_variants", "--budget", "smoke", "--cv", "areas", "--halving", "1", *GRID,
                     "--out", str(out / "halved"), *weights_flag(), env_extra=cache_home)
    assert halved.returncode == 0, halved.stdout[-3000:] + halved.stderr[-3000:]
    study = out / "halved" / "decoder_variants-skip-concat-upsampler-bilinear-nearest"
    survivor = next(json.loads(p.read_text()) for p in (study / "trials").glob("*.json")
                    if json.loads(p.read_text()).get("halving", {}).get("rung") == 1)
    # The full run, on the smaller grid of the survivor's configuration alone.
    full = run_cli("decoder_variants", "--budget", "smoke", "--cv", "areas", "--only",
                   f"upsampler={survivor['config']['upsampler']}", "--only", "skip=concat",
                   "--out", str(out / "full"), *weights_flag(), env_extra=cache_home)
    assert full.returncode == 0, full.stdout[-3000:] + full.stderr[-3000:]
    full_record = json.loads(next((out / "full").glob("decoder_variants-*/trials/0.json")).read_text())
    return study, survivor, full_record


def test_every_configuration_trains_one_epoch_and_only_the_best_continues(halving_run):
    study, survivor, _ = halving_run
    trials = pd.read_csv(study / "trials.csv")
    assert sorted(trials["rung"]) == [0, 0, 1]
    first = trials[trials["rung"] == 0].sort_values("val_building_iou", ascending=False)
    assert survivor["halving"]["parent"] == str(first["trial_id"].iloc[0])
    assert first["building_iou"].isna().all()  # a cut trial is never scored on the test split
    assert all(len(values) == 2 for values in survivor["history"].values())  # the smoke budget's 2 epochs
    table = (study / "table.md").read_text()
    section = table.split("## Successive halving")[1]
    assert section.count("| cut ") == 1  # the one configuration cut
    assert "Trial-epochs trained: 3 of the full grid's 4" in table
    assert table.count("**(selected)**") == 1 and survivor["variant"] in table.split("## Successive")[0]


def test_a_survivor_ends_where_a_full_run_of_its_configuration_ends(halving_run):
    _, survivor, full = halving_run
    assert survivor["history"] == full["history"]
    for key in ("val_building_iou", "building_iou", "precision", "recall"):
        assert survivor["metrics"][key] == pytest.approx(full["metrics"][key], abs=1e-6), key


def _trial(trial_id, score, **values):
    return types.SimpleNamespace(trial_id=trial_id, score=score,
                                 hyperparameters=types.SimpleNamespace(values={**values, "tuner/rung": 0}))


def test_the_cut_ranks_configurations_by_their_mean_over_seeds():
    from ablations.search import survivors

    trials = [_trial("0", 0.50, upsampler="a", seed=0), _trial("1", 0.10, upsampler="a", seed=1),
              _trial("2", 0.35, upsampler="b", seed=0), _trial("3", 0.34, upsampler="b", seed=1),
              _trial("4", None, upsampler="c", seed=0), _trial("5", 0.40, upsampler="c", seed=1)]
    # a: mean 0.30, b: 0.345, c: its failed seed scores nothing, so 0.40 alone.
    assert [t.trial_id for t in survivors(trials, 1)] == ["5"]
    assert [t.trial_id for t in survivors(trials, 2)] == ["5", "2", "3"]


def test_halving_needs_cross_validation_and_a_grid(in_process):
    from ablations.run import main

    status, _, stderr = in_process(main, "decoder_variants", "--budget", "smoke", "--halving", "2")
    assert status == 2 and "--cv areas" in stderr
    status, _, stderr = in_process(main, "hparams", "--budget", "smoke", "--cv", "areas", "--halving", "2")
    assert status == 2 and "grid" in stderr
