"""One trial: train a decoder on cached encoder features with a Recipe, then score it."""

from __future__ import annotations

import dataclasses
import math
import time

import keras
import numpy as np

from training import allocator
from training.features import FeatureSet
from training.heldout import THRESHOLDS
from training.machine import median_ms
from training.recipe import Recipe
from zoo.keras_metrics import PixelMetric
from zoo.losses import SegmentationLoss
from zoo.metrics import Confusion, keras_metrics, summarise
from zoo.predict import Segmenter, sigmoid
from zoo.unet import decoder_of


class FeatureBatches(keras.utils.PyDataset):
    """Shuffled batches of cached features; each epoch draws one encoded copy per image.
    With `areas` (each image's area), an epoch of the same length draws each area equally
    often instead of each image once (`area_balanced_order`)."""

    def __init__(
        self,
        features: FeatureSet,
        batch_size: int,
        seed: int,
        first_epoch: int = 0,
        areas: np.ndarray | None = None,
    ):
        super().__init__()
        self.features, self.batch_size, self.areas = features, batch_size, areas
        self.rng = np.random.default_rng(seed)
        # A run continued at `first_epoch` draws the orders the epochs before it drew, so it
        # sees the batches an uninterrupted run would have seen.
        for _ in range(first_epoch + 1):
            self.on_epoch_end()

    def __len__(self):
        return math.ceil(self.features.count / self.batch_size)

    def __getitem__(self, index):
        chosen = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        return self.features.batch(self.copy_of[chosen], chosen)

    def on_epoch_end(self):
        self.order = (
            self.rng.permutation(self.features.count)
            if self.areas is None
            else area_balanced_order(self.rng, self.areas)
        )
        self.copy_of = self.rng.integers(0, self.features.copies, self.features.count)

    def release(self) -> None:
        """Drop the features. `fit` wraps this object in a tf.data generator that TensorFlow's
        global py_func registry keeps alive after training, so without this every trial's
        training features (GiBs) would stay in memory until the process ends."""
        self.features = None


