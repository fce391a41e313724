"""A search killed with SIGKILL resumes without losing or repeating trials, a checkout without
weights re-runs what it cannot load, and --fresh starts over only once the data is good: each
a real `python -m ablations.run` subprocess on the smoke budget (a killed cross-validated
search: tests/test_cv.py). Apart from test_ablations.py so
that a parallel run (pytest-xdist, one file per worker) spreads the slow studies."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from test_ablations import REPO, _defective_folder, loss_study_oracle, run_cli, weights_flag


def _records(study: Path) -> dict[str, float]:
    return {p.stem: p.stat().st_mtime_ns for p in (study / "trials").glob("*.json")}


@pytest.mark.slow
def test_killed_run_resumes_without_repeating_finished_trials_and_reruns_lost_weights(tmp_path, cache_home):
    out = tmp_path / "results"
    # Three of the four losses: enough to be killed between trials, with one fewer to re-run.
    only = ["--only", "loss=bce,dice,focal"]
    args = [
        sys.executable,
        "-m",
        "ablations.run",
        "loss",
        "--budget",
        "smoke",
        *only,
        "--out",
        str(out),
        *weights_flag(),
    ]
    env = {**os.environ, **cache_home}
    process = subprocess.Popen(
        args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    study = out / "loss-loss-bce-dice-focal"
    deadline = time.time() + 400
    while time.time() < deadline and len(_records(study) if study.exists() else {}) < 1:
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)  # mid-search, usually mid-trial
    process.wait()
    before = _records(study)
    assert 1 <= len(before) < 3, f"expected an interrupted search, found {len(before)} records"
    leftovers = [p.name for p in study.rglob("*") if ".tmp" in p.name]
    result = run_cli(
        "loss", "--budget", "smoke", *only, "--out", str(out), *weights_flag(), env_extra=cache_home
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    after = _records(study)
    assert len(after) == 3
    assert all(after[trial] == mtime for trial, mtime in before.items()), "a finished trial re-ran"
    trials = pd.read_csv(study / "trials.csv")
    assert sorted(trials["recipe_loss"]) == ["bce", "dice", "focal"]
    assert not [p for p in study.rglob("*") if ".tmp" in p.name and p.name not in leftovers]

    # A fresh checkout: git keeps a study's records and tables, not its model files. A record
    # without its weights runs again (one here, to keep the test short; each is handled
    # alike); the search state is rebuilt from the records.
    lost = sorted(study.rglob("*.weights.h5"))
    assert len(lost) == 3
    lost[0].unlink()
    for path in study.rglob("*.keras"):
        path.unlink()
    shutil.rmtree(study / "tuner")
    again = run_cli(
        "loss", "--budget", "smoke", *only, "--out", str(out), *weights_flag(), env_extra=cache_home
    )
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert again.stdout.count("weights are not here; running it again") == 1
    assert (study / "best" / "model.keras").is_file()
    runs = json.loads((study / "context.json").read_text())["runs"]
    assert [r["trials_run"] for r in runs] == [3 - len(before), 1]  # each invocation's cost is kept
    assert f"{runs[0]['wall_minutes']} min wall" in (study / "table.md").read_text()


@pytest.mark.slow
def test_fresh_starts_over_but_only_once_the_data_is_good(tmp_path, cache_home):
    # One trial of one study is enough: what matters is when the folder is emptied.
    stale = tmp_path / "results" / "loss-loss-bce" / "trials" / "98.json"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")
    defective = _defective_folder(tmp_path / "bad")
    study = ["loss", "--budget", "smoke", "--only", "loss=bce", "--out", str(tmp_path / "results"), "--fresh"]
    result = run_cli(*study, "--data", str(defective), *weights_flag(), env_extra=cache_home)
    assert result.returncode != 0
    assert stale.exists(), "--fresh deleted results before the data was checked"
    result = run_cli(*study, *weights_flag(), env_extra=cache_home)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not stale.exists()
    assert pd.read_csv(stale.parent.parent / "trials.csv")["recipe_loss"].tolist() == ["bce"]


def test_a_save_cut_short_leaves_the_oracles_last_whole_state_to_resume_from(tmp_path, monkeypatch):
    # KerasTuner writes oracle.json and trial.json in place: a kill mid-write left an empty
    # oracle.json that no rerun could reload. Ours write a whole file or none.
    import keras_tuner

    from ablations import oracles, studies

    first = loss_study_oracle(tmp_path)
    finished = first.create_trial("tuner0")
    first.update_trial(finished.trial_id, {"score": 0.5})
    finished.status = "COMPLETED"
    first.end_trial(finished)
    project = tmp_path / "tuner"
    saved = {path: path.read_text() for path in project.rglob("*.json")}

    def killed(_fd):  # the bytes are written, the rename has not happened
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", killed)
    with pytest.raises(KeyboardInterrupt):
        first.create_trial("tuner0")  # writes the new trial's file, then the oracle's state
    monkeypatch.undo()
    assert {path: path.read_text() for path in project.rglob("*.json")} == saved
    assert not [
        p.name for p in project.rglob("*") if p.is_file() and p.name.startswith(".")
    ]  # no temp files left
    reloaded = loss_study_oracle(tmp_path)
    reloaded.reload()
    assert reloaded.trials[finished.trial_id].status == "COMPLETED"
    assert reloaded.create_trial("tuner0").status == "RUNNING"  # the search goes on
    assert isinstance(
        oracles.make_oracle(studies.STUDIES["hparams"], keras_tuner.HyperParameters(), 2, 0),
        oracles.AtomicSaves,
    )
