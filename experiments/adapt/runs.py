"""One point of the adaptation curve: a fold's decoder (a model that never saw the city) adapted
one way, scored on the city's held-out ground; and the ground each point uses.

Ground, per city and seed (the fold seed is the draw seed): the city's ground groups in a
seeded order (training.adapt_ground); the labelled K tiles are drawn from the front, and the
groups after those the largest feasible K needs are scored, the same for every K and mode.
The unlabelled pool is the front groups (never scored: inductive) or the whole city
(transductive: the scored tiles are in the pool, without their labels).
"""

from __future__ import annotations

import dataclasses
import math
import time

import keras
import numpy as np

from data import augment, folders
from experiments.tutorial_baseline.baseline import tf_dataset
from training import adapt_method, adapt_score, crossval, folds, heldout
from training.adapt_ground import draw_tiles, group_order, groups_for, halves
from training.adapt_method import AdaptSettings, ScaledFeatures
from training.features import encode
from training.recipe import SERVED
from training.train import EpochProgress
from zoo import unet
from zoo.losses import SegmentationLoss
from zoo.metrics import BuildingCounts

CURVE_KS = (0, 8, 16, 32, 64, 128)
MAX_ADAPT_FRACTION = 0.6  # a K may use at most this share of a city's tiles: the rest is scored
MODES = ("adapt", "scratch", "unlabelled", "transductive", "both", "replay", "tutorial")
REPLAY_TILES = 256  # tiles of the parent's own cities a "replay" point mixes in
# Each mode's settings: from scratch the decoder starts random, so at the recipe's own rate.
SETTINGS = {
    "adapt": AdaptSettings(),
    "scratch": AdaptSettings(learning_rate=SERVED.training.learning_rate, batchnorm="train"),
    "unlabelled": AdaptSettings(),
    "transductive": AdaptSettings(),
    "both": AdaptSettings(),
    "replay": AdaptSettings(replay_share=0.25),
    # The TensorFlow tutorial's recipe on the K tiles alone (experiments/tutorial_baseline): its
    # own model, Adam at 1e-3, BCE, live flips, the full model run at every step; the same
    # number of steps as "scratch".
    "tutorial": AdaptSettings(learning_rate=1e-3, augmentation="flips", batchnorm="train"),
}


@dataclasses.dataclass
class City:
    """A city's tiles, encoded once at the served scales, and its pixel ground areas."""

    name: str
    samples: list
    images: np.ndarray
    masks: np.ndarray
    scaled: ScaledFeatures
    pixel_m2: np.ndarray

    @property
    def k_max(self) -> int:
        return k_max_of(len(self.samples))


def k_max_of(tiles: int) -> int:
    """A city's largest K: the largest of CURVE_KS within MAX_ADAPT_FRACTION of its tiles."""
    return max(k for k in CURVE_KS if k <= MAX_ADAPT_FRACTION * tiles)


@dataclasses.dataclass(frozen=True)
class Ground:
    """Index arrays into a city's tiles for one seed: the adaptation side (front groups) and the
    scored ground, split in two halves for thresholds chosen on the other half."""

    order: tuple[str, ...]
    front: np.ndarray
    scored: np.ndarray
    halves: tuple[np.ndarray, np.ndarray]  # into `scored`


def ground_of(city: City, seed: int) -> Ground:
    order = group_order(city.samples, seed)
    front_groups = set(order[: groups_for(city.samples, city.k_max, order)])
    front = np.array([i for i, s in enumerate(city.samples) if s.group in front_groups])
    scored = np.array([i for i, s in enumerate(city.samples) if s.group not in front_groups])
    return Ground(tuple(order), front, scored, halves([city.samples[i] for i in scored], seed))


def parent_model(encoder, weights_path) -> keras.Model:
    """The served recipe's U-Net with a fold's decoder weights."""
    model = unet.build(SERVED.decoder, encoder=encoder)
    unet.decoder_of(model).load_weights(weights_path)
    return model


def run_point(
    city: City,
    ground: Ground,
    parent: keras.Model,
    mode: str,
    k: int,
    seed: int,
    settings: AdaptSettings | None = None,
    replay=None,
) -> dict:
    """Adapt (or not, for K = 0 of "adapt") and score: the record of one point. `replay`: the
    encoded tiles of the parent's own cities, used when settings.replay_share > 0."""
    train = train_index(city, ground, k, seed)
    if mode == "tutorial":
        return tutorial_point(city, ground, train, seed)
    settings = settings or SETTINGS[mode]
    model = parent
    if mode == "scratch":
        keras.utils.set_random_seed(seed)
        model = unet.build(SERVED.decoder, encoder=unet.encoder_of(parent))
    labelled = (
        labelled_set(model, city, train, settings, seed)
        if mode in ("adapt", "scratch", "both", "replay")
        else None
    )
    pool = pool_index(city, ground, mode, settings, seed)
    unlabelled = pseudo_set(parent, city, pool, settings, seed) if len(pool) else None
    history, seconds = {}, 0.0
    if labelled is not None or unlabelled is not None:
        replayed = replay if settings.replay_share > 0 else None
        history, seconds = adapt_method.fine_tune(
            model, labelled, unlabelled, settings, seed, replay=replayed
        )
    record = score(model, city, ground)
    return {
        **record, "history": history, "train_seconds": round(seconds, 1),
        "tiles_used": [city.samples[i].name for i in train], "pool_tiles": len(pool),
        "settings": settings.to_dict(),
    }  # fmt: skip


