"""Cross-validation by area in the studies (successive halving included) and study folders bound to
what made them, each run as a real subprocess on the smoke budget (synthetic scenes, three areas). The
refusals, which stop before any training, call the same command's `main` in this process:
a subprocess would add ~8 s of imports each (tests/test_ablations.py runs refusals as
subprocesses, where what the user sees on stderr is the point)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pandas as pd
import pytest
from test_ablations import REPO, run_cli, weights_flag


def _records(study: Path) -> dict[str, int]:
    return {p.stem: p.stat().st_mtime_ns for p in (study / "trials").glob("*.json")}


@pytest.fixture(scope="module")
def killed_cv_run(tmp_path_factory, cache_home):
    """A cross-validated search killed with SIGKILL after its first trial, then resumed to the
    end: what the resume kept, and the finished study the other tests read."""
    out = tmp_path_factory.mktemp("cv")
    args = [
        "loss",
        "--budget",
        "smoke",
        "--cv",
        "areas",
        "--only",
        "loss=bce,dice",
        "--out",
        str(out),
        *weights_flag(),
    ]
    process = subprocess.Popen(
        [sys.executable, "-m", "ablations.run", *args],
        cwd=REPO,
        env={**os.environ, **cache_home},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    study = out / "loss-loss-bce-dice"
    deadline = time.time() + 600
    while time.time() < deadline and len(_records(study) if study.exists() else {}) < 1:
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)  # a trial is all its folds: killed inside the next one
    process.wait()
    before = _records(study)
    result = run_cli(*args, env_extra=cache_home)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, study, before


@pytest.fixture(scope="module")
def cv_run(killed_cv_run):
    out, study, _ = killed_cv_run
    return out, study


def test_a_killed_cross_validated_search_resumes_without_losing_or_repeating_trials(killed_cv_run):
    _, study, before = killed_cv_run
    assert len(before) == 1, f"expected an interrupted search, found {len(before)} records"
    after = _records(study)
    assert len(after) == 2 and all(after[t] == mtime for t, mtime in before.items()), (
        "a finished trial re-ran"
    )
    trials = pd.read_csv(study / "trials.csv")
    assert sorted(trials["recipe_loss"]) == ["bce", "dice"]
    assert trials.filter(regex=r"^fold_.*_val_building_iou$").notna().all().all()  # every fold of every trial


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_every_trial_is_scored_on_every_fold_and_the_objective_is_their_mean(cv_run):
    _, study = cv_run
    trials = pd.read_csv(study / "trials.csv")
    context = json.loads((study / "context.json").read_text())
    test_area = context["split"].split("area ")[1].split(" ")[0]
    fold_columns = sorted(c for c in trials if c.startswith("fold_") and c.endswith("_val_building_iou"))
    areas = [c[len("fold_") : -len("_val_building_iou")] for c in fold_columns]
    assert len(trials) == 2 and len(areas) == 2 and test_area not in areas
    assert trials["val_building_iou"].tolist() == pytest.approx(trials[fold_columns].mean(axis=1).tolist())
    assert trials["val_building_iou_fold_std"].tolist() == pytest.approx(
        trials[fold_columns].std(axis=1, ddof=0).tolist()
    )
    assert context["cv"] == "areas" and "--cv areas" in context["command"]


def test_the_table_shows_each_fold_and_the_spread(cv_run):
    _, study = cv_run
    table = (study / "table.md").read_text()
    assert "cross-validation by area" in table
    assert "val std across folds" in table
    assert table.count("| val synth_") == 0 and table.count("val synth_") == 2  # two fold columns


def test_a_run_with_another_setting_refuses_and_writes_nothing(cv_run, in_process):
    from ablations.run import main

    out, study = cv_run
    before = snapshot(out)
    status, _, stderr = in_process(
        main, "loss", "--budget", "smoke", "--only", "loss=bce,dice", "--out", out, *weights_flag()
    )  # the same study without --cv
    assert status == 2
    assert "--fresh" in stderr and "--out" in stderr and "cv 'areas' -> 'none'" in stderr
    assert snapshot(out) == before


def test_a_smoke_run_never_replaces_committed_real_data_records(tmp_path, in_process):
    """The issue's case: `ablations.run decoder_variants --budget smoke` into the folder that
    holds the committed real-data study used to overwrite its records with synthetic ones."""
    committed = REPO / "results" / "decoder_variants"
    if not (committed / "context.json").is_file():
        pytest.skip("no committed decoder_variants study in results/")
    copy = tmp_path / "decoder_variants"
    shutil.copytree(committed, copy, ignore=shutil.ignore_patterns("best", "tuner"))
    before = snapshot(tmp_path)
    from ablations.run import main

    status, _, stderr = in_process(
        main, "decoder_variants", "--budget", "smoke", "--out", tmp_path, *weights_flag()
    )
    assert status == 2, stderr
    assert "holds results of a different run" in stderr and "budget 'standard' -> 'smoke'" in stderr
    assert snapshot(tmp_path) == before


# Successive halving (`--cv areas --halving KEEP`): the cut, and that a survivor ends exactly
# where the full cross-validated run above (`cv_run`, the same two losses) ends.


@pytest.fixture(scope="module")
def halving_run(tmp_path_factory, cache_home, cv_run):
    """The halved study beside test_cv's full cross-validated run of the same two losses:
    the full run on the grid the survivor came from."""
    out = tmp_path_factory.mktemp("halving")
    halved = run_cli(
        "loss",
        "--budget",
        "smoke",
        "--cv",
        "areas",
        "--halving",
        "1",
        "--only",
        "loss=bce,dice",
        "--out",
        str(out),
        *weights_flag(),
        env_extra=cache_home,
    )
    assert halved.returncode == 0, halved.stdout[-3000:] + halved.stderr[-3000:]
    study = out / "loss-loss-bce-dice"
    survivor = next(
        json.loads(p.read_text())
        for p in (study / "trials").glob("*.json")
        if json.loads(p.read_text()).get("halving", {}).get("rung") == 1
    )
    _, full_study = cv_run
    full_record = next(
        json.loads(p.read_text())
        for p in (full_study / "trials").glob("*.json")
        if json.loads(p.read_text())["recipe"]["loss"] == survivor["recipe"]["loss"]
    )
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
    rows = [line for line in table.split("## Successive")[0].splitlines() if line.startswith("| ")][1:]
    assert len(rows) == 1 and "**(selected)**" in rows[0]  # only the survivor trained its whole schedule
    assert f"loss={survivor['recipe']['loss']} " in section  # the cut table names each configuration


def test_a_survivor_ends_where_a_full_run_of_its_configuration_ends(halving_run):
    _, survivor, full = halving_run
    assert survivor["history"] == full["history"]
    for key in ("val_building_iou", "building_iou", "precision", "recall"):
        assert survivor["metrics"][key] == pytest.approx(full["metrics"][key], abs=1e-6), key


def _trial(trial_id, score, **values):
    return types.SimpleNamespace(
        trial_id=trial_id,
        score=score,
        hyperparameters=types.SimpleNamespace(values={**values, "tuner/rung": 0}),
    )


def test_the_cut_ranks_configurations_by_their_mean_over_seeds():
    from ablations.oracles import survivors

    trials = [
        _trial("0", 0.50, upsampler="a", seed=0),
        _trial("1", 0.10, upsampler="a", seed=1),
        _trial("2", 0.35, upsampler="b", seed=0),
        _trial("3", 0.34, upsampler="b", seed=1),
        _trial("4", None, upsampler="c", seed=0),
        _trial("5", 0.40, upsampler="c", seed=1),
    ]
    # a: mean 0.30, b: 0.345, c: its failed seed scores nothing, so 0.40 alone.
    assert [t.trial_id for t in survivors(trials, 1)] == ["5"]
    assert [t.trial_id for t in survivors(trials, 2)] == ["5", "2", "3"]


def test_halving_needs_cross_validation_and_a_grid(in_process):
    from ablations.run import main

    status, _, stderr = in_process(main, "decoder_variants", "--budget", "smoke", "--halving", "2")
    assert status == 2 and "--cv areas" in stderr
    status, _, stderr = in_process(main, "hparams", "--budget", "smoke", "--cv", "areas", "--halving", "2")
    assert status == 2 and "grid" in stderr
