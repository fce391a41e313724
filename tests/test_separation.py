"""Issue 33, buildings not blobs: instance labels, the separation target, the splitter."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from data import folders, instances
from training import crossval
from training.recipe import SERVED, Recipe
from zoo import separate
from zoo.metrics import BuildingCounts, label_buildings

OAM = Path(os.environ.get("OAM_DATA", Path(__file__).resolve().parents[2] / "shared/data/oam_buildings"))


def two_squares(gap: int) -> np.ndarray:
    """Labels 1 and 2: two 12 px squares side by side, `gap` px of ground between them."""
    labels = np.zeros((32, 48), np.uint16)
    labels[10:22, 8:20] = 1
    labels[10:22, 20 + gap : 32 + gap] = 2
    return labels


# --------------------------------------------------------------------------- the weight map


def test_the_weight_map_is_large_on_the_thin_gap_between_two_buildings_and_one_elsewhere():
    labels = two_squares(gap=2)
    weights = instances.separation_weights(labels)
    gap = weights[10:22, 20:22]
    assert gap.min() > 1 + 0.7 * instances.W0  # d1 + d2 = 2 or 3 px: exp(-9/50) = 0.84
    assert np.allclose(weights[labels > 0], 1.0)  # w_c on buildings
    assert abs(weights[0:2, 0:2].mean() - 1.0) < 0.05  # far from both: ~w_c
    assert weights[16, 5] < gap.min()  # beside one building only: the second is far
    # One building has no second neighbour: no separation term anywhere.
    assert np.allclose(instances.separation_weights(np.where(labels == 1, 1, 0)), 1.0)


def test_the_wide_map_weighs_a_wide_gap_as_the_u_net_map_weighs_a_narrow_one():
    labels = two_squares(gap=10)
    narrow = instances.training_target(labels, "separation")[..., 1] / instances.WEIGHT_STEPS
    wide = instances.training_target(labels, "separation_wide")[..., 1] / instances.WEIGHT_STEPS
    middle = (16, 25)  # d1 + d2 = 10
    assert narrow[middle] < 3 < 1 + 0.6 * instances.W0 < wide[middle]
    assert np.array_equal(wide[labels > 0], narrow[labels > 0])


def test_touching_buildings_are_parted_in_the_target_and_weighted_in_the_gap():
    labels = two_squares(gap=0)  # one blob in the mask, two buildings in the outlines
    assert label_buildings(labels > 0).max() == 1
    target = instances.training_target(labels, "separation")
    building, weight = target[..., 0], target[..., 1] / instances.WEIGHT_STEPS
    assert label_buildings(building).max() == 2
    parted = (labels > 0) & (building == 0)
    assert parted.sum() == 2 * 12  # a column on each side of the contact
    assert weight[parted].min() > 1 + 0.5 * instances.W0
    plain = instances.training_target(labels, "mask")
    assert np.array_equal(plain[..., 0], labels > 0) and (plain[..., 1] == instances.WEIGHT_STEPS).all()


# --------------------------------------------------------------------------- instance labels


def test_instance_labels_follow_the_mask_adopt_its_edge_pixels_and_label_unoutlined_buildings():
    mask = np.zeros((20, 30), np.uint8)
    mask[2:8, 2:8] = 1  # outlined, but the mask is a pixel wider on the right
    mask[2:8, 8] = 1
    mask[12:18, 20:26] = 1  # no outline: a building of its own
    outlined = np.zeros(mask.shape, np.int32)
    outlined[2:8, 2:8] = 7
    outlined[0, 29] = 3  # an outline over ground the mask does not hold: dropped
    labels = instances.instance_labels(mask, outlined)
    assert np.array_equal(labels > 0, mask > 0)
    assert set(np.unique(labels)) == {0, 1, 2}
    assert len(np.unique(labels[2:8, 2:9])) == 1  # the edge column joins its outline
    assert labels[12, 20] != labels[2, 2]
    assert np.array_equal(instances.instance_labels(mask, None), instances.from_components(mask))


@pytest.mark.skipif(not (OAM / "labels").is_dir(), reason=f"the OAM data ({OAM}) is not here")
def test_rasterised_outlines_agree_with_the_committed_masks_of_real_tiles():
    samples = folders.scan_folder(OAM, check=False)
    chosen = []
    for area in sorted({s.area for s in samples}):  # per city, its tiles with the most building
        own = [s for s in samples if s.area == area]
        fractions = [folders.read_mask(s.mask_path).mean() for s in own[:: max(1, len(own) // 40)]]
        chosen += [own[:: max(1, len(own) // 40)][i] for i in np.argsort(fractions)[-3:]]
    _, masks = folders.load_arrays(chosen, 256)
    for sample, mask in zip(chosen, masks):
        outlines = instances.load_outlines(str(OAM / "labels" / f"{sample.area}.geojson"))
        rasterised = instances.rasterise_outlines(outlines, sample.name) > 0
        iou = (rasterised & (mask > 0)).sum() / max((rasterised | (mask > 0)).sum(), 1)
        assert mask.any() and iou > 0.95, f"{sample.name}: IoU {iou:.3f}"
    labels = instances.load_instances(chosen, masks)
    assert np.array_equal(labels > 0, masks > 0)
    # Each outline is one building: no more buildings than the mask's blobs and the outlines.
    assert all(labels[i].max() >= label_buildings(masks[i]).max() - 2 for i in range(len(chosen)))


# --------------------------------------------------------------------------- the splitter


def touching_probabilities() -> np.ndarray:
    """Two roofs the model is sure of, joined by ground it scores 0.6: one blob at 0.5."""
    probs = np.full((40, 60), 0.05, np.float32)
    probs[10:30, 5:28] = 0.95
    probs[10:30, 32:55] = 0.95
    probs[10:30, 28:32] = 0.6
    return probs


def test_the_splitter_makes_two_touching_squares_two_buildings_and_keeps_their_pixels():
    probs = touching_probabilities()
    assert label_buildings(probs >= 0.5).max() == 1
    labels = separate.split_buildings(probs)
    assert labels.max() == 2
    assert np.array_equal(labels > 0, probs >= 0.5)  # who owns a pixel changes, not what is building
    mask = separate.building_mask(probs)
    assert label_buildings(mask).max() == 2
    assert ((probs >= 0.5) & ~mask.astype(bool)).sum() <= 20  # a one-pixel seam
    truth = np.zeros(probs.shape, np.uint8)
    truth[10:30, 5:29] = 1  # each under half the blob: the blob matches neither
    truth[10:30, 31:55] = 1
    assert BuildingCounts.of(truth, mask).tp == 2 and BuildingCounts.of(truth, probs >= 0.5).tp == 0


def test_the_splitter_leaves_single_and_unsure_buildings_whole():
    probs = np.full((40, 60), 0.05, np.float32)
    probs[5:20, 5:20] = 0.9
    probs[25:35, 40:50] = 0.6  # no core above 0.8: kept whole, not given to the other
    labels = separate.split_buildings(probs)
    assert labels.max() == 2 and np.array_equal(labels > 0, probs >= 0.5)
    sure = separate.split_buildings(probs, unsure="drop")  # only blobs the model is sure of somewhere
    assert sure.max() == 1 and not sure[25:35, 40:50].any()
    assert not separate.split_buildings(np.zeros((8, 8), np.float32)).any()
    with pytest.raises(ValueError, match="seeds"):
        separate.split_buildings(probs, seeds="peaks")


def test_distance_seeds_split_a_blob_at_a_narrow_neck():
    probs = np.zeros((30, 50), np.float32)
    probs[5:25, 5:22] = 1
    probs[5:25, 28:45] = 1
    probs[14:16, 22:28] = 1  # a 2 px bridge
    assert separate.split_buildings(probs, seeds="probability").max() == 1
    assert separate.split_buildings(probs, seeds="distance").max() == 2


def test_separated_mask_keeps_labelled_buildings_apart_under_8_connectivity():
    labels = np.zeros((10, 10), np.int32)
    labels[2:8, 2:5] = 1
    labels[2:8, 5:8] = 2
    labels[8, 8] = 3  # touches 2 only diagonally: a one-pixel building gives way
    mask = separate.separated_mask(labels)
    components = label_buildings(mask)
    for component in range(1, components.max() + 1):
        assert len(np.unique(labels[components == component])) == 1
    assert components.max() == 2 and mask.sum() == (labels > 0).sum() - 6 - 1


# --------------------------------------------------------------------------- the recipe and training


def test_the_target_is_a_recipe_field_that_older_records_compare_equal_without():
    assert "target" not in Recipe().to_dict() and "target" not in SERVED.training.to_dict()
    assert Recipe(target="separation").to_dict()["target"] == "separation"
    assert Recipe(**Recipe(target="separation").to_dict()).target == "separation"
    with pytest.raises(ValueError, match="target"):
        Recipe(target="blobs")


def test_the_loss_reads_a_weight_channel_and_is_unchanged_by_unit_weights():
    from keras import ops

    from zoo.losses import SegmentationLoss

    rng = np.random.default_rng(0)
    truth = (rng.random((2, 8, 8, 1)) > 0.5).astype(np.float32)
    logits = rng.normal(size=(2, 8, 8, 1)).astype(np.float32)
    loss = SegmentationLoss("bce_dice")
    plain = float(ops.convert_to_numpy(loss(truth, logits)))
    unit = float(ops.convert_to_numpy(loss(np.concatenate([truth, np.ones_like(truth)], -1), logits)))
    heavy = np.ones_like(truth)
    heavy[:, 3:5] = 11.0
    weighted = float(ops.convert_to_numpy(loss(np.concatenate([truth, heavy], -1), logits)))
    assert unit == pytest.approx(plain, rel=1e-6) and weighted > plain


def test_separation_features_are_the_mask_targets_features_and_train():
    from training import features, train
    from zoo import encoder as zoo_encoder
    from zoo import unet

    model = unet.build(SERVED.decoder, encoder=zoo_encoder.build_encoder(None))
    images = np.random.default_rng(0).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    labels = np.zeros((4, 64, 64), np.uint16)
    labels[:, 10:30, 10:30], labels[:, 10:30, 30:50] = 1, 2  # touching: one blob
    masks = (labels > 0).astype(np.uint8)
    quiet = dict(copies=2, augmentation="sensor_shrink", seed=0, progress=lambda line: None)
    plain = features.encode(model, images, masks, **quiet)
    parted = features.encode(model, images, masks, target="separation", labels=labels, **quiet)
    assert all(np.array_equal(a, b) for a, b in zip(plain.taps, parted.taps))
    assert np.array_equal(plain.masks, parted.masks) and plain.targets is None
    assert parted.targets.shape == (2, 4, 64, 64, 2)
    _, y = parted.batch(np.array([0, 1]), np.array([0, 1]))
    assert y.shape == (2, 64, 64, 2) and y[..., 1].max() > 1 + 0.5 * instances.W0
    assert label_buildings(y[0, ..., 0]).max() == 2
    history, _ = train.train_decoder(
        model, Recipe(batch_size=2, target="separation"), parted, epochs=1, seed=0
    )
    assert np.isfinite(history["loss"]).all() and "building_iou" in history


def test_crossval_counts_split_buildings_when_the_recipe_learned_the_gaps():
    probs = touching_probabilities()[None]
    assert label_buildings(crossval.predicted_buildings(probs, Recipe())[0]).max() == 1
    assert label_buildings(crossval.predicted_buildings(probs, Recipe(target="separation"))[0]).max() == 2