def train_index(city: City, ground: Ground, k: int, seed: int) -> list[int]:
    """The K labelled tiles of this seed's draw, as indices into the city's tiles."""
    if not k:
        return []
    index = {s.name: i for i, s in enumerate(city.samples)}
    return [index[s.name] for s in draw_tiles(city.samples, k, seed, ground.order).train]


def tutorial_point(city: City, ground: Ground, train: list[int], seed: int) -> dict:
    """The tutorial's model trained on the K tiles `train` alone, scored as the others (its own
    encoder taps, so it runs whole: no cached features)."""
    keras.utils.set_random_seed(seed)
    settings = SETTINGS["tutorial"]
    model = unet.build_tutorial()
    model.compile(keras.optimizers.Adam(settings.learning_rate), SegmentationLoss("bce"))
    pipeline = augment.augmentation(settings.augmentation, seed=seed)
    batches = tf_dataset(
        city.images[train], city.masks[train], settings.batch_size, pipeline, seed, repeat=True
    )
    started = time.time()
    per_epoch = math.ceil(settings.steps(len(train)) / settings.epochs)
    history = model.fit(batches, epochs=settings.epochs, steps_per_epoch=per_epoch, verbose=0, shuffle=False,
                        callbacks=[EpochProgress(print)])  # fmt: skip
    seconds = time.time() - started
    by_scale = adapt_score.scale_probabilities(model, city.images[ground.scored], "none", SERVED.scales)
    record = scored_record(adapt_score.combined(by_scale, SERVED.scales), city, ground)
    return {
        **record, "history": {name: [float(v) for v in vs] for name, vs in history.history.items()},
        "train_seconds": round(seconds, 1), "tiles_used": [city.samples[i].name for i in train],
        "pool_tiles": 0, "settings": settings.to_dict(),
    }  # fmt: skip


def labelled_set(model, city: City, train: list[int], settings: AdaptSettings, seed: int):
    if not train:
        return None
    return encode(
        model, city.images[train], city.masks[train], settings.copies, settings.augmentation, seed,
        progress=lambda _: None,
    )  # fmt: skip


def pool_index(city: City, ground: Ground, mode: str, settings: AdaptSettings, seed: int) -> np.ndarray:
    if mode in ("unlabelled", "both"):
        pool = ground.front
    elif mode == "transductive":
        pool = np.arange(len(city.samples))
    else:
        return np.array([], int)
    return pool[adapt_method.unlabelled_choice(len(pool), settings, seed)]


def pseudo_set(teacher, city: City, pool: np.ndarray, settings: AdaptSettings, seed: int):
    """The student's copies of the pool, labelled where the teacher (the parent as served) is sure."""
    probs = adapt_method.served_probabilities(
        unet.decoder_of(teacher), city.scaled.subset(pool), SERVED.scales
    )
    masks = adapt_method.pseudo_masks(probs, settings.confident)
    return adapt_method.student_features(teacher, city.images[pool], masks, settings, seed)


def score(model, city: City, ground: Ground) -> dict:
    """The scored ground's counts at every threshold per half, and buildings at 0.5 and at each
    half's threshold chosen on the other half."""
    probs = adapt_method.served_probabilities(
        unet.decoder_of(model), city.scaled.subset(ground.scored), SERVED.scales
    )
    return scored_record(probs, city, ground)


def scored_record(probs: np.ndarray, city: City, ground: Ground) -> dict:
    """`score`'s record from the scored ground's served probabilities."""
    masks = city.masks[ground.scored]
    sizes = crossval.min_pixels_of(city.pixel_m2[ground.scored])
    counts = [folds.threshold_counts(probs[h], masks[h]) for h in ground.halves]
    chosen = [heldout.THRESHOLDS[int(np.argmax(heldout.building_iou(counts[1 - h])))] for h in (0, 1)]
    fixed = crossval.building_counts(probs >= heldout.FIXED, masks, sizes)
    crossfit = {size: np.zeros(4) for size in sizes}
    for h, half in enumerate(ground.halves):
        part = crossval.building_counts(
            probs[half] >= chosen[h], masks[half], {s: m[half] for s, m in sizes.items()}
        )
        for size in sizes:
            crossfit[size] += np.asarray(part[size])
    return {
        "scored_tiles": len(ground.scored), "halves": [len(h) for h in ground.halves],
        "counts": [c.tolist() for c in counts], "crossfit_thresholds": [float(t) for t in chosen],
        "buildings": {"fixed": fixed, "crossfit": {s: c.tolist() for s, c in crossfit.items()}},
    }  # fmt: skip


def replay_set(encoder_model, data_samples: list, name: str, size: int, seed: int):
    """REPLAY_TILES seeded tiles of the other cities (the fold's own), encoded as labelled tiles are."""
    others = [s for s in data_samples if s.area != name]
    chosen = sorted(np.random.default_rng([seed, 3]).choice(len(others), REPLAY_TILES, replace=False))
    images, masks = folders.load_arrays([others[i] for i in chosen], size)
    settings = SETTINGS["replay"]
    return encode(encoder_model, images, masks, 2, settings.augmentation, seed, progress=lambda _: None)


def load_city(encoder_model, data_samples: list, name: str, size: int) -> City:
    samples = [s for s in data_samples if s.area == name]
    images, masks = folders.load_arrays(samples, size)
    scaled = adapt_method.encode_scales(encoder_model, images, masks, SERVED.scales, progress=lambda _: None)
    pixel_m2 = np.array([folders.pixel_area_m2(s.name, size) for s in samples])
    return City(name, samples, images, masks, scaled, pixel_m2)


def building_scores(counts) -> dict:
    tp, fp, fn, iou_sum = counts
    return BuildingCounts(int(tp), int(fp), int(fn), float(iou_sum)).scores()
