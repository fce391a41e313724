"""Every choice a study offers comes from the zoo's registries, and every registered block,
loss and augmentation is reachable from some study: adding one is one function and one entry."""

from __future__ import annotations

import keras_tuner

from ablations import studies
from data.augment import AUGMENTATIONS
from zoo import blocks, config, losses


def _offered() -> dict[str, set]:
    """{hyperparameter name: every value some study offers for it}."""
    offered: dict[str, set] = {}
    for study in studies.STUDIES.values():
        hp = keras_tuner.HyperParameters()
        study.space(hp, studies.DEFAULT_DECODER, 1)
        for parameter in hp.space:
            offered.setdefault(parameter.name, set()).update(getattr(parameter, "values", []))
    return offered


def test_block_registries_match_the_config_choices():
    assert set(blocks.UPSAMPLERS) == set(config.UPSAMPLERS)
    assert set(blocks.SKIP_MERGES) == set(config.SKIP_MERGES)
    assert set(blocks.CONV_BLOCKS) == set(config.CONV_BLOCKS)


def test_every_registered_choice_is_reachable_from_a_study():
    offered = _offered()
    assert offered["upsampler"] == set(blocks.UPSAMPLERS)
    assert offered["skip"] == set(blocks.SKIP_MERGES)
    assert offered["conv"] == set(blocks.CONV_BLOCKS)
    assert offered["loss"] == set(losses.LOSSES)
    assert offered["augmentation"] == set(AUGMENTATIONS)
