"""How a served model's decoder adapts to a new city: on K labelled tiles, on the city's
unlabelled imagery (self-training), or both, from cached encoder features.

The encoder stays frozen, so every tile is encoded once per augmented copy and the decoder
trains on the cache (training.features). Self-training: the parent, as served, predicts the
unlabelled tiles; where it is confident its prediction is the label (elsewhere the pixel
trains nothing, zoo.losses.IGNORE), and the student learns it from strongly augmented copies
of the tiles, a harder task than the teacher's, so it must do more than copy the teacher.
"""

from __future__ import annotations

import dataclasses
import math
import time

import keras
import numpy as np

from data import augment
from training.features import FeatureSet, encode
from training.recipe import SERVED
from training.train import EpochProgress, KeepFreedMemory, cosine_adamw, decoder_probabilities, loss_of
from zoo.losses import IGNORE
from zoo.predict import resize, scaled_size
from zoo.unet import decoder_of


@dataclasses.dataclass(frozen=True)
class AdaptSettings:
    """Everything an adaptation does besides its data and seed (recorded in its metadata)."""

    learning_rate: float = 5e-4
    weight_decay: float = 1e-4
    batch_size: int = 16
    epochs: int = 8  # a progress line each; the steps are split evenly over them
    steps_per_tile: float = 1.5  # training steps per tile (labelled and unlabelled), clamped below
    min_steps: int = 40
    max_steps: int = 160
    copies: int = 8  # encoded copies of each labelled tile (copy 0 the original)
    # Flips and quarter turns only: with a few patches of ground, the served recipe's sensor
    # augmentation (blur, colour, farther views) scored lower (experiments/adapt/README.md).
    augmentation: str = "flips"
    confident: float = 0.8  # pseudo-label: building where the teacher says >= this, ground <= 1 - this
    student_augmentation: str = "sensor_shrink"  # the unlabelled tiles the student sees
    student_copies: int = 2  # augmented copies of each unlabelled tile (none the original)
    unlabeled_share: float = 0.5  # of each batch, when labelled and unlabelled tiles both train
    replay_share: float = 0.0  # of each batch, tiles of the cities the parent trained on (if given)
    # "frozen": the decoder's BatchNormalization layers keep the parent's statistics (inference
    # mode) while the rest trains; "train": they learn the adapted batches' statistics, which
    # mostly are augmented copies, unlike the clean tiles served (results/adapt: calibration).
    batchnorm: str = "frozen"
    max_unlabeled: int = 512  # at most this many unlabelled tiles (a seeded choice), for memory

    def steps(self, tiles: int) -> int:
        return int(min(self.max_steps, max(self.min_steps, round(self.steps_per_tile * tiles))))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class MixedBatches(keras.utils.PyDataset):
    """Batches drawn from several feature sets at fixed shares of each batch (a random tile and
    encoded copy each), `steps` a pass; the draw depends on the seed, epoch and batch only."""

    def __init__(self, parts: list[tuple[FeatureSet, int]], steps: int, seed: int):
        super().__init__()
        self.parts, self.steps, self.seed, self.epoch = parts, steps, seed, 0

    def __len__(self):
        return self.steps

    def __getitem__(self, index):
        rng = np.random.default_rng([self.seed, self.epoch, index])
        inputs, masks = [], []
        for features, count in self.parts:
            chosen = rng.integers(0, features.count, count)
            x, y = features.batch(rng.integers(0, features.copies, count), chosen)
            inputs.append(x)
            masks.append(y)
        return {name: np.concatenate([x[name] for x in inputs]) for name in inputs[0]}, np.concatenate(masks)

    def on_epoch_end(self):
        self.epoch += 1

    def release(self) -> None:
        self.parts = None  # see training.train.FeatureBatches.release


def batch_shares(settings: AdaptSettings, labelled: bool, unlabelled: bool, replay: bool) -> tuple[int, ...]:
    """(labelled, unlabelled, replayed) tiles in each batch."""
    replayed = round(settings.batch_size * settings.replay_share) if replay else 0
    size = settings.batch_size - replayed
    if labelled and unlabelled:
        share = round(size * settings.unlabeled_share)
        return size - share, share, replayed
    return (size, 0, replayed) if labelled else (0, size, replayed)


def fine_tune(
    model,
    labelled: FeatureSet | None,
    unlabelled: FeatureSet | None,
    settings: AdaptSettings,
    seed: int,
    progress=print,
    replay: FeatureSet | None = None,
) -> tuple[dict, float]:
    """Train `model`'s decoder in place on the labelled and pseudo-labelled features (and
    `replay`, tiles of the parent's own cities, at `settings.replay_share` of each batch); the
    per-epoch history and the training seconds."""
    tiles = (labelled.count if labelled else 0) + (unlabelled.count if unlabelled else 0)
    if tiles == 0:
        raise ValueError("nothing to adapt on: no labelled and no unlabelled tiles")
    sets = (labelled, unlabelled, replay)
    shares = batch_shares(settings, *(f is not None for f in sets))
    parts = [(f, n) for f, n in zip(sets, shares) if f is not None and n > 0]
    per_epoch = max(1, math.ceil(settings.steps(tiles) / settings.epochs))
    keras.utils.set_random_seed(seed)
    decoder = decoder_of(model)
    norms = batch_norms(decoder) if settings.batchnorm == "frozen" else []
    for layer in norms:
        layer.trainable = False  # Keras 3: also runs it in inference mode inside fit
    decoder.compile(
        optimizer=cosine_adamw(settings.learning_rate, settings.weight_decay, per_epoch * settings.epochs),
        loss=loss_of(SERVED.training),  # bce + dice; pixels labelled IGNORE train nothing
    )
    batches = MixedBatches(parts, per_epoch, seed)
    started = time.time()
    try:
        history = decoder.fit(
            batches,
            epochs=settings.epochs,
            verbose=0,
            shuffle=False,
            callbacks=[KeepFreedMemory(), EpochProgress(progress)],
        )
    finally:
        batches.release()
        for layer in norms:
            layer.trainable = True  # the saved model's layers as the parent's
    return {k: [float(v) for v in vs] for k, vs in history.history.items()}, time.time() - started


