"""zoo metrics (numpy and Keras, one definition) and losses, on small hand-made arrays."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `pytest tests/...` from the repo root without an installed package
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from zoo import losses, metrics  # noqa: E402
from zoo.keras_metrics import PixelMetric  # noqa: E402
from zoo.metrics import METRIC_NAMES, Confusion, confusion_counts, per_image_iou  # noqa: E402

# ---------------------------------------------------------------- helpers

# 3x4 image: TP at (0,0) (0,1) (2,0); FP at (1,0); FN at (0,2) (0,3); the other 6 are TN.
TRUTH = np.array([[1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 0, 0]], np.uint8)
PRED = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]], np.uint8)
HAND = {
    "accuracy": 9 / 12,
    "precision": 3 / 4,
    "recall": 3 / 5,
    "building_iou": 3 / 6,
    "mean_iou": (3 / 6 + 6 / 9) / 2,
    "f1": 6 / 9,
}


def random_batch(seed, n=3, size=16, building_fraction=0.3):
    """Binary truth (n,H,W,1) and logits that agree with it most of the time, never exactly 0."""
    rng = np.random.default_rng(seed)
    truth = (rng.random((n, size, size, 1)) < building_fraction).astype("float32")
    logits = rng.normal(0.0, 2.0, truth.shape) + 1.5 * (2 * truth - 1)
    logits[np.abs(logits) < 1e-3] = 0.5
    return truth, logits.astype("float32")


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# ---------------------------------------------------------------- 4. metrics


def test_confusion_counts_by_hand():
    assert confusion_counts(TRUTH, PRED) == {"tp": 3, "fp": 1, "fn": 2, "tn": 6}
    scores = Confusion().update(TRUTH, PRED).scores()
    assert list(scores) == list(METRIC_NAMES)
    for name, value in HAND.items():
        assert scores[name] == pytest.approx(value), name


def test_confusion_sums_counts_over_updates_and_accepts_mask_layouts():
    confusion = Confusion()
    confusion.update(TRUTH, PRED)
    confusion.update(TRUTH[..., None] * 255, PRED[..., None].astype(bool))  # HxWx1, 0/255 masks
    confusion.update(np.zeros((2, 2)), np.ones((2, 2)))  # 4 false positives
    assert (confusion.tp, confusion.fp, confusion.fn, confusion.tn) == (6, 6, 4, 12)
    assert confusion.scores()["precision"] == pytest.approx(6 / 12)
    with pytest.raises(ValueError, match="shape"):
        confusion.update(np.zeros((2, 2)), np.zeros((2, 3)))


def test_empty_truth_and_prediction_follow_the_documented_conventions():
    empty = np.zeros((8, 8), np.uint8)
    scores = Confusion().update(empty, empty).scores()
    assert scores["building_iou"] == 0.0  # 0/0 is 0.0 for set-level ratios
    assert scores["precision"] == 0.0 and scores["recall"] == 0.0 and scores["f1"] == 0.0
    assert scores["accuracy"] == 1.0
    assert scores["mean_iou"] == 0.5  # (building 0.0 + background 1.0) / 2
    assert per_image_iou(empty, empty) == 1.0  # nothing to find, nothing found
    false_positive = empty.copy()
    false_positive[2, 3] = 1
    assert per_image_iou(empty, false_positive) == 0.0
    assert per_image_iou(TRUTH, PRED) == pytest.approx(0.5)


def test_mean_iou_is_what_keras_meaniou_reports():
    truth, logits = random_batch(seed=0)
    prediction = (logits > 0).astype("int32")
    ours = Confusion().update(truth[..., 0], prediction[..., 0]).scores()
    reference = keras.metrics.MeanIoU(num_classes=2)
    reference.update_state(truth.astype("int32"), prediction)
    assert ours["mean_iou"] == pytest.approx(float(reference.result()), rel=1e-6)
    building = keras.metrics.IoU(num_classes=2, target_class_ids=[1])
    building.update_state(truth.astype("int32"), prediction)
    assert ours["building_iou"] == pytest.approx(float(building.result()), rel=1e-6)
    assert 0.0 < ours["building_iou"] < ours["mean_iou"] < 1.0  # a non-trivial case


def test_f1_is_harmonic_mean_of_precision_and_recall():
    for seed in range(3):
        truth, logits = random_batch(seed)
        s = Confusion().update(truth, logits > 0).scores()
        p, r = s["precision"], s["recall"]
        assert s["f1"] == pytest.approx(2 * p * r / (p + r))


def test_iou_distribution_summarises_per_image_ious():
    summary = metrics.iou_distribution([0.0, 0.5, 1.0])
    assert summary["n"] == 3 and summary["mean"] == pytest.approx(0.5)
    assert summary["median"] == pytest.approx(0.5)
    assert metrics.iou_distribution([]) == {"n": 0}


@pytest.mark.parametrize("mode", ["eager", "graph"])
@pytest.mark.parametrize("threshold", [0.5, 0.7])
def test_keras_pixel_metric_equals_numpy_confusion(threshold, mode):
    batches = [random_batch(seed=10), random_batch(seed=11, n=2, size=24)]
    expected = Confusion()
    for truth, logits in batches:
        expected.update(truth, sigmoid(logits) >= threshold)
    expected = expected.scores()
    for name in METRIC_NAMES:
        metric = PixelMetric(name, threshold=threshold)
        update = tf.function(metric.update_state) if mode == "graph" else metric.update_state
        for truth, logits in batches:
            update(truth, logits)
        assert float(metric.result()) == pytest.approx(expected[name], rel=1e-6), name
        metric.reset_state()
        assert float(metric.result()) == 0.0


def test_keras_metrics_cover_every_metric_name():
    made = metrics.keras_metrics(threshold=0.6)
    assert [m.name for m in made] == list(METRIC_NAMES)
    assert all(m.threshold == 0.6 for m in made)
    restored = PixelMetric.from_config(made[3].get_config())
    assert (restored.metric, restored.threshold) == ("building_iou", 0.6)


# ---------------------------------------------------------------- losses


@pytest.mark.parametrize("kind", losses.LOSSES)
def test_loss_is_minimal_for_perfect_confident_logits(kind):
    truth, _ = random_batch(seed=20, n=2)
    perfect = np.where(truth > 0, 20.0, -20.0).astype("float32")
    loss = losses.SegmentationLoss(kind)
    best = float(loss(truth, perfect))
    unsure = float(loss(truth, np.zeros_like(perfect)))
    wrong = float(loss(truth, -perfect))
    assert best == pytest.approx(0.0, abs=1e-3)
    assert best < unsure < wrong
    assert wrong > 0.5


def test_dice_of_empty_mask_predicted_empty_is_zero():
    empty = np.zeros((2, 8, 8, 1), "float32")
    confident_empty = np.full_like(empty, -20.0)
    assert np.allclose(losses.soft_dice_loss(empty, confident_empty), 0.0, atol=1e-6)
    assert float(losses.SegmentationLoss("dice")(empty, confident_empty)) == pytest.approx(0.0, abs=1e-6)
    # Per image: one empty image predicted empty costs nothing even beside a bad one.
    mixed_truth = np.concatenate([empty[:1], np.ones_like(empty[:1])])
    per_image = np.asarray(losses.soft_dice_loss(mixed_truth, confident_empty))
    assert per_image[0] == pytest.approx(0.0, abs=1e-6) and per_image[1] > 0.9


def test_bce_dice_blends_its_terms_and_rejects_unknown_kinds():
    truth, logits = random_batch(seed=21)
    bce = float(losses.SegmentationLoss("bce")(truth, logits))
    dice = float(losses.SegmentationLoss("dice")(truth, logits))
    blended = float(losses.SegmentationLoss("bce_dice", dice_weight=0.5)(truth, logits))
    assert blended == pytest.approx(bce + 0.5 * dice, rel=1e-5)
    with pytest.raises(ValueError, match="lovasz"):
        losses.SegmentationLoss("lovasz")
    restored = losses.SegmentationLoss.from_config(
        losses.SegmentationLoss("focal", focal_gamma=3.0).get_config()
    )
    assert (restored.kind, restored.focal_gamma) == ("focal", 3.0)
