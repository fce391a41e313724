"""Cross-validation by area: each fold holds one non-test area out and trains on the others.

The pool of non-test tiles is encoded once; a fold's training and validation sets are views
into that one encoding (`FeatureView`), so a tile is encoded once however many folds use it.
Validation uses copy 0 of each tile, the unaugmented original.

Every fold records, after every epoch, its validation confusion counts at every candidate
threshold (`ValidationCurve`). A study reads the last epoch; the final fit reads the whole
curve to choose how long to train and at which threshold to cut.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Sequence

import keras
import numpy as np

from data.folders import DataError
from training import train
from training.heldout import building_iou, scores
from zoo.unet import decoder_of

COUNTS = ("tp", "fp", "fn", "tn")
TIE = 0.005  # an epoch within this much of the best mean building IoU counts as the plateau


@dataclasses.dataclass(frozen=True)
class Fold:
    val_area: str
    train_index: np.ndarray
    val_index: np.ndarray


def area_folds(areas: Sequence[str]) -> list[Fold]:
    """One fold per area of the pool, in name order. `areas[i]` is tile i's area."""
    areas = np.asarray(areas, dtype=object)
    names = sorted(set(areas), key=str)
    if len(names) < 2 or any(name in (None, "") for name in names):
        raise DataError(
            "cross-validation by area needs every tile to have an area (index.csv) "
            f"and at least two areas besides the test area; found {names}"
        )
    return [Fold(name, np.flatnonzero(areas != name), np.flatnonzero(areas == name)) for name in names]


class FeatureView:
    """Some images of a FeatureSet, without copying its features (duck-types FeatureSet)."""

    def __init__(self, features, index: np.ndarray):
        self.features, self.index = features, np.asarray(index)

    @property
    def copies(self) -> int:
        return self.features.copies

    @property
    def count(self) -> int:
        return len(self.index)

    @property
    def masks(self) -> np.ndarray:
        return self.features.masks[:, self.index]

    @property
    def images(self) -> np.ndarray:
        return self.features.images[self.index]

    def batch(self, copy_index: np.ndarray, image_index: np.ndarray):
        return self.features.batch(copy_index, self.index[image_index])


def threshold_counts(
    probs: np.ndarray, masks: np.ndarray, thresholds: np.ndarray = train.THRESHOLDS
) -> np.ndarray:
    """Confusion counts (tp, fp, fn, tn) of `probs >= t` for every threshold: (T, 4) int64.

    Two histograms (building and background pixels) cut at the thresholds give every row in
    one pass, instead of one pass per threshold."""
    truth = masks.astype(bool)
    edges = np.concatenate([[-np.inf], thresholds, [np.inf]])
    building = np.histogram(probs[truth], edges)[0]
    background = np.histogram(probs[~truth], edges)[0]
    # Pixels at or above threshold k are those in bins k+1 and beyond.
    tp = building[::-1].cumsum()[::-1][1:]
    fp = background[::-1].cumsum()[::-1][1:]
    return np.stack([tp, fp, building.sum() - tp, background.sum() - fp], axis=1).astype(np.int64)


class ValidationCurve(keras.callbacks.Callback):
    """After each epoch (or only the last, `last_only`): the validation counts at every threshold."""

    def __init__(self, val: FeatureView, last_only: bool = False):
        super().__init__()
        self.val, self.last_only, self.counts = val, last_only, []

    def on_epoch_end(self, epoch, logs=None):
        if self.last_only and epoch + 1 < self.params["epochs"]:
            return  # a study reads only the last epoch; scoring the others costs a third of a step
        probs = train.decoder_probabilities(self.model, self.val)
        self.counts.append(threshold_counts(probs, self.val.masks[0]))


@dataclasses.dataclass
class FoldResult:
    val_area: str
    tiles: int  # held-out tiles
    counts: np.ndarray  # (epochs, thresholds, 4) validation confusion counts
    history: dict  # training curves by epoch (loss, building_iou, f1)
    train_seconds: float
    model: keras.Model  # the fold's full model after the last epoch


def cross_validate(
    build_model: Callable[[], keras.Model],
    recipe,
    pool,
    folds: list[Fold],
    epochs: int,
    seed: int,
    schedule_epochs: int | None = None,
    eager: bool = False,
    first_model: keras.Model | None = None,
    callbacks=(),
    progress=print,
    last_epoch_only: bool = False,
    initial_epoch: int = 0,
    resume: Sequence[tuple[Path, dict]] | None = None,
    areas: Sequence[str] | None = None,
) -> list[FoldResult]:
    """Train one decoder per fold (each from the same seeded initial weights) and record its
    validation curve (`last_epoch_only`: its last epoch). `first_model` (already built) is
    trained on the first fold. With `resume` (each fold's decoder weights file and optimizer
    state, saved after `initial_epoch` epochs) every fold continues where it stopped.
    `areas`: each pool tile's area, for a recipe that samples by area."""
    results = []
    for number, fold in enumerate(folds):
        model = first_model if (number == 0 and first_model is not None) else build_model()
        optimizer_state = None
        if resume is not None:
            weights_file, optimizer_state = resume[number]
            decoder_of(model).load_weights(weights_file)
        val = FeatureView(pool, fold.val_index)
        curve = ValidationCurve(val, last_only=last_epoch_only)
        progress(
            f"  fold {number + 1}/{len(folds)}: validate on {fold.val_area} ({val.count} tiles), "
            f"train on the other {len(fold.train_index)}"
            + (f", epochs {initial_epoch + 1}-{epochs}" if initial_epoch else "")
        )
        history, seconds = train.train_decoder(
            model,
            recipe,
            FeatureView(pool, fold.train_index),
            epochs,
            seed,
            callbacks=[curve, *callbacks],
            eager=eager,
            schedule_epochs=schedule_epochs,
            initial_epoch=initial_epoch,
            optimizer_state=optimizer_state,
            areas=None if areas is None else np.asarray(areas, dtype=object)[fold.train_index],
        )
        results.append(FoldResult(fold.val_area, val.count, np.stack(curve.counts), history, seconds, model))
    return results


def mean_fold_iou(results: list[FoldResult], exclude: str | None = None) -> np.ndarray:
    """(epochs, thresholds) building IoU averaged over folds (each city counts once)."""
    kept = [r.counts for r in results if r.val_area != exclude]
    return np.mean([building_iou(counts) for counts in kept], axis=0)


def choose_schedule(results: list[FoldResult], exclude: str | None = None) -> tuple[int, float]:
    """(epochs, threshold): the first epoch whose mean validation building IoU (at its best
    threshold) is within TIE of the best epoch's, and that epoch's best threshold.

    `exclude` leaves one fold out of the choice, so a per-city score is never chosen on
    the city it scores."""
    iou = mean_fold_iou(results, exclude)
    best_per_epoch = iou.max(axis=1)
    epoch = int(np.flatnonzero(best_per_epoch >= best_per_epoch.max() - TIE)[0])
    return epoch + 1, float(train.THRESHOLDS[int(np.argmax(iou[epoch]))])


def fold_scores(result: FoldResult, epochs: int, threshold: float) -> dict:
    index = int(np.flatnonzero(np.isclose(train.THRESHOLDS, threshold))[0])
    return scores(result.counts[epochs - 1, index])
