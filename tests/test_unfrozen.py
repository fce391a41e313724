"""The unfrozen-encoder probe (ablations.evaluate.unfrozen): its control trains exactly as the
harness does, only the convolutions it thaws move, and its runs resume and refuse mixing."""
from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from ablations import features, studies
from ablations.evaluate import transfer, unfrozen
from ablations.train import train_decoder
from test_ablations import cache_home, weights_flag  # noqa: F401  (cache_home: a fixture)
from zoo import unet
from zoo.config import DecoderConfig
from zoo.encoder import build_encoder

CONFIG = DecoderConfig(width=0.25, output_stride=2)
RECIPE = studies.Recipe(augmentation="sensor", batch_size=4)


def _tiles(count=8, size=64):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    masks = (rng.random((count, size, size)) > 0.7).astype(np.uint8)
    return images, masks


def _model():
    keras.utils.set_random_seed(0)
    # ImageNet's weights: a random encoder's deep taps overflow the harness's float16 features.
    return unet.build(CONFIG, encoder=build_encoder(weights_flag()[1]))


def test_the_frozen_control_trains_the_decoder_as_the_harness_does():
    images, masks = _tiles()
    pool = unfrozen.augmented_pool(images, masks, "sensor", copies=2)
    harness = _model()
    encoded = features.encode(harness, images, masks, 2, "sensor", seed=transfer.SEED, progress=lambda _: None)
    # The probe augments with the harness's seed and order: its copies are the ones encoded.
    assert np.array_equal(pool.masks, encoded.masks) and np.array_equal(pool.taps[0][0], images)
    train_decoder(harness, RECIPE, encoded, epochs=2, seed=0)
    probe = _model()
    trained = unfrozen.train_end_to_end(probe, RECIPE, pool, epochs=2, seed=0, encoder_lr=0.0)
    assert trained["encoder_change"] == 0.0 and len(trained["loss"]) == 2
    ours, theirs = unet.decoder_of(probe).get_weights(), unet.decoder_of(harness).get_weights()
    # Same batches, same steps; only the harness's float16 features differ in rounding.
    moved = [np.abs(b - a).max() for a, b in zip(unet.decoder_of(_model()).get_weights(), theirs)]
    assert max(np.abs(a - b).max() for a, b in zip(ours, theirs)) < 0.02 * max(moved)  # another seed: 0.6


def test_a_thawed_encoder_moves_its_convolutions_but_not_its_batch_norm():
    images, masks = _tiles()
    model = _model()
    encoder = unet.encoder_of(model)
    before = {w.path: np.asarray(w).copy() for w in encoder.weights}
    trained = unfrozen.train_end_to_end(model, RECIPE, unfrozen.augmented_pool(images, masks, "none", 1),
                                        epochs=1, seed=0, encoder_lr=0.1)
    assert trained["encoder_change"] > 0
    changed = {w.path for w in encoder.weights if not np.array_equal(np.asarray(w), before[w.path])}
    batch_norm = {w.path for layer in encoder.layers if isinstance(layer, keras.layers.BatchNormalization)
                  for w in layer.weights}
    assert changed and not changed & batch_norm
    assert any("Conv1" in path for path in changed) and any("depthwise" in path for path in changed)


