"""The per-image-statistics probe (ablations.evaluate.image_statistics): what it changes in the
encoder, and that the harness trains on the encoder it is given."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ablations.evaluate import image_statistics, transfer
from test_ablations import cache_home, weights_flag  # noqa: F401  (cache_home: a fixture)
from zoo.encoder import build_encoder


@pytest.fixture(scope="module")
def encoder():
    return build_encoder(None)  # random weights: these tests are about where statistics come from


def _images(count=2, size=64):
    return np.random.default_rng(0).uniform(-1, 1, (count, size, size, 3)).astype("float32")


def test_only_the_shallow_layers_use_each_images_statistics(encoder):
    probe = image_statistics.per_image_statistics(encoder, "shallow")
    swapped = [layer.name for layer in probe.layers if isinstance(layer, image_statistics.PerImageNormalization)]
    assert len(swapped) == 9 and all(name.startswith(image_statistics.SHALLOW_PREFIXES) for name in swapped)
    assert probe.get_layer("block_3_expand_BN").__class__.__name__ == "BatchNormalization"
    assert not probe.trainable
    every = image_statistics.per_image_statistics(encoder, "all")
    assert sum(isinstance(layer, image_statistics.PerImageNormalization) for layer in every.layers) == 52
    with pytest.raises(ValueError, match="depth"):
        image_statistics.per_image_statistics(encoder, "deep")


def test_a_contrast_change_no_longer_reaches_the_shallow_taps(encoder):
    probe = image_statistics.per_image_statistics(encoder, "shallow")
    images = _images()
    low_contrast = images * 0.3  # MobileNetV2's convolutions have no bias: the stem sees 0.3 x
    def change(model) -> list[float]:  # mean relative change of the stride-2 and stride-4 taps
        return [float(np.abs(np.asarray(a) - np.asarray(b)).mean() / np.abs(np.asarray(a)).mean())
                for a, b in zip(model(images)[:2], model(low_contrast)[:2])]

    assert max(change(probe)) < 0.02  # up to the epsilon beside each variance
    assert min(change(encoder)) > 0.3


def test_each_image_is_normalised_by_its_own_statistics_not_its_batchs(encoder):
    probe = image_statistics.per_image_statistics(encoder, "all")
    images = _images(3)
    together = [np.asarray(t) for t in probe(images)]
    alone = [np.asarray(t) for t in probe(images[1:2])]
    assert all(np.allclose(t[1:2], a, atol=1e-4) for t, a in zip(together, alone))


def test_weights_are_copied_not_reinitialised(encoder):
    probe = image_statistics.per_image_statistics(encoder, "shallow")
    assert np.array_equal(probe.get_layer("Conv1").get_weights()[0], encoder.get_layer("Conv1").get_weights()[0])
    assert np.array_equal(np.asarray(probe.get_layer("bn_Conv1").gamma), np.asarray(encoder.get_layer("bn_Conv1").gamma))
    deep = probe.get_layer("block_16_project_BN").get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(deep, encoder.get_layer("block_16_project_BN").get_weights()))


@pytest.mark.slow
def test_the_probe_runs_the_harness_on_its_encoder_and_says_so(tmp_path, in_process, monkeypatch):
    built = []
    real = image_statistics.per_image_statistics
    monkeypatch.setattr(image_statistics, "per_image_statistics",
                        lambda encoder, depth: built.append(depth) or real(encoder, depth))
    out = tmp_path / "probe"
    status, stdout, stderr = in_process(image_statistics.main, "--depth", "shallow", "--", "--variants", "selected",
                                        "--epochs", "1", "--budget", "smoke", *weights_flag(), "--out", str(out))
    assert status == 0, stderr[-3000:]
    assert built == ["shallow"]  # one encoder, built once, fed every fold and view
    assert json.loads((out / "selected" / "curve.json").read_text())["variant"] == "selected"
    assert "`shallow`" in (out / "PROBE.md").read_text()
    # The served encoder's run into the same folder is refused, not mixed with the probe's curve.
    status, _, stderr = in_process(transfer.main, "--variants", "selected", "--epochs", "1", "--budget", "smoke",
                                   *weights_flag(), "--out", str(out))
    assert status == 2 and "encoder" in stderr


def test_the_probe_writes_to_its_own_folder_unless_told(tmp_path):
    assert image_statistics.parse_args(["--depth", "all"])[1].out == image_statistics.DEFAULT_OUT
    assert image_statistics.parse_args(["--", f"--out={tmp_path}"])[1].out == tmp_path
    args, harness = image_statistics.parse_args(["--", "--out", str(tmp_path), "--variants", "os2_shrink"])
    assert (args.depth, harness.out, harness.variants) == ("shallow", tmp_path, "os2_shrink")
    with pytest.raises(SystemExit):  # argparse refuses it, naming the choices
        image_statistics.parse_args(["--depth", "middle"])
