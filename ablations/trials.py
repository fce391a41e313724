"""A study's trial under cross-validation by area (the studies' use of training.folds)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from training import train
from training.folds import Fold, FoldResult, cross_validate
from training.heldout import building_iou, scores


def run_cv_trial(
    model,
    build_model,
    recipe,
    pool,
    area_folds: list[Fold],
    test,
    epochs: int,
    seed: int,
    samples: int = 4,
    callbacks=(),
    eager: bool = False,
    schedule_epochs: int | None = None,
    initial_epoch: int = 0,
    resume: Sequence[tuple[Path, dict]] | None = None,
) -> train.TrialResult:
    """A study's trial under cross-validation by area: one decoder per fold, one threshold for
    all folds (the best mean held-out building IoU at the last epoch), the objective the mean
    over folds. Test scores are each fold model's, averaged; per-fold numbers are kept as
    `fold_<area>_<metric>` so trials.csv and the table show every fold.

    A rung of successive halving trains to `epochs` of a longer `schedule_epochs` cosine, and
    a survivor continues from its folds' saved state (`resume`, `initial_epoch`). A trial that
    stops short of its schedule is not scored on the test split: only the validation folds
    decide whether it continues, and its fold models are returned to be saved."""
    results = cross_validate(
        build_model,
        recipe,
        pool,
        area_folds,
        epochs,
        seed,
        eager=eager,
        first_model=model,
        callbacks=callbacks,
        last_epoch_only=True,
        schedule_epochs=schedule_epochs,
        initial_epoch=initial_epoch,
        resume=resume,
    )
    stops_short = schedule_epochs is not None and epochs < schedule_epochs
    tested = None if stops_short else test
    last = np.stack([r.counts[-1] for r in results])  # (folds, thresholds, 4)
    best = int(np.argmax(building_iou(last).mean(axis=0)))
    threshold = float(train.THRESHOLDS[best])
    per_fold = {r.val_area: _fold_metrics(r, best, tested, threshold) for r in results}
    metrics = {
        key: float(np.mean([m[key] for m in per_fold.values()])) for key in next(iter(per_fold.values()))
    }
    metrics["val_building_iou_fold_std"] = float(np.std([m["val_building_iou"] for m in per_fold.values()]))
    for area, fold_metrics in per_fold.items():
        metrics.update(
            {
                f"fold_{area}_{key}": value
                for key, value in fold_metrics.items()
                if key in ("val_building_iou", "val_precision", "val_recall", "building_iou")
            }
        )
    history = {f"{r.val_area}/{key}": values for r in results for key, values in r.history.items()}
    sample_masks = np.zeros((0,), np.uint8)
    if tested is not None:
        sample_masks = (train.probabilities(model, tested)[:samples] >= threshold).astype(np.uint8)
    return train.TrialResult(
        metrics,
        history,
        threshold,
        sum(r.train_seconds for r in results),
        sample_masks,
        fold_models=[r.model for r in results] if stops_short else [],
    )


def _fold_metrics(result: FoldResult, threshold_index: int, test, threshold: float) -> dict:
    fold = {f"val_{key}": value for key, value in scores(result.counts[-1, threshold_index]).items()}
    if test is not None:
        fold.update(train.score(train.probabilities(result.model, test), test.masks[0], threshold))
    return fold
