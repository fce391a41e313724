"""Cross-validation by area in the harness (successive halving included), folders bound to what made them, and the final
fit, each run as a real subprocess on the smoke budget (synthetic scenes, three areas). The
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

import numpy as np
import pandas as pd
import pytest

from test_ablations import REPO, cache_home, run_cli, weights_flag  # noqa: F401  (cache_home: a fixture)


def _records(study: Path) -> dict[str, int]:
    return {p.stem: p.stat().st_mtime_ns for p in (study / "trials").glob("*.json")}


@pytest.fixture(scope="module")
def killed_cv_run(tmp_path_factory, cache_home):
    """A cross-validated search killed with SIGKILL after its first trial, then resumed to the
    end: what the resume kept, and the finished study the other tests read."""
    out = tmp_path_factory.mktemp("cv")
    args = ["loss", "--budget", "smoke", "--cv", "areas", "--only", "loss=bce,dice", "--out", str(out),
            *weights_flag()]
    process = subprocess.Popen([sys.executable, "-m", "ablations.run", *args], cwd=REPO,
                               env={**os.environ, **cache_home}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
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
    assert len(after) == 2 and all(after[t] == mtime for t, mtime in before.items()), "a finished trial re-ran"
    trials = pd.read_csv(study / "trials.csv")
    assert sorted(trials["recipe_loss"]) == ["bce", "dice"]
    assert trials.filter(regex=r"^fold_.*_val_building_iou$").notna().all().all()  # every fold of every trial


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_every_trial_is_scored_on_every_fold_and_the_objective_is_their_mean(cv_run):
    _, study = cv_run
    trials = pd.read_csv(study / "trials.csv")
    context = json.loads((study / "context.json").read_text())
    test_area = context["split"].split("area ")[1].split(" ")[0]
    fold_columns = sorted(c for c in trials if c.startswith("fold_") and c.endswith("_val_building_iou"))
    areas = [c[len("fold_"):-len("_val_building_iou")] for c in fold_columns]
    assert len(trials) == 2 and len(areas) == 2 and test_area not in areas
    assert trials["val_building_iou"].tolist() == pytest.approx(trials[fold_columns].mean(axis=1).tolist())
    assert trials["val_building_iou_fold_std"].tolist() == pytest.approx(
        trials[fold_columns].std(axis=1, ddof=0).tolist())
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
    status, _, stderr = in_process(main, "loss", "--budget", "smoke", "--only", "loss=bce,dice", "--out", out,
                                   *weights_flag())  # the same study without --cv
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

    status, _, stderr = in_process(main, "decoder_variants", "--budget", "smoke", "--out", tmp_path, *weights_flag())
    assert status == 2, stderr
    assert "holds results of a different run" in stderr and "budget 'standard' -> 'smoke'" in stderr
    assert snapshot(tmp_path) == before


def run_fit(*args, env_extra=None):
    return subprocess.run([sys.executable, "-m", "ablations.fit", *args], cwd=REPO,
                          env={**os.environ, **(env_extra or {})},
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def fit_run(tmp_path_factory, cache_home):
    results = tmp_path_factory.mktemp("results")
    out = results / "final"
    result = run_fit("--budget", "smoke", "--curve", "--curve-epochs", "2", "--out", str(out),
                     *weights_flag(), env_extra=cache_home)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return results, out


def test_the_final_fit_makes_the_served_model(fit_run):
    results, out = fit_run
    from zoo.predict import Segmenter
    from zoo.served import served_model_path

    assert served_model_path(results) == out / "model.keras"
    metadata = json.loads((out / "model.json").read_text())
    curve = json.loads((out / "curve.json").read_text())
    from training.fit import inference_choice

    epochs, threshold, tta = inference_choice(curve)  # how to serve, chosen by cross-validation
    assert (metadata["epochs"], metadata["inference"]["tta"]) == (epochs, tta) and 1 <= epochs <= 2
    assert metadata["inference"]["threshold"] == pytest.approx(threshold)
    assert threshold in (curve["chosen"]["threshold"], 0.5)  # the curve's choice or the fixed 0.5
    assert metadata["data"]["test_area"] == "none" and len(metadata["data"]["trained_on"]) == 3
    # The curve run here names its recipe, as a variant's does: a later plain fit refits it.
    assert (curve["config"], curve["recipe"]) == (metadata["config"], metadata["recipe"])
    segmenter = Segmenter.from_file(out / "model.keras")
    assert segmenter.predict(np.zeros((64, 64, 3), "uint8")).shape == (64, 64)


def test_each_city_is_scored_with_a_schedule_chosen_on_the_others(fit_run):
    _, out = fit_run
    curve = json.loads((out / "curve.json").read_text())
    assert sorted(curve["per_city"]) == sorted(curve["folds"]) and len(curve["folds"]) == 3
    for city, row in curve["per_city"].items():
        assert 0 <= row["building_iou"] <= 1 and row["epochs"] in (1, 2)
        fold_counts = curve["folds"][city]["counts"]
        assert len(fold_counts) == 2 and len(fold_counts[0]) == len(curve["thresholds"])
    readme = (out / "README.md").read_text()
    assert "chosen on the *other* folds" in readme and (out / "curve.png").is_file()


def test_the_test_area_is_scored_as_the_model_is_served(fit_run, cache_home, monkeypatch):
    """`--test-area` scores the fitted model end to end with the views and scales it serves;
    it had scored every model at scale 1 without views, whatever it served."""
    from training import fit as final
    from ablations import studies
    from ablations.pipeline import scan_samples
    from zoo.metrics import summarise
    from zoo.predict import Segmenter

    for name, value in cache_home.items():
        monkeypatch.setenv(name, value)
    _, out = fit_run
    model = Segmenter.from_file(out / "model.keras").model
    budget = studies.BUDGETS["smoke"]
    samples = [s for s in scan_samples(budget)[0] if s.area == "synth_a"]
    images, masks = final.folders.load_arrays(samples, budget.size)
    served = final.score_test(model, (0.4, "flips", (1.0, 0.5)), samples, budget)
    segmenter = Segmenter(model, threshold=0.4, tta="flips", scales=(1.0, 0.5))
    assert served == summarise((m, segmenter.predict(i)) for i, m in zip(images, masks))
    assert served != final.score_test(model, (0.4, "none", (1.0,)), samples, budget)


def test_the_committed_final_folder_accepts_the_readme_fit_command():
    """The README's main command refits results/final from its kept curve. What that run binds
    (config and recipe as the fit reads them today) must equal what the committed folder
    recorded, or a fresh clone's first command stops with "holds results of a different run"
    (a config field added with a default had done exactly that)."""
    from training import fit as final, provenance

    folder = REPO / "results" / "final"
    config, recipe = final.selected_recipe(None, final._kept_curve(final.FitRequest(out=folder)))
    recorded = provenance.recorded_binding(folder)
    assert (recorded["config"], recorded["recipe"]) == (config.to_dict(), recipe.to_dict())


def test_a_fit_for_another_test_area_refuses_the_folder(fit_run, in_process):
    from ablations.fit import main

    _, out = fit_run
    before = snapshot(out)
    status, _, stderr = in_process(main, "--budget", "smoke", "--test-area", "synth_a", "--out", out, *weights_flag())
    assert status == 2 and "test_area 'none' -> 'synth_a'" in stderr
    assert snapshot(out) == before


def test_a_fit_without_a_curve_names_the_flag_before_any_work(tmp_path, in_process, monkeypatch):
    from training import fit as final
    from ablations.fit import main

    def no_loading(*_):
        raise AssertionError("loaded the data before naming the missing curve")

    monkeypatch.setattr(final, "load_samples", no_loading)
    status, _, stderr = in_process(main, "--budget", "smoke", "--out", tmp_path / "final", *weights_flag())
    assert status == 2 and "--curve" in stderr


@pytest.mark.parametrize("flags, expected_stride", [((), 2), (("--curve",), 2), (("--recipe-from", "MODEL_JSON"), 1)])
def test_a_folder_keeps_its_recipe_when_refitted_or_recurved(tmp_path, monkeypatch, flags, expected_stride):
    # A folder served from a variant's curve (here: output stride 2) refits, and runs its curve
    # again, for that variant; only --recipe-from names another recipe.
    from training import fit as final
    from zoo.config import DecoderConfig

    out = tmp_path / "final"
    out.mkdir()
    kept = DecoderConfig(upsampler="nearest", skip="attention", width=0.25, output_stride=2)
    (out / "curve.json").write_text(json.dumps({"config": kept.to_dict(), "recipe": {"augmentation": "sensor"}}))
    other = tmp_path / "model.json"
    other.write_text(json.dumps({"config": DecoderConfig().to_dict(), "recipe": {"augmentation": "flips"}}))
    chosen = []

    def record(*args):
        chosen.append(selected_recipe(*args))
        raise KeyboardInterrupt  # stop before any data is read

    selected_recipe = final.selected_recipe
    monkeypatch.setattr(final, "selected_recipe", record)
    request = final.FitRequest(out=out, budget="smoke", curve="--curve" in flags,
                               recipe_from=other if "--recipe-from" in flags else None)
    with pytest.raises(KeyboardInterrupt):
        final.run_fit(request)
    assert chosen[0][0].output_stride == expected_stride


def test_the_per_city_table_sets_each_city_beside_the_tutorial(fit_run, tmp_path):
    _, out = fit_run
    curve = json.loads((out / "curve.json").read_text())
    city = sorted(curve["per_city"])[0]
    tutorial = tmp_path / f"tutorial-{city}" / "tutorial_recipe" / "metrics.json"
    tutorial.parent.mkdir(parents=True)
    scores = {"precision": 0.512, "recall": 0.634, "building_iou": 0.398, "mean_iou": 0.611}
    tutorial.write_text(json.dumps({"scores": scores, "epochs": 5, "batch_size": 16}))
    result = subprocess.run([sys.executable, "-m", "ablations.cities", "--final", str(out),
                             "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    page = (tmp_path / "README.md").read_text()
    row = next(line for line in page.splitlines() if line.startswith(f"| {city} "))
    assert "0.512" in row and "0.398" in row and f"{curve['per_city'][city]['building_iou']:.3f}" in row
    mean = sum(r["building_iou"] for r in curve["per_city"].values()) / 3
    assert f"**{mean:.3f}**" in page and "(1 of 3 run)" in page
    # The second table: each row's serving option chosen on the other cities, never its own.
    from training.heldout import option_left_out

    strict = option_left_out(curve, json.loads((out / "model.json").read_text())["metrics"]["cross_validated"]
                             ["passes_budget"]["max_passes"])
    second = page[page.index("chosen on the other cities only"):]
    strict_row = next(line for line in second.splitlines() if line.startswith(f"| {city} "))
    assert f"{strict[city]['building_iou']:.3f}" in strict_row and f"`{strict[city]['rule']}`" in strict_row


def test_a_fresh_clone_fits_from_the_committed_curve_alone(fit_run, tmp_path, cache_home):
    """What a clone has: curve.json and binding.json (model files are never committed)."""
    _, out = fit_run
    clone = tmp_path / "results" / "final"
    clone.mkdir(parents=True)
    for name in ("curve.json", "binding.json"):
        shutil.copy(out / name, clone / name)
    result = run_fit("--budget", "smoke", "--out", str(clone), *weights_flag(), env_extra=cache_home)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    metadata = json.loads((clone / "model.json").read_text())
    curve = json.loads((clone / "curve.json").read_text())
    from training.fit import inference_choice

    assert metadata["epochs"] == inference_choice(curve)[0] and metadata["schedule_epochs"] == 2
    assert (tmp_path / "results" / "MODEL").read_text().strip() == "final/model.keras"


@pytest.mark.parametrize("rule, says", [
    ("flips, 0.5", ("a threshold of 0.5, fixed", "the four flips averaged")),
    ("flips", ("each row's threshold chosen on the other cities", "the four flips averaged")),
    ("plain, 0.5", ("a threshold of 0.5, fixed", "no test-time views")),
    ("transpose, 0.5", ("a threshold of 0.5, fixed", "its mirror across the diagonal")),
    ("dihedral", ("each row's threshold chosen on the other cities", "all eight rotations and flips")),
    ("none@1+0.5, 0.5", ("a threshold of 0.5, fixed", "no test-time views, at scales 1, 0.5 averaged")),
])
def test_the_per_city_page_says_how_the_rows_were_served(rule, says):
    from ablations.cities import _served_as

    text = _served_as({"per_city": {"a": {"rule": rule}, "b": {"rule": rule}}})
    assert f"`{rule}`" in text and all(part in text for part in says)


# Successive halving (`--cv areas --halving KEEP`): the cut, and that a survivor ends exactly
# where the full cross-validated run above (`cv_run`, the same two losses) ends.

@pytest.fixture(scope="module")
def halving_run(tmp_path_factory, cache_home, cv_run):
    """The halved study beside test_cv's full cross-validated run of the same two losses:
    the full run on the grid the survivor came from."""
    out = tmp_path_factory.mktemp("halving")
    halved = run_cli("loss", "--budget", "smoke", "--cv", "areas", "--halving", "1", "--only", "loss=bce,dice",
                     "--out", str(out), *weights_flag(), env_extra=cache_home)
    assert halved.returncode == 0, halved.stdout[-3000:] + halved.stderr[-3000:]
    study = out / "loss-loss-bce-dice"
    survivor = next(json.loads(p.read_text()) for p in (study / "trials").glob("*.json")
                    if json.loads(p.read_text()).get("halving", {}).get("rung") == 1)
    _, full_study = cv_run
    full_record = next(json.loads(p.read_text()) for p in (full_study / "trials").glob("*.json")
                       if json.loads(p.read_text())["recipe"]["loss"] == survivor["recipe"]["loss"])
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