def test_lp_ft_trains_the_control_first_then_everything_at_one_small_rate(monkeypatch):
    stages = []
    monkeypatch.setattr(unfrozen, "train_end_to_end", lambda model, recipe, pool, epochs, seed, **how: stages.append(
        (epochs, how)) or {"loss": [1.0] * epochs, "train_seconds": 2.0, "encoder_change": 0.01 * len(stages)})
    trained = unfrozen.probe_then_fine_tune(None, RECIPE, None, epochs=3, fine_tune_epochs=2, seed=0, fine_tune_lr=0.1)
    assert stages == [(3, {"encoder_lr": 0.0}), (2, {"encoder_lr": 0.1, "decoder_lr": 0.1, "first_epoch": 3})]
    assert trained == {"loss": [1.0] * 5, "train_seconds": 4.0, "encoder_change": 0.02}
    assert unfrozen.run_name("os2", 0.1, 2) == "os2-lpft2-lr0.1" and unfrozen.run_name("os2", 0.1) == "os2-encoder-lr0.1"
    stages.clear()  # its control: the second stage trains the decoder alone
    unfrozen.probe_then_fine_tune(None, RECIPE, None, epochs=3, fine_tune_epochs=2, seed=0, fine_tune_lr=0.1, thaw=False)
    assert stages[1] == (2, {"encoder_lr": 0.0, "decoder_lr": 0.1, "first_epoch": 3})
    assert unfrozen.run_name("os2", 0.1, 2, frozen=True) == "os2-lplp2-lr0.1"


def test_arguments_are_checked():
    args = unfrozen.parse_args(["--encoder-lr", "0, 0.1", "--scales", "1+0.5"])
    assert args.encoder_lr == [0.0, 0.1] and args.scales == (1.0, 0.5) and args.out == unfrozen.DEFAULT_OUT
    for bad in (["--encoder-lr", "-1"], ["--encoder-lr", "fast"], ["--scales", "2"], ["--fine-tune-epochs", "-1"]):
        with pytest.raises(SystemExit):
            unfrozen.parse_args(bad)
    assert unfrozen.main(["--variants", "os2_style", "--budget", "smoke"]) == 2  # restyled per fold: refused


@pytest.mark.slow
def test_the_probe_scores_each_held_out_city_resumes_and_refuses_other_runs(tmp_path, in_process):
    out = tmp_path / "probe"
    common = ["--variants", "selected", "--budget", "smoke", "--epochs", "1", *weights_flag(), "--out", str(out)]
    status, stdout, stderr = in_process(unfrozen.main, *common, "--encoder-lr", "0,0.1")
    assert status == 0, stderr[-3000:]
    folds = sorted(out.glob("*/*.json"))
    assert {path.parent.name for path in folds} == {"selected-encoder-lr0", "selected-encoder-lr0.1"}
    record = json.loads(folds[0].read_text())
    kept = np.load(out / "cache" / folds[0].parent.name / f"{record['city']}.npy")
    assert kept.shape[0] == record["tiles"] and np.asarray(record["counts"]).shape == (13, 4)
    assert np.asarray(record["counts"]).sum(axis=1).min() == kept.size  # every pixel counted
    table = (out / "README.md").read_text()
    assert "| selected-encoder-lr0 " in table and "| selected-encoder-lr0.1 " in table
    status, stdout, _ = in_process(unfrozen.main, *common, "--encoder-lr", "0.1")
    assert status == 0 and "finished earlier" in stdout and "hold out" not in stdout
    # LP-FT: its own runs; the control (lr 0) is the same run either way, so it is not redone.
    status, stdout, stderr = in_process(unfrozen.main, *common, "--encoder-lr", "0,0.1", "--fine-tune-epochs", "1")
    assert status == 0, stderr[-3000:]
    assert "selected-encoder-lr0: hold out" not in stdout and "selected-lpft1-lr0.1: hold out" in stdout
    assert len(json.loads(next((out / "selected-lpft1-lr0.1").glob("*.json")).read_text())["loss"]) == 2
    assert "| selected-lpft1-lr0.1 " in (out / "README.md").read_text()
    status, _, stderr = in_process(unfrozen.main, *common, "--encoder-lr", "0.1", "--fine-tune-epochs", "1",
                                   "--fine-tune-frozen")
    assert status == 0, stderr[-3000:]
    assert all(json.loads(path.read_text())["encoder_change"] == 0 for path in (out / "selected-lplp1-lr0.1").glob("*.json"))
    status, _, stderr = in_process(unfrozen.main, *common, "--scales", "1", "--encoder-lr", "0.1")
    assert status == 2 and "other data, epochs, scales" in stderr
