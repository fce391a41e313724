"""Named search spaces: the only place a study is defined.

A study is a training recipe, a budget-independent search space over hyperparameters, and
how those map onto a DecoderConfig and a Recipe. Studies after `decoder_variants` start from
the decoder it selected (read from its best/model.json), so they refine the winner.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

from data.augment import AUGMENTATIONS
from training.recipe import BUDGETS, Budget, Recipe  # noqa: F401  (studies name them)
from zoo.config import CONV_BLOCKS, SKIP_MERGES, UPSAMPLERS, DecoderConfig

OBJECTIVE = "val_building_iou"  # validation building IoU (the strict IoU), maximised


@dataclasses.dataclass(frozen=True)
class Study:
    name: str
    summary: str
    space: Callable  # (hp, base DecoderConfig, seeds) -> None: declares the hyperparameters
    to_trial: Callable  # (values dict, base DecoderConfig) -> (DecoderConfig, Recipe)
    search: str = "grid"  # "grid" or "bayesian"
    starts_from_best_of: str | None = None


def configuration_of(values: dict) -> str:
    """A trial's configuration as "name=value, ...": its hyperparameter values without the seed
    (repeats of one configuration) and the tuner's own bookkeeping (`tuner/...`, e.g. the rung
    of successive halving)."""
    return ", ".join(f"{k}={v}" for k, v in values.items() if k != "seed" and not k.startswith("tuner/"))


def _seed_choice(hp, seeds: int) -> None:
    hp.Choice("seed", list(range(seeds)))


def _decoder_variants_space(hp, base, seeds):
    hp.Choice("upsampler", list(UPSAMPLERS))
    hp.Choice("skip", list(SKIP_MERGES))
    _seed_choice(hp, seeds)


def _decoder_variants_trial(values, base):
    return dataclasses.replace(base, upsampler=values["upsampler"], skip=values["skip"]), Recipe()


def _width_space(hp, base, seeds):
    hp.Choice("width", [0.25, 0.5, 1.0])
    hp.Choice("conv", list(CONV_BLOCKS))
    _seed_choice(hp, seeds)


def _width_trial(values, base):
    return dataclasses.replace(base, width=values["width"], conv=values["conv"]), Recipe()


def _loss_space(hp, base, seeds):
    from zoo.losses import LOSSES  # imports Keras: only when a space is declared, not for --list

    hp.Choice("loss", list(LOSSES))
    _seed_choice(hp, seeds)


def _loss_trial(values, base):
    return base, Recipe(loss=values["loss"])


def _augmentation_space(hp, base, seeds):
    hp.Choice("augmentation", list(AUGMENTATIONS))
    _seed_choice(hp, seeds)


def _augmentation_trial(values, base):
    return base, Recipe(augmentation=values["augmentation"])


def _hparams_space(hp, base, seeds):
    hp.Float("learning_rate", 1e-4, 3e-3, sampling="log")
    hp.Choice("batch_size", [8, 16, 32])
    hp.Float("weight_decay", 1e-6, 1e-3, sampling="log")
    hp.Float("dice_weight", 0.25, 2.0)
    _seed_choice(hp, seeds)


def _hparams_trial(values, base):
    recipe = Recipe(
        learning_rate=values["learning_rate"],
        batch_size=values["batch_size"],
        weight_decay=values["weight_decay"],
        dice_weight=values["dice_weight"],
    )
    return base, recipe


STUDIES = {
    "decoder_variants": Study(
        "decoder_variants",
        "grid of upsampler (transpose, bilinear, nearest, subpixel) x skip merge (concat, add, "
        "attention, none) under one recipe",
        _decoder_variants_space,
        _decoder_variants_trial,
    ),
    "decoder_width": Study(
        "decoder_width",
        "best decoder_variants decoder at widths 0.25/0.5/1.0 x plain or depthwise-separable conv blocks",
        _width_space,
        _width_trial,
        starts_from_best_of="decoder_variants",
    ),
    "loss": Study(
        "loss",
        "best decoder trained with BCE, Dice, BCE+Dice and focal loss",
        _loss_space,
        _loss_trial,
        starts_from_best_of="decoder_variants",
    ),
    "augmentation": Study(
        "augmentation",
        "best decoder trained with no, flip, geometric, strong (geometric + "
        "photometric), sensor (wider scale, resolution loss, blur, colour) and zoom (closer "
        "views, 1.5-4x) augmentation",
        _augmentation_space,
        _augmentation_trial,
        starts_from_best_of="decoder_variants",
    ),
    "hparams": Study(
        "hparams",
        "Bayesian optimisation of learning rate, batch size, weight decay and Dice "
        "weight on the best decoder",
        _hparams_space,
        _hparams_trial,
        search="bayesian",
        starts_from_best_of="decoder_variants",
    ),
}

# decoder_variants trains at width 0.25: at 0.5 the bilinear decoders train at a third of
# the speed on 2 CPU cores, and the width study measures what the narrower decoder costs.
DEFAULT_DECODER = DecoderConfig(upsampler="bilinear", skip="concat", conv="double", width=0.25)


def base_decoder(study: Study, out_dir: Path) -> DecoderConfig:
    """The decoder a study starts from: the selected model of the study it refines, if any."""
    if study.starts_from_best_of is None:
        return DEFAULT_DECODER
    metadata = Path(out_dir) / study.starts_from_best_of / "best" / "model.json"
    if not metadata.is_file():
        return DEFAULT_DECODER
    return DecoderConfig.from_dict(json.loads(metadata.read_text())["config"])


def describe() -> str:
    width = max(map(len, STUDIES))
    return "\n".join(f"{name:<{width}}  {study.summary}" for name, study in STUDIES.items())
