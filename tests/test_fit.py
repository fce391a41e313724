"""The main job, `python -m training.fit`: the served recipe, its cross-validated curve, and the
results folder that nothing overwrites. Smoke fits run as real subprocesses (synthetic scenes,
three areas); refusals, which stop before any training, call `main` in this process."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_ablations import REPO, weights_flag

from training import heldout
from training.recipe import SERVED

COMMITTED = REPO / "results" / "final"


def run_fit(*args, env_extra=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "training.fit", *args],
        cwd=REPO,
        env={**os.environ, **(env_extra or {})},
        capture_output=True,
        text=True,
        timeout=900,
    )


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def fit_run(tmp_path_factory, cache_home):
    results = tmp_path_factory.mktemp("results")
    out = results / "final"
    result = run_fit(
        "--budget",
        "smoke",
        "--curve",
        "--curve-epochs",
        "2",
        "--out",
        str(out),
        *weights_flag(),
        env_extra=cache_home,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return results, out


# ---------------------------------------------------------------- one source for the served recipe


def test_the_served_recipe_is_what_its_committed_curve_chose():
    """training.recipe.SERVED is written by hand; this is what keeps it honest: the curve it names
    chooses exactly its epochs, threshold, views and scales within the latency budget."""
    from training.fit import same_recipe

    curve = json.loads((REPO / SERVED.curve).read_text())
    assert same_recipe(curve, SERVED)
    _, option = heldout.best_option(curve, heldout.SERVED_MAX_PASSES)
    chosen = (
        option["epochs"],
        curve["curve_epochs"],
        option["threshold"],
        option["tta"],
        tuple(option["scales"]),
    )
    assert chosen == (SERVED.epochs, SERVED.schedule_epochs, SERVED.threshold, SERVED.tta, SERVED.scales)


def test_a_fit_without_a_new_curve_reports_the_rows_of_the_option_it_serves():
    """The per-city rows of a plain fit are the served option's (threshold 0.5 fixed), not those
    of the same views with each city's threshold chosen on the others."""
    from training.fit import FitRequest, serving_choice

    curve = json.loads((REPO / SERVED.curve).read_text())
    assert serving_choice(FitRequest(), SERVED, curve).option == heldout.best_option(curve, 2.0)[0]


def test_the_committed_model_metadata_serves_the_recipe():
    metadata = json.loads((COMMITTED / "model.json").read_text())
    assert metadata["inference"] == SERVED.serving()
    assert (metadata["config"], metadata["recipe"]) == (SERVED.decoder.to_dict(), SERVED.training.to_dict())
    assert (metadata["epochs"], metadata["schedule_epochs"]) == (SERVED.epochs, SERVED.schedule_epochs)


def test_the_committed_folder_accepts_the_readme_fit_command():
    """What the README's main command binds must equal what the committed folder recorded, or a
    fresh clone's first command stops with "holds results of a different run"."""
    from training import provenance

    recorded = provenance.recorded_binding(COMMITTED)
    assert (recorded["config"], recorded["recipe"]) == (SERVED.decoder.to_dict(), SERVED.training.to_dict())
    assert (recorded["budget"], recorded["test_area"], recorded["data_kind"]) == (
        "standard",
        "none",
        "folder",
    )


# ---------------------------------------------------------------- the fit, with its curve


def test_the_fit_serves_what_its_new_curve_chose(fit_run):
    from zoo.predict import Segmenter
    from zoo.served import served_model_path

    results, out = fit_run
    assert served_model_path(results) == out / "model.keras"
    metadata = json.loads((out / "model.json").read_text())
    curve = json.loads((out / "curve.json").read_text())
    name, option = heldout.best_option(curve, heldout.SERVED_MAX_PASSES)
    assert metadata["inference"] == {
        "threshold": option["threshold"],
        "scales": option["scales"],
        "tta": option["tta"],
    }
    assert metadata["epochs"] == option["epochs"] and metadata["schedule_epochs"] == 2
    assert metadata["config"] == SERVED.decoder.to_dict() and metadata["recipe"] == SERVED.training.to_dict()
    assert metadata["metrics"]["cross_validated"]["option"] == name
    assert Segmenter.from_file(out / "model.keras").predict(np.zeros((64, 64, 3), "uint8")).shape == (64, 64)


def test_every_city_is_held_out_and_scored_as_served(fit_run):
    _, out = fit_run
    curve = json.loads((out / "curve.json").read_text())
    cities = sorted(curve["folds"])
    assert len(cities) == 3 and sorted(curve["per_city"]) == cities
    for city in cities:
        counts = np.asarray(curve["folds"][city]["counts"])
        assert counts.shape == (2, len(heldout.THRESHOLDS), 4)  # every epoch, every threshold
        served = np.asarray(curve["views"]["none@1+0.5"][city])
        # every held-out pixel counted once at every threshold, as the curve's own counts do
        assert (served.sum(axis=1) == counts[-1].sum(axis=1)).all()
        tp, fp, fn, iou_sum = curve["buildings"]["none@1+0.5"][city]["0"]
        assert min(tp, fp, fn) >= 0 and tp * 0.5 <= iou_sum <= tp  # each match's IoU is >= 0.5
        assert sum(curve["buildings"]["none@1+0.5"][city]["64"][:3]) <= tp + fp + fn  # fewer, never more
    readme = (out / "README.md").read_text()
    assert "Quality on a city the model never saw" in readme and (out / "curve.png").is_file()


