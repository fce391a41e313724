"""Where a run's tiles and its frozen encoder come from: a data folder, or synthetic scenes."""

from __future__ import annotations

from pathlib import Path

from data import folders, splits, synthetic
from training.errors import UserFacingError
from training.recipe import SEED
from zoo import encoder as zoo_encoder


def load_encoder(weights: str):
    """The frozen encoder, its weights from `weights` ("imagenet", a file, or "none": random)."""
    choice = None if weights == "none" else weights
    try:
        return zoo_encoder.build_encoder(choice)
    except zoo_encoder.WeightsUnavailable as error:
        raise UserFacingError(str(error)) from error


def scan_samples(budget, data: Path | None = None):
    """The checked samples of `data` (None: synthetic scenes, said loudly), cut to the
    budget's image count, with the folder and a one-phrase source for tables."""
    if data is None:
        root = synthetic.default_synthetic_root(budget.synthetic_images, budget.size, SEED)
        print(
            "=" * 72 + f"\nNo --data given: using SYNTHETIC aerial-like scenes in {root}.\n"
            "These numbers say nothing about real imagery.\n" + "=" * 72
        )
        source = f"SYNTHETIC scenes ({root})"
    else:
        root, source = data, str(data)
    try:
        samples = folders.scan_folder(root, check=True)
        if budget.max_images:
            samples = splits.limit(samples, budget.max_images, SEED)
    except folders.DataError as error:
        raise UserFacingError(str(error)) from error
    return samples, root, source
