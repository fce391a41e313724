"""Encoder features computed once and shared by every trial of a study.

The encoder is frozen and its BatchNorm runs in inference mode, so its output for a given
image never changes during training: computing it once per image (and per augmented copy)
instead of at every step removes most of the cost of a trial. Features are float16, which
halves memory; the decoder computes in float32.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from data import augment, instances
from zoo.encoder import tap_name
from zoo.unet import STRIDES, encoder_features

TAP_INPUTS = [tap_name(s) for s in STRIDES]  # zoo.unet.build_decoder's input names


@dataclasses.dataclass
class FeatureSet:
    """taps[k][copy, image] at each stride, masks[copy, image], for `copies` encoded copies."""

    taps: list[np.ndarray]  # one array per name of TAP_INPUTS
    masks: np.ndarray
    images: np.ndarray  # copy 0 (the originals), kept for sample plots and latency checks
    # What training learns instead of the masks (a recipe's target other than "mask"):
    # targets[copy, image] = data.instances.training_target, (H, W, 2) uint8. Scoring still
    # reads `masks`.
    targets: np.ndarray | None = None

    @property
    def copies(self) -> int:
        return self.masks.shape[0]

    @property
    def count(self) -> int:
        return self.masks.shape[1]

    def batch(self, copy_index: np.ndarray, image_index: np.ndarray):
        # A dict keyed by the decoder's input names: Keras' PyDataset adapter rejects a
        # list or tuple of inputs nested inside the (x, y) pair.
        inputs = {
            name: tap[copy_index, image_index].astype(np.float32) for name, tap in zip(TAP_INPUTS, self.taps)
        }
        if self.targets is None:
            return inputs, self.masks[copy_index, image_index][..., None].astype(np.float32)
        return inputs, target_channels(self.targets[copy_index, image_index])

    def nbytes(self) -> int:
        extra = 0 if self.targets is None else self.targets.nbytes
        return sum(t.nbytes for t in self.taps) + self.masks.nbytes + self.images.nbytes + extra


def target_channels(targets: np.ndarray) -> np.ndarray:
    """float32 (..., 2): what is building, and each pixel's loss weight (zoo.losses reads both)."""
    return np.stack([targets[..., 0], targets[..., 1] / instances.WEIGHT_STEPS], axis=-1).astype(np.float32)


def encode(
    model,
    images: np.ndarray,
    masks: np.ndarray,
    copies: int,
    augmentation: str,
    seed: int,
    batch_size: int = 16,
    progress=print,
    allocate=None,
    target: str = "mask",
    labels: np.ndarray | None = None,
) -> FeatureSet:
    """Encode `copies` versions of every image: the original, then augmented ones.

    Features are written batch by batch into arrays allocated once, so the peak is the
    cache itself, not the cache plus a list of chunks plus their concatenation.
    `allocate(tap_number, shape, dtype)` makes each tap's array (default: in memory; e.g. a
    memory-mapped file for a pool larger than the machine's memory).

    A `target` other than "mask" (data.instances.TARGETS) also keeps what training learns from
    each copy, made from the tiles' instance `labels` (data.instances.load_instances; default:
    the masks' components) augmented alike: the images, and so the features, are the ones the
    "mask" target encodes.
    """
    allocate = allocate or (lambda _, shape, dtype: np.empty(shape, dtype))
    started = time.time()
    taps, all_masks = None, np.empty((copies,) + masks.shape, np.uint8)
    all_targets = None
    if target != "mask":
        labels = np.stack([instances.from_components(m) for m in masks]) if labels is None else labels
        all_targets = np.empty((copies,) + masks.shape + (2,), np.uint8)
    for copy, (copy_images, copy_masks) in enumerate(
        augmented_copies(images, masks if all_targets is None else labels, copies, augmentation, seed)
    ):
        if all_targets is not None:
            all_targets[copy] = [instances.training_target(one, target) for one in copy_masks]
            copy_masks = (copy_masks > 0).astype(np.uint8)
        all_masks[copy] = copy_masks
        for start in range(0, len(copy_images), batch_size):
            batch = copy_images[start : start + batch_size].astype(np.float32)
            outputs = [np.asarray(o, np.float16) for o in encoder_features(model, batch)]
            if taps is None:
                taps = [
                    allocate(number, (copies, len(images)) + o.shape[1:], np.float16)
                    for number, o in enumerate(outputs)
                ]
            for tap, output in zip(taps, outputs):
                tap[copy, start : start + len(output)] = output
        progress(f"  encoded copy {copy + 1}/{copies} of {len(images)} images ({time.time() - started:.0f}s)")
    return FeatureSet(taps, all_masks, images, all_targets)


def augmented_copies(images: np.ndarray, masks: np.ndarray, copies: int, augmentation: str, seed: int):
    """The (images, masks) of each copy `encode` encodes, in order: the originals, then
    `copies - 1` versions through one `augmentation` pipeline seeded with `seed`. `masks` may
    be uint16 instance labels: they move as a mask does (nearest) and keep their values."""
    pipeline = augment.augmentation(augmentation, seed=seed) if copies > 1 else None
    for copy in range(copies):
        yield _augmented_copy(pipeline, images, masks, copy)


def _augmented_copy(pipeline, images, masks, copy: int):
    if copy == 0 or pipeline is None:
        return images, masks
    if masks.dtype != np.uint8:  # labels: augment_pair would cut them to uint8
        pairs = [_augmented_labels(pipeline, image, labels) for image, labels in zip(images, masks)]
    else:
        pairs = [augment.augment_pair(pipeline, image, mask) for image, mask in zip(images, masks)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def _augmented_labels(pipeline, image: np.ndarray, labels: np.ndarray):
    """augment.augment_pair for instance labels: the same draws (so the same image), values kept."""
    out = pipeline(image=image, mask=labels)
    if out["image"].shape != image.shape or out["mask"].shape != labels.shape:
        raise ValueError(
            f"augmentation changed the size {image.shape} to {out['image'].shape}; use square tiles"
        )
    return np.ascontiguousarray(out["image"], np.uint8), np.ascontiguousarray(out["mask"], labels.dtype)
