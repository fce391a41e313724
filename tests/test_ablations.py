"""The ablation harness end to end: the smoke budget on synthetic data, and its errors
(resuming: test_resume.py).

These start `python -m ablations.run` as a real subprocess, as a user would.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED_WEIGHTS = (
    REPO.parent / "shared" / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
)
SMOKE_TRIALS = 4  # the smoke study below: 2 upsamplers x 2 skips
PLOTS = ("tradeoffs.png", "metrics.png", "curves.png", "samples.png")


def weights_flag() -> list[str]:
    # Real ImageNet weights when the shared file is there (CI has it); random ones otherwise,
    # which still exercises every step of the pipeline.
    if os.environ.get("ZOO_ENCODER_WEIGHTS") or SHARED_WEIGHTS.is_file():
        return ["--weights", os.environ.get("ZOO_ENCODER_WEIGHTS") or str(SHARED_WEIGHTS)]
    return ["--weights", "none"]


def run_cli(*args, env_extra=None, timeout=600) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "ablations.run", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, cache_home):
    out = tmp_path_factory.mktemp("results")
    started = time.time()
    # Two upsamplers by two skips: 4 trials exercise the grid over two axes, the table and the
    # selection as well as 16 do, at a quarter of the suite's time (`--only` names its folder).
    result = run_cli(
        "decoder_variants",
        "--budget",
        "smoke",
        "--only",
        "upsampler=transpose,bilinear",
        "--only",
        "skip=concat,attention",
        "--out",
        str(out),
        *weights_flag(),
        env_extra=cache_home,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return (
        out / "decoder_variants-skip-concat-attention-upsampler-transpose-bilinear",
        result,
        time.time() - started,
    )


def test_smoke_announces_synthetic_data(smoke_run):
    _, result, _ = smoke_run
    assert "SYNTHETIC" in result.stdout


def test_smoke_writes_one_row_per_trial(smoke_run):
    study, _, _ = smoke_run
    trials = pd.read_csv(study / "trials.csv")
    assert len(trials) == SMOKE_TRIALS
    assert trials[["upsampler", "skip"]].drop_duplicates().shape[0] == SMOKE_TRIALS
    assert set(trials["upsampler"]) == {"transpose", "bilinear"}
    for column in (
        "precision",
        "recall",
        "building_iou",
        "mean_iou",
        "f1",
        "median_image_iou",
        "trainable_params",
        "total_params",
        "latency_ms",
        "train_seconds",
        "threshold",
    ):
        assert trials[column].notna().all(), column
    assert (
        trials[["precision", "recall", "building_iou", "mean_iou", "f1"]]
        .apply(lambda c: c.between(0, 1).all())
        .all()
    )
    assert (trials["building_iou"] <= trials["f1"] + 1e-9).all()  # IoU <= Dice/F1 always


def test_smoke_table_names_its_provenance_and_every_trial(smoke_run):
    study, _, _ = smoke_run
    table = (study / "table.md").read_text()
    for words in (
        "SYNTHETIC",
        "smoke",
        "Selection rule",
        "Machine",
        "seed",
        "test building IoU",
        "test mean IoU",
        "**(selected)**",
    ):
        assert words in table, words
    trials = pd.read_csv(study / "trials.csv")
    for variant in trials["variant"]:
        assert variant in table
    assert (study.parent / "README.md").read_text().count("decoder_variants") >= 1


def test_smoke_plots_are_valid_pngs(smoke_run):
    study, _, _ = smoke_run
    for name in PLOTS:
        with Image.open(study / name) as image:
            image.verify()
            assert image.format == "PNG" and min(image.size) > 100, name


def test_smoke_best_model_loads_and_predicts(smoke_run):
    import keras

    import zoo.blocks  # noqa: F401  registers the custom layers; no custom_objects needed
    from zoo.predict import Segmenter

    study, _, _ = smoke_run
    metadata = json.loads((study / "best" / "model.json").read_text())
    trials = pd.read_csv(study / "trials.csv")
    best_trial = trials[trials["trial_id"].astype(str).str.zfill(2) == str(metadata["trial_id"]).zfill(2)]
    assert len(best_trial) == 1
    assert metadata["config"]["upsampler"] == best_trial["upsampler"].item()
    assert metadata["threshold"] == pytest.approx(best_trial["threshold"].item())
    # The end-to-end re-score through the full model agrees with the cached-feature score.
    assert metadata["metrics"]["test"]["building_iou"] == pytest.approx(
        best_trial["building_iou"].item(), abs=0.02
    )
    model = keras.saving.load_model(study / "best" / "model.keras")
    assert model.count_params() > 2_000_000
    mask = Segmenter.from_file(study / "best" / "model.keras").predict(np.zeros((70, 90, 3), np.uint8))
    assert mask.shape == (70, 90) and set(np.unique(mask)) <= {0, 1}


def test_smoke_wall_time_is_reported(smoke_run):
    """The wall time the command prints and the cost its context and table record are real:
    within the time measured around the whole process, the printed one after the recorded one
    (the report is written in between)."""
    study, result, seconds = smoke_run
    print(f"smoke decoder_variants wall time: {seconds:.0f}s")
    printed = re.search(r"^done in (\d+\.\d) min; selected ", result.stdout, re.MULTILINE)
    assert printed, result.stdout[-2000:]
    run = json.loads((study / "context.json").read_text())["runs"][0]  # this fixture's run
    assert run["trials_run"] == SMOKE_TRIALS and run["peak_rss_gib"] > 0
    assert 0 < run["wall_minutes"] <= float(printed[1]) <= (seconds + 3) / 60  # rounded to 0.1
    assert (
        f"{run['wall_minutes']} min wall, peak memory {run['peak_rss_gib']} GiB ({SMOKE_TRIALS} trials)"
        in (study / "table.md").read_text()
    )


def _defective_folder(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(root / "images" / "a.png")
    (root / "masks" / "a.png").write_bytes(b"not a png at all")
    return root


def test_list_names_every_study():
    result = run_cli("--list")
    assert result.returncode == 0
    for study in ("decoder_variants", "decoder_width", "loss", "augmentation", "hparams"):
        assert study in result.stdout


@pytest.mark.parametrize(
    "args, words",
    [
        (["no_such_study"], "unknown study 'no_such_study'"),
        (["decoder_variants", "--data", "/no/such/folder"], "/no/such/folder"),
        (["decoder_variants", "--seeds", "0"], "--seeds"),
    ],
)
def test_bad_arguments_exit_with_one_sentence(args, words):
    result = run_cli(*args, "--budget", "smoke")
    assert result.returncode != 0
    assert words in result.stderr
    assert "Traceback" not in result.stderr


def test_defective_data_folder_names_the_file(tmp_path):
    folder = _defective_folder(tmp_path)
    result = run_cli("decoder_variants", "--budget", "smoke", "--data", str(folder), "--weights", "none")
    assert result.returncode != 0
    assert str(folder / "masks" / "a.png") in result.stderr
    assert "Traceback" not in result.stderr


def test_unusable_weights_file_is_one_sentence(tmp_path):
    broken = tmp_path / "broken.h5"
    broken.write_bytes(b"\x89HDF garbage")
    result = run_cli("decoder_variants", "--budget", "smoke", "--weights", str(broken))
    assert result.returncode != 0
    assert str(broken) in result.stderr
    assert "Traceback" not in result.stderr


def loss_study_oracle(directory: Path):
    """The `loss` study's grid oracle (four losses, one seed), its project under `directory`/tuner."""
    import keras_tuner

    from ablations import oracles, studies

    hp = keras_tuner.HyperParameters()
    studies.STUDIES["loss"].space(hp, studies.DEFAULT_DECODER, 1)
    made = oracles.GridOracle(
        objective=keras_tuner.Objective("score", "max"), max_trials=4, hyperparameters=hp, seed=0
    )
    made._set_project_dir(str(directory), "tuner")
    return made


