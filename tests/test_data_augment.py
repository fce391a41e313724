"""data.augment: augmentations keep image and mask aligned and repeat under a seed; tf.data batches."""

from __future__ import annotations

import numpy as np
import pytest

from data import augment
from experiments.tutorial_baseline import baseline

# --------------------------------------------------------------------------- augmentation and tf.data


def _blocky_pair(seed: int, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """An image of 8x8 blocks and a mask read off it, so alignment can be checked after moves."""
    blocks = np.random.default_rng(seed).integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
    image = np.kron(blocks, np.ones((8, 8, 1), np.uint8))
    return image, (image[..., 0] > 128).astype(np.uint8)


def test_flips_keep_image_and_mask_aligned():
    pipeline = augment.augmentation("flips", seed=0)
    image, mask = _blocky_pair(0)
    moved = 0
    for _ in range(8):
        new_image, new_mask = augment.augment_pair(pipeline, image, mask)
        assert np.array_equal(new_mask, (new_image[..., 0] > 128).astype(np.uint8))
        moved += not np.array_equal(new_image, image)
    assert moved > 0


def test_geometric_keeps_alignment_up_to_interpolation():
    pipeline = augment.augmentation("geometric", seed=1)
    image, mask = _blocky_pair(1)
    for _ in range(5):
        new_image, new_mask = augment.augment_pair(pipeline, image, mask)
        assert set(np.unique(new_mask)) <= {0, 1}
        assert np.mean(new_mask == (new_image[..., 0] > 128)) > 0.9


def _edges_through_the_centre(mask: np.ndarray) -> int:
    """Rising edges along the middle row plus the middle column: fewer when the view is closer."""
    middle = mask.shape[0] // 2
    return sum(int(np.sum(np.diff(line.astype(int)) == 1)) for line in (mask[middle], mask[:, middle]))


def test_zoom_shows_a_closer_view_with_the_mask_aligned():
    size = 64
    stripes = np.tile((np.arange(size) // 4 % 2).astype(np.uint8), (size, 1))  # 4 px wide, period 8
    image = np.repeat(stripes[..., None] * 255, 3, axis=2).astype(np.uint8)
    pipeline = augment.augmentation("zoom", seed=4)
    counts = []
    for _ in range(10):
        new_image, new_mask = augment.augment_pair(pipeline, image, stripes)
        assert np.mean(new_mask == (new_image[..., 0] > 128)) > 0.9
        counts.append(_edges_through_the_centre(new_mask))
    # 8 edges at full size; 1.5-4x closer leaves at most 8 / 1.5 * 1.22 (a 15 degree turn).
    assert max(counts) < 8 and np.mean(counts) < 0.7 * 8


@pytest.mark.parametrize("name", augment.AUGMENTATIONS)
def test_every_augmentation_keeps_sizes_and_types(name):
    image, mask = _blocky_pair(2)
    new_image, new_mask = augment.augment_pair(augment.augmentation(name, seed=2), image, mask)
    assert new_image.shape == image.shape and new_mask.shape == mask.shape
    assert new_image.dtype == new_mask.dtype == np.uint8


def test_none_is_identity_and_the_same_seed_repeats_the_stream():
    image, mask = _blocky_pair(3)
    same_image, same_mask = augment.augment_pair(augment.augmentation("none"), image, mask)
    assert np.array_equal(same_image, image) and np.array_equal(same_mask, mask)

    def stream(seed):
        pipeline = augment.augmentation("strong", seed=seed)
        return [augment.augment_pair(pipeline, image, mask)[0] for _ in range(3)]

    assert all(np.array_equal(a, b) for a, b in zip(stream(5), stream(5)))


def test_unknown_augmentation_lists_the_choices():
    with pytest.raises(ValueError, match="none, flips, geometric, strong"):
        augment.augmentation("wild")


def test_tf_dataset_yields_float_batches():
    images = np.stack([_blocky_pair(i, 32)[0] for i in range(5)])
    masks = np.stack([_blocky_pair(i, 32)[1] for i in range(5)])
    flips = augment.augmentation("flips", seed=0)
    dataset = baseline.tf_dataset(images, masks, batch_size=2, pipeline=flips, shuffle_seed=0)
    batches = list(dataset.as_numpy_iterator())
    assert [len(x) for x, _ in batches] == [2, 2, 1]
    x, y = batches[0]
    assert x.shape == (2, 32, 32, 3) and y.shape == (2, 32, 32, 1)
    assert x.dtype == y.dtype == np.float32 and x.max() > 1 and set(np.unique(y)) <= {0.0, 1.0}
    again = list(
        baseline.tf_dataset(
            images, masks, 2, augment.augmentation("flips", seed=0), shuffle_seed=0
        ).as_numpy_iterator()
    )
    assert all(np.array_equal(u[0], v[0]) for u, v in zip(batches, again))  # seeded: same stream
    plain = next(iter(baseline.tf_dataset(images, masks, batch_size=5).as_numpy_iterator()))
    assert np.array_equal(plain[0], images.astype(np.float32))  # no shuffle, no augmentation: as given
