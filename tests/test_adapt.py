"""python -m training.adapt: a smoke city adapts, the model serves and names its parent; bad
input gets one line and exit status 2; tiles are drawn by whole ground groups."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from data import folders, synthetic
from training import adapt
from training.adapt_ground import draw_tiles, groups_for, halves
from training.adapt_method import AdaptSettings, pseudo_masks
from zoo import saving
from zoo.losses import IGNORE
from zoo.predict import Segmenter

# Small enough for seconds on two cores: a few steps over tiny copies.
SMOKE = AdaptSettings(epochs=2, min_steps=2, max_steps=2, batch_size=4, copies=2, student_copies=1)


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    """24 synthetic 64 px tiles of one city, in 6 ground groups of 4."""
    return synthetic.write_synthetic_folder(tmp_path_factory.mktemp("city") / "smoke_city", n=24, size=64,
                                            areas=("smoke_city",))  # fmt: skip


def run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    status = adapt.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_draw_keeps_ground_apart(city):
    samples = folders.scan_folder(city, check=False)
    draw = draw_tiles(samples, 10, seed=3)
    assert len(draw.train) == 10 and len(draw.set_aside) == 2  # two whole groups and half of a third
    trained = {s.group for s in draw.train}
    assert not trained & {s.group for s in draw.held_out}
    assert len(draw.train) + len(draw.held_out) + len(draw.set_aside) == len(samples)
    assert set(draw_tiles(samples, 6, seed=3).names()) < set(draw.names())  # nested across K
    assert groups_for(samples, 10, sorted({s.group for s in samples})) == 3
    first, second = halves(draw.held_out, seed=3)
    assert not {draw.held_out[i].group for i in first} & {draw.held_out[i].group for i in second}


def test_pseudo_masks_ignore_the_unsure():
    probs = np.array([[0.95, 0.5, 0.05]])
    assert pseudo_masks(probs, 0.8).tolist() == [[1, IGNORE, 0]]


def test_a_smoke_city_adapts_and_serves(small_model_file, city, tmp_path):
    request = adapt.AdaptRequest(small_model_file, data=city, tiles=8, unlabeled=city, out=tmp_path / "out",
                                 seed=1, settings=SMOKE)  # fmt: skip
    meta = adapt.run_adapt(request)
    model, saved = saving.load(tmp_path / "out" / "model.keras")
    assert saved["adaptation"]["parent"]["sha256"] == saving.sha256_of(small_model_file)
    assert saved["adaptation"]["parent"]["path"] == str(small_model_file)
    assert len(saved["adaptation"]["tiles_used"]) == 8 and saved["adaptation"]["binding"]["tiles"] == 8
    assert saved["adaptation"]["binding"]["data_fingerprint"] and saved["adaptation"]["serving"]["verdict"]
    assert saved["adaptation"]["serving"]["held_out_tiles"] == 16  # the 4 groups K = 8 did not touch
    mask = Segmenter.from_file(tmp_path / "out" / "model.keras").predict(np.zeros((70, 90, 3), np.uint8))
    assert mask.shape == (70, 90)
    assert (tmp_path / "out" / "report.md").read_text().startswith("# Adapted model")
    # The same run again keeps what it made; a different one refuses.
    assert adapt.run_adapt(request)["adaptation"]["date"] == meta["adaptation"]["date"]
    with pytest.raises(adapt.UserFacingError, match="holds another model"):
        adapt.run_adapt(adapt.AdaptRequest(small_model_file, data=city, tiles=4, out=tmp_path / "out",
                                           settings=SMOKE))  # fmt: skip
    del model


def test_bad_inputs_say_one_line(small_model_file, city, tmp_path, capsys):
    no_masks = tmp_path / "no_masks"
    shutil.copytree(city / "images", no_masks / "images")
    cases = [
        (["--model", tmp_path / "missing.keras", "--data", city], "no such model file"),
        (["--model", small_model_file, "--data", no_masks], "masks"),
        (["--model", small_model_file, "--data", city, "--tiles", 25], "has 24 labelled tiles"),
        (["--model", small_model_file, "--data", city, "--tiles", 0], "nothing to adapt on"),
        (["--model", small_model_file, "--unlabeled", tmp_path / "nowhere"], "not a folder of images"),
    ]
    for argv, said in cases:
        status, out, err = run(capsys, *argv, "--out", tmp_path / "never")
        assert status == 2, (argv, err)
        assert said in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "never").exists()


def test_metadata_is_json_safe(small_model_file, city, tmp_path):
    samples = folders.scan_folder(city)
    request = adapt.AdaptRequest(small_model_file, data=city)
    binding = adapt.run_binding(request, samples, [], draw_tiles(samples, 4, 0))
    assert json.loads(json.dumps(binding)) == binding


def test_tiles_of_bare_ground_are_refused_without_imagery_to_anchor_them(
    small_model_file, city, tmp_path, capsys
):
    bare = tmp_path / "bare_city"
    shutil.copytree(city, bare)
    for mask in (bare / "masks").iterdir():
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(mask)
    status, out, err = run(capsys, "--model", small_model_file, "--data", bare, "--tiles", 8,
                           "--out", tmp_path / "never")  # fmt: skip
    assert status == 2 and "holds a building pixel" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "never").exists()