def batch_norms(decoder) -> list:
    return [
        layer for layer in decoder._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)
    ]


# ---------------------------------------------------------------- features at serving scales


@dataclasses.dataclass
class ScaledFeatures:
    """Encoded originals of some tiles at each inference scale (scale -> FeatureSet, one copy),
    so any decoder's served probabilities cost a decoder pass, not an encoder pass."""

    by_scale: dict[float, FeatureSet]
    size: tuple[int, int]

    @property
    def count(self) -> int:
        return next(iter(self.by_scale.values())).count

    def subset(self, index: np.ndarray) -> ScaledFeatures:
        return ScaledFeatures({s: take(f, index) for s, f in self.by_scale.items()}, self.size)


def take(features: FeatureSet, index: np.ndarray) -> FeatureSet:
    """The features of the tiles `index` (a copy)."""
    return FeatureSet(
        [tap[:, index] for tap in features.taps], features.masks[:, index], features.images[index]
    )


def encode_scales(model, images: np.ndarray, masks: np.ndarray, scales, progress=print) -> ScaledFeatures:
    """The tiles encoded as `zoo.predict.Segmenter` sees them at each scale: resized (Pillow
    bilinear) for scales below 1. Masks stay at full size (only the probabilities are resized)."""
    height, width = images.shape[1:3]
    by_scale = {}
    for scale in sorted({float(s) for s in scales} | {1.0}, reverse=True):
        shown = images if scale == 1.0 else resized_images(images, scale)
        by_scale[scale] = encode(
            model, shown, masks, copies=1, augmentation="none", seed=0, progress=progress
        )
    return ScaledFeatures(by_scale, (height, width))


def resized_images(images: np.ndarray, scale: float) -> np.ndarray:
    height, width = images.shape[1:3]
    return np.stack([resize(image, *scaled_size(height, width, scale)) for image in images])


def served_probabilities(decoder, features: ScaledFeatures, scales) -> np.ndarray:
    """Each tile's probabilities as served at `scales` (Segmenter.probabilities, no test-time
    views), from cached features."""
    height, width = features.size
    total = np.zeros((features.count, height, width), np.float32)
    for scale in scales:
        total += probabilities_at(decoder, features, float(scale))
    return total / len(scales)


def scale_probabilities(decoder, features: ScaledFeatures) -> dict[float, np.ndarray]:
    """Scale -> each tile's probabilities predicted at that scale (Segmenter.probabilities_at)."""
    return {scale: probabilities_at(decoder, features, scale) for scale in features.by_scale}


def probabilities_at(decoder, features: ScaledFeatures, scale: float) -> np.ndarray:
    """The tiles' probabilities predicted at `scale`, resized back to the tiles' size."""
    height, width = features.size
    probs = decoder_probabilities(decoder, features.by_scale[scale])
    if probs.shape[1:] != (height, width):
        probs = np.stack([resize(p, height, width) for p in probs])
    return probs


# ---------------------------------------------------------------- self-training


def pseudo_masks(probs: np.ndarray, confident: float) -> np.ndarray:
    """1 where the teacher says building with at least `confident`, 0 where it says ground as
    surely, IGNORE between (uint8)."""
    masks = np.full(probs.shape, IGNORE, np.uint8)
    masks[probs >= confident] = 1
    masks[probs <= 1.0 - confident] = 0
    return masks


def student_features(model, images: np.ndarray, masks: np.ndarray, settings: AdaptSettings, seed: int):
    """Only augmented copies of the unlabelled tiles (`student_augmentation`), their pseudo
    masks transformed alike (nearest, so IGNORE stays IGNORE)."""
    pipeline = augment.augmentation(settings.student_augmentation, seed=seed)
    copies = settings.student_copies
    pairs = [
        augment.augment_pair(pipeline, image, mask)
        for _ in range(copies)
        for image, mask in zip(images, masks)
    ]
    shown = encode(
        model, np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]), copies=1,
        augmentation="none", seed=seed, progress=lambda _: None,
    )  # fmt: skip
    # Encoded copy-major as one set; reshaped (a view, not a copy) into `copies` copies.
    count = len(images)
    return FeatureSet(
        [tap.reshape((copies, count) + tap.shape[2:]) for tap in shown.taps],
        shown.masks.reshape((copies, count) + shown.masks.shape[2:]),
        images,
    )


def unlabelled_choice(count: int, settings: AdaptSettings, seed: int) -> np.ndarray:
    """Which of `count` unlabelled tiles self-training uses: all, or a seeded `max_unlabeled`."""
    if count <= settings.max_unlabeled:
        return np.arange(count)
    return np.sort(np.random.default_rng([seed, 2]).choice(count, settings.max_unlabeled, replace=False))
