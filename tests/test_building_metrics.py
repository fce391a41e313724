"""Building-level metrics (zoo.metrics): hand-made masks whose answer is known, and a brute-force
reference (scipy labels, IoU from boolean masks) on random masks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from zoo.metrics import (
    BUILDING_METRIC_NAMES,
    BuildingCounts,
    label_buildings,
    match_buildings,
)


def boxes(*corners, shape=(20, 40)) -> np.ndarray:
    """A 0/1 mask with the boxes (top, left, bottom, right), bottom and right exclusive."""
    mask = np.zeros(shape, np.uint8)
    for top, left, bottom, right in corners:
        mask[top:bottom, left:right] = 1
    return mask


def counts(truth, prediction, min_pixels=0) -> tuple[int, int, int]:
    found = BuildingCounts.of(truth, prediction, min_pixels)
    return found.tp, found.fp, found.fn


def test_a_perfect_prediction_matches_every_building_with_iou_one():
    truth = boxes((0, 0, 5, 5), (10, 10, 15, 20), (2, 30, 4, 38))
    found = BuildingCounts.of(truth, truth)
    assert (found.tp, found.fp, found.fn) == (3, 0, 0)
    assert found.scores() == {
        "building_precision": 1.0,
        "building_recall": 1.0,
        "building_f1": 1.0,
        "matched_iou": 1.0,
    }
    assert list(found.scores()) == list(BUILDING_METRIC_NAMES)


def test_a_building_split_evenly_in_two_is_missed_and_both_halves_are_spurious():
    truth = boxes((0, 0, 10, 20))
    halves = boxes((0, 0, 10, 9), (0, 11, 10, 20))  # each IoU 90/200 = 0.45
    assert counts(truth, halves) == (0, 2, 1)


def test_a_building_split_unevenly_matches_its_larger_part():
    truth = boxes((0, 0, 10, 20))
    parts = boxes((0, 0, 10, 15), (0, 17, 10, 20))  # IoU 150/200 and 30/200
    found = BuildingCounts.of(truth, parts)
    assert (found.tp, found.fp, found.fn) == (1, 1, 0)
    assert found.scores()["matched_iou"] == pytest.approx(0.75)


def test_two_buildings_merged_into_one_are_both_missed():
    truth = boxes((0, 0, 10, 9), (0, 11, 10, 20))
    merged = boxes((0, 0, 10, 20))  # IoU 90/200 with each
    assert counts(truth, merged) == (0, 1, 2)


@pytest.mark.parametrize(("shift", "matched"), [(33, True), (34, False)])
def test_a_shifted_building_matches_only_at_iou_half_or_more(shift, matched):
    truth = boxes((0, 0, 3, 100), shape=(3, 200))
    shifted = boxes((0, shift, 3, 100 + shift), shape=(3, 200))
    iou = (100 - shift) / (100 + shift)  # 67/133 = 0.504 and 66/134 = 0.493
    assert (iou >= 0.5) is matched
    found = BuildingCounts.of(truth, shifted)
    assert (found.tp, found.fp, found.fn) == ((1, 0, 0) if matched else (0, 1, 1))
    assert found.scores()["matched_iou"] == pytest.approx(iou if matched else 0.0)


def test_iou_of_exactly_one_half_is_a_match():
    truth = boxes((0, 0, 1, 6), shape=(1, 10))
    shifted = boxes((0, 2, 1, 8), shape=(1, 10))  # 4 shared of 8
    assert match_buildings(label_buildings(truth), label_buildings(shifted)) == [(1, 1, 0.5)]


def test_a_missed_building_and_a_spurious_one():
    truth = boxes((0, 0, 5, 5), (10, 10, 15, 15))
    prediction = boxes((0, 0, 5, 5), (10, 30, 15, 35))
    found = BuildingCounts.of(truth, prediction)
    assert (found.tp, found.fp, found.fn) == (1, 1, 1)
    assert found.scores() == {
        "building_precision": 0.5,
        "building_recall": 0.5,
        "building_f1": 0.5,
        "matched_iou": 1.0,
    }


def test_empty_masks_on_both_sides_count_nothing_and_score_zero():
    empty = np.zeros((8, 8), np.uint8)
    found = BuildingCounts.of(empty, empty)
    assert (found.tp, found.fp, found.fn, found.matched_iou_sum) == (0, 0, 0, 0.0)
    assert found.scores() == dict.fromkeys(BUILDING_METRIC_NAMES, 0.0)  # 0/0 is 0.0
    assert counts(empty, boxes((1, 1, 3, 3), shape=(8, 8))) == (0, 1, 0)
    assert counts(boxes((1, 1, 3, 3), shape=(8, 8)), empty) == (0, 0, 1)


def test_buildings_are_8_connected_components():
    diagonal = np.eye(4, dtype=np.uint8)  # pixels touching only at corners: one building
    assert label_buildings(diagonal).max() == 1
    assert counts(diagonal, diagonal) == (1, 0, 0)


def test_min_pixels_ignores_small_buildings_on_both_sides():
    truth = boxes((0, 0, 5, 5), (10, 10, 11, 12))  # a 2-pixel true speck
    prediction = boxes((0, 0, 5, 5), (15, 30, 16, 33))  # a 3-pixel spurious speck
    assert counts(truth, prediction) == (1, 1, 1)
    assert counts(truth, prediction, min_pixels=3) == (1, 1, 0)
    assert counts(truth, prediction, min_pixels=4) == (1, 0, 0)
    labels = label_buildings(prediction, min_pixels=4)
    assert sorted(np.unique(labels)) == [0, 1]  # renumbered without gaps


def test_counts_sum_over_images_and_accept_mask_layouts():
    truth = boxes((0, 0, 5, 5), (10, 10, 15, 15))
    prediction = boxes((0, 0, 5, 5))
    total = BuildingCounts()
    total.update(truth, prediction)
    total.update(truth[..., None] * 255, prediction[..., None].astype(bool))  # HxWx1, 0/255
    total.update(np.zeros((4, 4)), np.ones((4, 4)))
    assert (total.tp, total.fp, total.fn) == (2, 1, 2)
    assert total == BuildingCounts.of(truth, prediction) + BuildingCounts.of(
        truth, prediction
    ) + BuildingCounts.of(np.zeros((4, 4)), np.ones((4, 4)))
    scores = total.scores()
    assert scores["building_precision"] == pytest.approx(2 / 3)
    assert scores["building_recall"] == pytest.approx(2 / 4)
    p, r = scores["building_precision"], scores["building_recall"]
    assert scores["building_f1"] == pytest.approx(2 * p * r / (p + r))


def test_bad_shapes_name_the_side():
    with pytest.raises(ValueError, match="shape"):
        BuildingCounts.of(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="prediction"):
        BuildingCounts.of(np.zeros((2, 2)), np.zeros((2, 2, 2)))


def test_greedy_order_decides_only_below_one_half():
    truth = boxes((0, 0, 1, 4), (0, 5, 1, 9), shape=(1, 10))
    prediction = boxes((0, 0, 1, 9), shape=(1, 10))  # IoU 4/9 with each true building
    truth_labels, predicted_labels = label_buildings(truth), label_buildings(prediction)
    assert match_buildings(truth_labels, predicted_labels) == []
    # At 0.4 both true buildings qualify, with equal IoU: the lower true label wins.
    assert match_buildings(truth_labels, predicted_labels, iou_threshold=0.4) == [(1, 1, 4 / 9)]


def brute_force(truth, prediction, threshold=0.5) -> tuple[int, int, int, float]:
    """Counts from scipy's 8-connected labels and IoU of boolean masks, pair by pair."""
    eight = np.ones((3, 3), int)
    true_labels, true_count = ndimage.label(truth, structure=eight)
    predicted_labels, predicted_count = ndimage.label(prediction, structure=eight)
    matched, iou_sum, used = 0, 0.0, set()
    for p in range(1, predicted_count + 1):
        mine = predicted_labels == p
        candidates = []
        for t in range(1, true_count + 1):
            theirs = true_labels == t
            iou = (mine & theirs).sum() / (mine | theirs).sum()
            if iou >= threshold and t not in used:
                candidates.append((iou, t))
        assert len(candidates) <= 1  # the uniqueness argued in match_buildings
        if candidates:
            used.add(candidates[0][1])
            matched, iou_sum = matched + 1, iou_sum + candidates[0][0]
    return matched, predicted_count - matched, true_count - matched, iou_sum


@pytest.mark.parametrize("seed", range(40))
def test_counts_equal_a_brute_force_reference_on_random_masks(seed):
    rng = np.random.default_rng(seed)
    truth = ndimage.binary_opening(rng.random((24, 24)) < 0.45)
    noise = rng.random((24, 24)) < 0.15
    prediction = truth ^ noise  # near the truth, so some IoUs straddle 0.5
    tp, fp, fn, iou_sum = brute_force(truth, prediction)
    found = BuildingCounts.of(truth, prediction)
    assert (found.tp, found.fp, found.fn) == (tp, fp, fn)
    assert found.matched_iou_sum == pytest.approx(iou_sum)