def test_a_trial_orphaned_between_its_file_and_the_oracle_state_reruns_under_its_own_id(tmp_path):
    """The kill window the subprocess test above only sometimes hits, reproduced exactly."""
    import json as json_module

    from ablations import oracles

    def oracle():
        return loss_study_oracle(tmp_path)

    first = oracle()
    finished = first.create_trial("tuner0")
    first.update_trial(finished.trial_id, {"score": 0.5})
    finished.status = "COMPLETED"
    first.end_trial(finished)
    state = (tmp_path / "tuner" / "oracle.json").read_text()
    orphan = first.create_trial("tuner0")  # its trial.json is written, then the process dies
    (tmp_path / "tuner" / "oracle.json").write_text(state)  # ... before the oracle state was

    reloaded = oracle()
    reloaded.reload()
    assert oracles.requeue_orphaned_trials(reloaded) == [orphan.trial_id]
    again = reloaded.create_trial("tuner0")
    assert again.trial_id == orphan.trial_id
    assert again.hyperparameters.values == orphan.hyperparameters.values
    for worker in ("w1", "w2", "w3", "w4"):  # hand out everything that is left
        reloaded.create_trial(worker)
    by_id = {
        trial_id: json_module.dumps(t.hyperparameters.values, sort_keys=True)
        for trial_id, t in reloaded.trials.items()
    }
    # Every combination has exactly one trial id: none lost, none under two ids.
    assert len(by_id) == 4 and len(set(by_id.values())) == 4


