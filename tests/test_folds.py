"""Cross-validation by area: folds, shared feature views, per-threshold counts and the
choice of epochs and threshold (fast: no model is trained here)."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from data.folders import DataError  # noqa: E402
from training import folds  # noqa: E402
from training.features import FeatureSet  # noqa: E402
from training.train import THRESHOLDS  # noqa: E402
from zoo.metrics import Confusion  # noqa: E402


def test_each_area_is_held_out_once_and_never_trains_its_own_fold():
    areas = ["b", "a", "c", "a", "b", "c", "c"]
    made = folds.area_folds(areas)
    assert [f.val_area for f in made] == ["a", "b", "c"]
    for fold in made:
        assert {areas[i] for i in fold.val_index} == {fold.val_area}
        assert fold.val_area not in {areas[i] for i in fold.train_index}
        assert sorted(np.concatenate([fold.train_index, fold.val_index])) == list(range(len(areas)))


@pytest.mark.parametrize("areas", [["a", "a"], ["a", None]])
def test_fewer_than_two_areas_or_a_tile_without_area_is_refused(areas):
    with pytest.raises(DataError, match="at least two areas"):
        folds.area_folds(areas)


def feature_set(images=6, copies=2, seed=0):
    rng = np.random.default_rng(seed)
    taps = [rng.normal(size=(copies, images, 4, 4, 3)).astype(np.float16) for _ in range(5)]
    masks = rng.integers(0, 2, (copies, images, 8, 8)).astype(np.uint8)
    return FeatureSet(taps, masks, rng.integers(0, 256, (images, 8, 8, 3), dtype=np.uint8))


def test_a_view_reads_the_shared_encoding_without_copying_it():
    shared = feature_set()
    view = folds.FeatureView(shared, np.array([4, 1]))
    assert (view.count, view.copies) == (2, 2)
    inputs, masks = view.batch(np.array([1, 0]), np.array([0, 1]))
    whole_inputs, whole_masks = shared.batch(np.array([1, 0]), np.array([4, 1]))
    for name in inputs:
        np.testing.assert_array_equal(inputs[name], whole_inputs[name])
    np.testing.assert_array_equal(masks, whole_masks)
    np.testing.assert_array_equal(view.masks, shared.masks[:, [4, 1]])
    shared.taps[0][1, 4] = 7  # a change to the shared encoding shows through the view
    assert (view.batch(np.array([1]), np.array([0]))[0]["tap_s2"] == 7).all()


def test_counts_at_every_threshold_match_the_one_confusion_definition():
    rng = np.random.default_rng(1)
    probs = rng.random((5, 16, 16)).astype(np.float32)
    probs[0, 0, :3] = THRESHOLDS[:3]  # exactly on a threshold counts as building
    masks = rng.integers(0, 2, (5, 16, 16))
    counts = folds.threshold_counts(probs, masks)
    for row, threshold in zip(counts, THRESHOLDS):
        expected = Confusion().update(masks, probs >= threshold)
        assert tuple(row) == (expected.tp, expected.fp, expected.fn, expected.tn)
    assert folds.scores(counts[3]) == Confusion(*counts[3]).scores()


def fold_result(area, ious_by_epoch):
    """A fold whose building IoU at each epoch peaks at threshold index 2."""
    counts = np.zeros((len(ious_by_epoch), len(THRESHOLDS), 4), np.int64)
    for epoch, iou in enumerate(ious_by_epoch):
        for t in range(len(THRESHOLDS)):
            tp = int(1000 * iou) - 10 * abs(t - 2)
            counts[epoch, t] = (tp, 1000 - tp, 0, 5000)
    return folds.FoldResult(area, 10, counts, {}, 0.0, None)


def test_the_schedule_is_the_first_epoch_on_the_plateau_at_its_best_threshold():
    results = [fold_result("a", [0.3, 0.5, 0.6, 0.602]), fold_result("b", [0.2, 0.4, 0.5, 0.5])]
    assert folds.choose_schedule(results) == (3, float(THRESHOLDS[2]))


def test_a_city_left_out_of_the_choice_does_not_move_it():
    late = fold_result("late", [0.1, 0.2, 0.3, 0.9])
    early = [fold_result("a", [0.5, 0.6, 0.6, 0.6]), fold_result("b", [0.4, 0.6, 0.6, 0.59])]
    assert folds.choose_schedule(early + [late])[0] == 4
    assert folds.choose_schedule(early + [late], exclude="late")[0] == 2
    scored = folds.fold_scores(late, 2, float(THRESHOLDS[2]))
    assert scored["building_iou"] == pytest.approx(0.2)