def area_balanced_order(rng: np.random.Generator, areas: np.ndarray) -> np.ndarray:
    """An epoch's order of image indices, as long as `areas`, that holds each area's images
    equally often: a small area's images repeat (each once before any twice), a large one's
    are a random part of them."""
    areas = np.asarray(areas, dtype=object)
    names = sorted(set(areas), key=str)
    quotas = np.diff(np.linspace(0, len(areas), len(names) + 1).round().astype(int))
    drawn = []
    for name, quota in zip(names, quotas):
        own = np.flatnonzero(areas == name)
        rounds = -(-quota // len(own))
        drawn.append(np.concatenate([rng.permutation(own) for _ in range(rounds)])[:quota])
    return rng.permutation(np.concatenate(drawn))


class KeepFreedMemory(keras.callbacks.Callback):
    """training.allocator's settings again at every batch: the generator dataset that `fit` reads a
    PyDataset through resets glibc's trim threshold when it starts."""

    def on_train_batch_begin(self, batch, logs=None):
        allocator.keep_freed_memory()


@dataclasses.dataclass
class TrialResult:
    metrics: dict  # test-split scores at the chosen threshold, plus val scores
    history: dict  # per-epoch training curves
    threshold: float
    train_seconds: float
    sample_masks: np.ndarray  # predictions on the first few test images
    # A successive-halving rung that stops short of its schedule: each fold's model, whose
    # weights and optimizer state a surviving configuration continues from.
    fold_models: list = dataclasses.field(default_factory=list)


def train_decoder(
    model,
    recipe: Recipe,
    train: FeatureSet,
    epochs: int,
    seed: int,
    callbacks=(),
    eager: bool = False,
    schedule_epochs: int | None = None,
    initial_epoch: int = 0,
    optimizer_state: dict | None = None,
    areas: np.ndarray | None = None,
) -> tuple[dict, float]:
    """Train the decoder up to epoch `epochs`. The learning rate follows a cosine over
    `schedule_epochs` (default `epochs`): the final fit stops such a schedule at the epoch
    cross-validation chose, so it trains exactly as the folds it was chosen on did.

    A run stopped after `initial_epoch` epochs continues with `initial_epoch` and the
    optimizer state it saved (`optimizer_variables`; the model already holds its weights):
    the same schedule, moments and batch order as if it had never stopped. `areas`: each
    training image's area, which a recipe sampling by area needs."""
    if recipe.sampling == "areas" and areas is None:
        raise ValueError("Recipe.sampling='areas' needs each training image's area (train_decoder's areas)")
    keras.utils.set_random_seed(seed)
    decoder = decoder_of(model)
    steps = (schedule_epochs or epochs) * math.ceil(train.count / recipe.batch_size)
    decoder.compile(
        optimizer=cosine_adamw(recipe.learning_rate, recipe.weight_decay, steps),
        loss=loss_of(recipe),
        metrics=training_metrics(recipe),
        run_eagerly=eager,
    )
    if optimizer_state is not None:
        decoder.optimizer.build(decoder.trainable_variables)
        if len(optimizer_state) != len(decoder.optimizer.variables):  # Keras would only warn
            raise ValueError(
                f"the saved optimizer state has {len(optimizer_state)} variables, this "
                f"decoder's optimizer {len(decoder.optimizer.variables)}: another architecture?"
            )
        decoder.optimizer.load_own_variables(optimizer_state)
    started = time.time()
    batches = FeatureBatches(
        train,
        recipe.batch_size,
        seed,
        first_epoch=initial_epoch,
        areas=np.asarray(areas, dtype=object) if recipe.sampling == "areas" else None,
    )
    try:
        # shuffle=False: FeatureBatches already draws a seeded order per epoch, which a continued
        # run replays; Keras' own shuffle of a PyDataset's batches would draw from Python's
        # `random`, reseeded above, and so replay the first epochs' visiting order instead.
        history = decoder.fit(
            batches,
            epochs=epochs,
            initial_epoch=initial_epoch,
            verbose=0,
            callbacks=[KeepFreedMemory(), *callbacks],
            shuffle=False,
        )
    finally:
        batches.release()
    return {k: [float(v) for v in vs] for k, vs in history.history.items()}, time.time() - started


def training_metrics(recipe: Recipe) -> list:
    """The building IoU and F1 of each epoch's training batches, on the channel that says what is
    building (a target other than "mask" carries each pixel's weight beside it)."""
    shown = ("building_iou", "f1")
    if recipe.target == "mask":
        return [m for m in keras_metrics() if m.name in shown]
    return [OnTargetChannel(name) for name in shown]


class OnTargetChannel(PixelMetric):
    """A pixel metric of zoo.keras_metrics scored on the first channel of a two-channel target."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(y_true[..., :1], y_pred, sample_weight)


def cosine_adamw(learning_rate: float, weight_decay: float, steps: int) -> keras.optimizers.AdamW:
    """AdamW on a cosine decay over `steps`: large steps early while the decoder is random,
    small ones to settle."""
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, max(1, steps))
    return keras.optimizers.AdamW(schedule, weight_decay=weight_decay)


def loss_of(recipe: Recipe) -> SegmentationLoss:
    return SegmentationLoss(
        recipe.loss,
        dice_weight=recipe.dice_weight,
        label_smoothing=recipe.label_smoothing,
        edge_band=recipe.edge_band,
    )


def optimizer_variables(model) -> dict:
    """The decoder's optimizer state (step count, moments) as arrays, to continue training later."""
    store = {}
    decoder_of(model).optimizer.save_own_variables(store)
    return {key: np.asarray(value) for key, value in store.items()}


def probabilities(model, features: FeatureSet, batch_size: int = 16) -> np.ndarray:
    return decoder_probabilities(decoder_of(model), features, batch_size)


def decoder_probabilities(decoder, features: FeatureSet, batch_size: int = 16) -> np.ndarray:
    """Probabilities for copy 0 (the originals) of every image, from cached features."""
    index = np.arange(features.count)
    out = []
    for start in range(0, features.count, batch_size):
        chosen = index[start : start + batch_size]
        inputs, _ = features.batch(np.zeros_like(chosen), chosen)
        # The compiled predict function, not an eager call: 23-30 against 40 ms a tile.
        logits = np.asarray(decoder.predict_on_batch(inputs))[..., 0]
        out.append(sigmoid(logits))
    return np.concatenate(out)


def choose_threshold(probs: np.ndarray, masks: np.ndarray) -> tuple[float, float]:
    """The threshold with the best validation building IoU (never looks at the test split)."""
    scores = [Confusion().update(masks, probs >= t).scores()["building_iou"] for t in THRESHOLDS]
    best = int(np.argmax(scores))
    return float(THRESHOLDS[best]), float(scores[best])


def score(probs: np.ndarray, masks: np.ndarray, threshold: float) -> dict:
    scores = summarise(zip(masks, probs >= threshold))
    scores["median_image_iou"] = scores.pop("image_iou")["median"]
    return scores


def latency_ms(model, size: int, repeats: int = 10) -> float:
    """Median ms for one size x size image through the full model (encoder included)."""
    segmenter = Segmenter(model)
    image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    segmenter.predict(image)  # trace once
    return median_ms(lambda: segmenter.predict(image), repeats)[0]


def run_trial(
    model,
    recipe: Recipe,
    train: FeatureSet,
    val: FeatureSet,
    test: FeatureSet,
    epochs: int,
    seed: int,
    samples: int = 4,
    callbacks=(),
    eager: bool = False,
) -> TrialResult:
    history, seconds = train_decoder(model, recipe, train, epochs, seed, callbacks, eager)
    val_probs = probabilities(model, val)
    threshold, _ = choose_threshold(val_probs, val.masks[0])
    val_scores = score(val_probs, val.masks[0], threshold)
    test_probs = probabilities(model, test)
    metrics = score(test_probs, test.masks[0], threshold)
    metrics.update({f"val_{k}": v for k, v in val_scores.items()})
    sample_masks = (test_probs[:samples] >= threshold).astype(np.uint8)
    return TrialResult(metrics, history, threshold, seconds, sample_masks)


class EpochProgress(keras.callbacks.Callback):
    """Reports each epoch's logs and keeps its wall seconds (`seconds`, for bench.scaling)."""

    def __init__(self, progress=print):
        super().__init__()
        self.progress, self.seconds = progress, []

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.started)
        shown = ", ".join(f"{k} {v:.3f}" for k, v in (logs or {}).items())
        self.progress(f"    epoch {epoch + 1}/{self.params.get('epochs')}: {shown} ({self.seconds[-1]:.0f}s)")