def test_a_curve_rerun_resumes_from_its_kept_folds(fit_run, cache_home, tmp_path):
    """Each finished fold is kept: a rerun (as after a kill) trains none of them again and
    records the same counts."""
    results, out = fit_run
    copy = tmp_path / "final"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("model.*", "*.png", "README.md"))
    result = run_fit(
        "--budget",
        "smoke",
        "--curve",
        "--curve-epochs",
        "2",
        "--out",
        str(copy),
        "--no-serve",
        *weights_flag(),
        env_extra=cache_home,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("kept from an earlier run") == 3
    before, after = (json.loads((folder / "curve.json").read_text()) for folder in (out, copy))
    assert after["folds"] == {
        city: {**fold, "train_seconds": fold["train_seconds"]} for city, fold in before["folds"].items()
    }
    assert after["views"] == before["views"]


def test_a_fit_into_a_new_folder_fits_the_served_recipe(tmp_path, cache_home):
    """Without a curve in OUT the fit trains and serves exactly SERVED (it once fell back to an
    older in-code recipe). The committed curve measured real data, so a smoke fit reports none."""
    out = tmp_path / "results" / "final"
    result = run_fit("--budget", "smoke", "--out", str(out), *weights_flag(), env_extra=cache_home)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    metadata = json.loads((out / "model.json").read_text())
    assert metadata["inference"] == SERVED.serving() and metadata["epochs"] == SERVED.epochs
    assert metadata["config"] == SERVED.decoder.to_dict() and metadata["recipe"] == SERVED.training.to_dict()
    assert metadata["metrics"]["cross_validated"] is None and not (out / "curve.json").exists()
    assert "--curve" in (out / "README.md").read_text()


# ---------------------------------------------------------------- nothing overwritten, whatever the flags


@pytest.mark.parametrize("flags", [(), ("--curve", "--curve-epochs", "2"), ("--curve", "--seeds", "0,1")])
def test_a_smoke_fit_into_the_committed_folder_changes_no_file(tmp_path, in_process, flags):
    """The issue's case: `--budget smoke --curve` into results/final overwrote the committed
    real-data folder (the refusal was skipped for --curve)."""
    from training.fit import main

    folder = tmp_path / "results" / "final"
    shutil.copytree(COMMITTED, folder, ignore=shutil.ignore_patterns("*.keras", "folds"))
    before = snapshot(tmp_path)
    status, _, stderr = in_process(main, "--budget", "smoke", *flags, "--out", folder, *weights_flag())
    assert status == 2 and "holds results of a different run" in stderr
    assert "data_kind 'folder' -> 'synthetic'" in stderr
    assert snapshot(tmp_path) == before


def test_a_fit_for_another_test_area_refuses_the_folder(fit_run, in_process):
    from training.fit import main

    _, out = fit_run
    before = snapshot(out)
    status, _, stderr = in_process(
        main, "--budget", "smoke", "--test-area", "synth_a", "--out", out, *weights_flag()
    )
    assert status == 2 and "test_area 'none' -> 'synth_a'" in stderr
    assert snapshot(out) == before


def test_kept_folds_of_another_run_are_refused_by_name(tmp_path):
    from training.crossval import _kept_fold
    from training.errors import UserFacingError

    path = tmp_path / "seed0" / "city.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"fingerprint": {"curve_epochs": 2}}))
    assert _kept_fold(tmp_path / "seed0" / "other.json", {"curve_epochs": 2}) is None
    with pytest.raises(UserFacingError, match=str(path)):
        _kept_fold(path, {"curve_epochs": 3})


def test_bad_arguments_get_one_line(in_process, tmp_path):
    from training.fit import main

    status, _, stderr = in_process(main, "--data", tmp_path / "absent")
    assert status == 2 and "--data" in stderr and "Traceback" not in stderr
    status, _, stderr = in_process(main, "--seeds", "0,x")
    assert status == 2 and "--seeds" in stderr


# ---------------------------------------------------------------- the per-city table


def test_the_per_city_table_sets_each_city_beside_the_tutorial(fit_run, tmp_path):
    _, out = fit_run
    curve = json.loads((out / "curve.json").read_text())
    city = sorted(curve["per_city"])[0]
    tutorial = tmp_path / f"tutorial-{city}" / "tutorial_recipe" / "metrics.json"
    tutorial.parent.mkdir(parents=True)
    scores = {"precision": 0.512, "recall": 0.634, "building_iou": 0.398, "mean_iou": 0.611}
    tutorial.write_text(json.dumps({"scores": scores, "epochs": 5, "batch_size": 16}))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.tutorial_baseline.cities",
            "--final",
            str(out),
            "--out",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    page = (tmp_path / "README.md").read_text()
    served = json.loads((out / "model.json").read_text())["metrics"]["cross_validated"]
    row = next(line for line in page.splitlines() if line.startswith(f"| {city} "))
    assert "0.512" in row and "0.398" in row and f"{served['per_city'][city]['building_iou']:.3f}" in row
    assert "(1 of 3 run)" in page
    strict = served["per_city_option_left_out"][city]
    second = page[page.index("chosen on the other cities only") :]
    strict_row = next(line for line in second.splitlines() if line.startswith(f"| {city} "))
    assert f"{strict['building_iou']:.3f}" in strict_row and f"`{strict['rule']}`" in strict_row
