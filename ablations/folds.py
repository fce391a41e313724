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

from ablations import train
from ablations.heldout import building_iou, scores
from ablations.data.folders import DataError
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
        raise DataError("cross-validation by area needs every tile to have an area (index.csv) "
                        f"and at least two areas besides the test area; found {names}")
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


def threshold_counts(probs: np.ndarray, masks: np.ndarray,
                     thresholds: np.ndarray = train.THRESHOLDS) -> np.ndarray:
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
    tiles: int          # held-out tiles
    counts: np.ndarray  # (epochs, thresholds, 4) validation confusion counts
    history: dict       # training curves by epoch (loss, building_iou, f1)
    train_seconds: float
    model: keras.Model  # the fold's full model after the last epoch


def cross_validate(build_model: Callable[[], keras.Model], recipe, pool, folds: list[Fold],
                   epochs: int, seed: int, schedule_epochs: int | None = None, eager: bool = False,
                   first_model: keras.Model | None = None, callbacks=(), progress=print,
                   last_epoch_only: bool = False, initial_epoch: int = 0,
                   resume: Sequence[tuple[Path, dict]] | None = None,
                   areas: Sequence[str] | None = None) -> list[FoldResult]:
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
        progress(f"  fold {number + 1}/{len(folds)}: validate on {fold.val_area} ({val.count} tiles), "
                 f"train on the other {len(fold.train_index)}"
                 + (f", epochs {initial_epoch + 1}-{epochs}" if initial_epoch else ""))
        history, seconds = train.train_decoder(
            model, recipe, FeatureView(pool, fold.train_index), epochs, seed,
            callbacks=[curve, *callbacks], eager=eager, schedule_epochs=schedule_epochs,
            initial_epoch=initial_epoch, optimizer_state=optimizer_state,
            areas=None if areas is None else np.asarray(areas, dtype=object)[fold.train_index])
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


def run_cv_trial(model, build_model, recipe, pool, area_folds: list[Fold], test, epochs: int,
                 seed: int, samples: int = 4, callbacks=(), eager: bool = False,
                 schedule_epochs: int | None = None, initial_epoch: int = 0,
                 resume: Sequence[tuple[Path, dict]] | None = None) -> train.TrialResult:
    """A study's trial under cross-validation by area: one decoder per fold, one threshold for
    all folds (the best mean held-out building IoU at the last epoch), the objective the mean
    over folds. Test scores are each fold model's, averaged; per-fold numbers are kept as
    `fold_<area>_<metric>` so trials.csv and the table show every fold.

    A rung of successive halving trains to `epochs` of a longer `schedule_epochs` cosine, and
    a survivor continues from its folds' saved state (`resume`, `initial_epoch`). A trial that
    stops short of its schedule is not scored on the test split: only the validation folds
    decide whether it continues, and its fold models are returned to be saved."""
    results = cross_validate(build_model, recipe, pool, area_folds, epochs, seed, eager=eager,
                             first_model=model, callbacks=callbacks, last_epoch_only=True,
                             schedule_epochs=schedule_epochs, initial_epoch=initial_epoch, resume=resume)
    stops_short = schedule_epochs is not None and epochs < schedule_epochs
    tested = None if stops_short else test
    last = np.stack([r.counts[-1] for r in results])  # (folds, thresholds, 4)
    best = int(np.argmax(building_iou(last).mean(axis=0)))
    threshold = float(train.THRESHOLDS[best])
    per_fold = {r.val_area: _fold_metrics(r, best, tested, threshold) for r in results}
    metrics = {key: float(np.mean([m[key] for m in per_fold.values()])) for key in next(iter(per_fold.values()))}
    metrics["val_building_iou_fold_std"] = float(np.std([m["val_building_iou"] for m in per_fold.values()]))
    for area, fold_metrics in per_fold.items():
        metrics.update({f"fold_{area}_{key}": value for key, value in fold_metrics.items()
                        if key in ("val_building_iou", "val_precision", "val_recall", "building_iou")})
    history = {f"{r.val_area}/{key}": values for r in results for key, values in r.history.items()}
    sample_masks = np.zeros((0,), np.uint8)
    if tested is not None:
        sample_masks = (train.probabilities(model, tested)[:samples] >= threshold).astype(np.uint8)
    return train.TrialResult(metrics, history, threshold, sum(r.train_seconds for r in results), sample_masks,
                             fold_models=[r.model for r in results] if stops_short else [])


def _fold_metrics(result: FoldResult, threshold_index: int, test, threshold: float) -> dict:
    fold = {f"val_{key}": value for key, value in scores(result.counts[-1, threshold_index]).items()}
    if test is not None:
        fold.update(train.score(train.probabilities(result.model, test), test.masks[0], threshold))
    return fold