def _synthetic_root(cache_home: dict) -> Path:
    """The synthetic folder the smoke run wrote (data.synthetic.default_synthetic_root)."""
    from ablations.studies import BUDGETS
    from data.synthetic import SYNTHETIC_VERSION

    budget = BUDGETS["smoke"]
    folder = f"synthetic-v{SYNTHETIC_VERSION}-n{budget.synthetic_images}-s{budget.size}-seed0"
    return Path(cache_home["XDG_CACHE_HOME"]) / "building-zoo" / folder


def test_tutorial_baseline_sits_beside_the_selected_model(smoke_run, cache_home, tmp_path):
    study, _, _ = smoke_run
    out = tmp_path  # the baseline reads the study under its own name, as in results/
    shutil.copytree(study, out / "decoder_variants", ignore=shutil.ignore_patterns("tuner"))
    env = {**os.environ, **cache_home}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.tutorial_baseline.baseline",
            "--budget",
            "smoke",
            "--out",
            str(out),
            *weights_flag(),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    table = (out / "tutorial_recipe" / "table.md").read_text()
    assert "TF tutorial recipe" in table and "selected by `decoder_variants`" in table
    metrics = json.loads((out / "tutorial_recipe" / "metrics.json").read_text())
    assert 0 <= metrics["scores"]["building_iou"] <= 1 and metrics["images_per_second"] > 0
    assert 0 <= metrics["scores"]["val_building_iou"] <= 1


def _declared_space(study_name: str, only: dict, seeds: int = 1):
    import keras_tuner

    from ablations import search, studies

    hp = keras_tuner.HyperParameters()
    hypermodel = search.StudyHyperModel(
        studies.STUDIES[study_name], studies.DEFAULT_DECODER, seeds, shared=None, only=only
    )
    hypermodel.declare(hp)
    return hp


def test_only_cuts_a_grid_to_the_named_values():
    from ablations import oracles

    hp = _declared_space("augmentation", {"augmentation": ["flips", "sensor"]}, seeds=3)
    assert oracles.grid_size(hp) == 6
    assert hp.get("augmentation") in ("flips", "sensor")
    assert [p.values for p in hp.space if p.name == "augmentation"] == [["flips", "sensor"]]
    assert oracles.grid_size(_declared_space("decoder_width", {"width": ["0.5"]})) == 2  # x conv
    from ablations.pipeline import study_folder

    # A subset keeps its own folder, so its search state never mixes with the full study's.
    assert study_folder(Path("r"), "augmentation", {}) == Path("r/augmentation")
    assert study_folder(Path("r"), "augmentation", {"augmentation": ["flips", "sensor"]}) == Path(
        "r/augmentation-augmentation-flips-sensor"
    )


@pytest.mark.parametrize(
    "only, words",
    [
        ({"augmentation": ["flips", "mud"]}, "mud is not one of its values (none, flips"),
        ({"colour": ["red"]}, "study 'augmentation' has no such choice (its choices: augmentation, seed)"),
    ],
)
def test_only_refuses_what_the_study_does_not_have(only, words):
    from training.errors import UserFacingError

    with pytest.raises(UserFacingError, match=re.escape(words)):
        _declared_space("augmentation", only)


def test_only_without_values_is_one_sentence():
    result = run_cli("augmentation", "--budget", "smoke", "--only", "augmentation")
    assert result.returncode == 2
    assert "expected NAME=VALUE[,VALUE...]" in result.stderr and "Traceback" not in result.stderr
