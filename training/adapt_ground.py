"""Which of a new city's tiles adapt a model and which judge it: drawn by ground group, seeded.

A ground group (data.folders.Sample.group) is one patch of ground seen at every zoom; a tile
of it trains or is scored, never both. The adaptation takes whole groups in a seeded order,
cutting the last one to reach K tiles exactly; what is left of a cut group is set aside, so
no scored tile shows ground the adaptation trained on. NumPy only: reports read it cheaply.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from data.folders import Sample


@dataclasses.dataclass(frozen=True)
class Draw:
    """K tiles to adapt on, the untouched groups' tiles (held-out ground), and the rest of the
    cut group (neither: its ground is partly trained on)."""

    train: list[Sample]
    held_out: list[Sample]
    set_aside: list[Sample]

    def names(self) -> list[str]:
        return [sample.name for sample in self.train]


def group_order(samples: Sequence[Sample], seed: int) -> list[str]:
    """The city's ground groups in a seeded order that depends on the seed and the group names
    only (not on the order the samples come in)."""
    names = sorted({sample.group for sample in samples})
    return [names[i] for i in np.random.default_rng(seed).permutation(len(names))]


def draw_tiles(samples: Sequence[Sample], k: int, seed: int, order: Sequence[str] | None = None) -> Draw:
    """K tiles as whole ground groups in `order` (default: group_order(samples, seed)), the
    last group cut to a seeded random part of itself. Draws are nested: the K tiles of a
    smaller K are among those of a larger one under the same seed."""
    if not 0 <= k <= len(samples):
        raise ValueError(f"cannot draw {k} tiles from {len(samples)}")
    by_group: dict[str, list[Sample]] = {}
    for sample in sorted(samples, key=lambda s: s.name):
        by_group.setdefault(sample.group, []).append(sample)
    order = list(order) if order is not None else group_order(samples, seed)
    rng = np.random.default_rng([seed, 1])
    train, set_aside, used = [], [], 0
    for position, group in enumerate(order):
        members = by_group[group]
        room = k - len(train)
        if room <= 0:
            used = position
            break
        if len(members) <= room:
            train += members
        else:
            # Which part of a cut group trains: seeded, and the same part for every larger room.
            ranked = [members[i] for i in rng.permutation(len(members))]
            train += sorted(ranked[:room], key=lambda s: s.name)
            set_aside += ranked[room:]
        used = position + 1
    held_out = [s for group in order[used:] for s in by_group[group]]
    return Draw(train, sorted(held_out, key=lambda s: s.name), sorted(set_aside, key=lambda s: s.name))


def groups_for(samples: Sequence[Sample], k: int, order: Sequence[str]) -> int:
    """How many groups of `order`, from its start, hold the first K tiles."""
    sizes: dict[str, int] = {}
    for sample in samples:
        sizes[sample.group] = sizes.get(sample.group, 0) + 1
    taken = 0
    for position, group in enumerate(order):
        if taken >= k:
            return position
        taken += sizes[group]
    return len(order)


def halves(samples: Sequence[Sample], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two index arrays into `samples` that split its ground groups in two (seeded, alternating
    in group_order): a threshold chosen on one half scores the other."""
    order = group_order(samples, seed)
    side = {group: position % 2 for position, group in enumerate(order)}
    which = np.array([side[sample.group] for sample in samples])
    return np.flatnonzero(which == 0), np.flatnonzero(which == 1)
