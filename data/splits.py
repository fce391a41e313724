"""Leak-free train/val/test splits that move whole ground groups, and seeded subsets of samples."""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import numpy as np

from data.folders import GROUP_ZOOM, DataError, Sample, tile_position

__all__ = ["Split", "limit", "split_samples"]


@dataclasses.dataclass(frozen=True)
class Split:
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    description: str  # one sentence for tables and logs: how the split was made

    def __post_init__(self):
        # The one promise a Split makes, checked wherever one is made.
        seen: dict[str, str] = {}
        for part in ("train", "val", "test"):
            for sample in getattr(self, part):
                if seen.setdefault(sample.group, part) != part:
                    raise ValueError(f"ground group {sample.group!r} is in {seen[sample.group]} and {part}")

    def counts(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def split_samples(
    samples: Sequence[Sample],
    test_area: str | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    seed: int = 0,
    val_area: str | None = None,
) -> Split:
    """Train/val/test moving whole ground groups, so no ground is seen in two splits.

    When every sample has an area (from index.csv) and there are at least two areas, the test
    split is one whole area: `test_area`, or by default the middle-sized area by tile count,
    so neither the largest (most training data) nor the smallest (a noisy score) is held out.
    `test_fraction` is then unused. Without areas, test is a seeded random `test_fraction`
    of the tiles taken as whole groups. Either way val is a seeded random `val_fraction` of
    the tiles left after the test split, taken as whole groups; train is the rest.

    With `val_area`, validation is that whole area instead (cross-city validation): selection
    then rewards what transfers to a city the decoder never trained on, which is the question
    a new city asks, rather than what fits the training cities.
    """
    if not samples:
        raise DataError("no samples to split")
    areas = _tiles_per_area(samples)
    if test_area is not None and not areas:
        raise DataError(f"test_area={test_area!r} given but samples have no areas (no 'area' in index.csv?)")
    if test_area is not None and test_area not in areas:
        raise DataError(
            f"test_area={test_area!r} is not an area of the data; known: {', '.join(sorted(areas))}"
        )
    _check_val_area(val_area, test_area, areas)
    rng = np.random.default_rng(seed)
    unit = _group_word(samples)
    if test_area is not None or len(areas) >= 2:
        test, rest, test_text = _hold_out_area(samples, areas, test_area)
    else:
        test, rest, test_text = _hold_out_groups(samples, test_fraction, rng, unit)
    if val_area is not None:
        val, train, val_text = _hold_out_val_area(rest, val_area)
    else:
        val, train, val_text = _hold_out_val_groups(rest, val_fraction, rng, unit, seed)
    if not train:
        raise DataError(f"too few {unit} to split: nothing left to train on ({len(samples)} samples)")
    return Split(train, val, test, f"{test_text}; {val_text}; train = the other {len(train)} tiles")


def _check_val_area(val_area, test_area, areas) -> None:
    if val_area is None:
        return
    if not areas:
        raise DataError(f"val_area={val_area!r} given but samples have no areas (no 'area' in index.csv?)")
    if val_area not in areas:
        raise DataError(
            f"val_area={val_area!r} is not an area of the data; known: {', '.join(sorted(areas))}"
        )
    if len(areas) < 3:
        raise DataError(f"val_area needs at least three areas (test, val, train); the data has {len(areas)}")
    if val_area == (test_area or _middle_area(areas)):
        raise DataError(f"val_area={val_area!r} is also the test area; choose another")


def _hold_out_val_area(rest, val_area: str) -> tuple[list, list, str]:
    val = [s for s in rest if s.area == val_area]
    train = [s for s in rest if s.area != val_area]
    return val, train, f"val = area {val_area} ({len(val)} tiles, cross-city)"


def _hold_out_val_groups(rest, fraction: float, rng, unit: str, seed: int) -> tuple[list, list, str]:
    val_groups = _draw_groups(rest, fraction, rng)
    val = [s for s in rest if s.group in val_groups]
    train = [s for s in rest if s.group not in val_groups]
    text = (
        f"val = {fraction:.0%} of the remaining tiles as random whole {unit} "
        f"({len(val)} tiles, {len(val_groups)} groups, seed {seed})"
    )
    return val, train, text


def _hold_out_area(samples, areas: dict[str, int], test_area: str | None) -> tuple[list, list, str]:
    _require_groups_within_areas(samples)
    why = ""
    if test_area is None:
        test_area = _middle_area(areas)
        why = f", the middle-sized of {len(areas)} areas"
    test = [s for s in samples if s.area == test_area]
    rest = [s for s in samples if s.area != test_area]
    return test, rest, f"test = area {test_area} ({len(test)} tiles{why})"


def _hold_out_groups(samples, fraction: float, rng: np.random.Generator, unit: str) -> tuple[list, list, str]:
    chosen = _draw_groups(samples, fraction, rng)
    test = [s for s in samples if s.group in chosen]
    rest = [s for s in samples if s.group not in chosen]
    text = f"test = {fraction:.0%} of tiles as random whole {unit} ({len(test)} tiles, {len(chosen)} groups)"
    return test, rest, text


def _tiles_per_area(samples: Sequence[Sample]) -> dict[str, int]:
    """Tile count per area, or {} when any sample lacks an area (then areas cannot split)."""
    if any(s.area is None for s in samples):
        return {}
    counts: dict[str, int] = {}
    for sample in samples:
        counts[sample.area] = counts.get(sample.area, 0) + 1
    return counts


def _middle_area(counts: dict[str, int]) -> str:
    by_size = sorted(counts, key=lambda area: (counts[area], area))
    # With two areas this is the smaller one: holding out the larger would starve training.
    return by_size[(len(by_size) - 1) // 2]


def _group_word(samples: Sequence[Sample]) -> str:
    if all(tile_position(s.name) for s in samples):
        return f"zoom-{GROUP_ZOOM} ground groups"
    return "ground groups"


def _require_groups_within_areas(samples: Sequence[Sample]) -> None:
    area_of: dict[str, str] = {}
    for sample in samples:
        if area_of.setdefault(sample.group, sample.area) != sample.area:
            raise DataError(
                f"{sample.image_path}: its ground group {sample.group!r} spans areas "
                f"{area_of[sample.group]} and {sample.area}; one area cannot be held out cleanly"
            )


def _groups(samples: Iterable[Sample]) -> dict[str, list[Sample]]:
    groups: dict[str, list[Sample]] = {}
    for sample in samples:
        groups.setdefault(sample.group, []).append(sample)
    return groups


def _shuffled_group_names(groups: dict[str, list[Sample]], rng: np.random.Generator) -> list[str]:
    # Sorting first makes the shuffle depend on the seed only, not on the input order.
    names = sorted(groups)
    return [names[i] for i in rng.permutation(len(names))]


def _draw_groups(samples: Sequence[Sample], fraction: float, rng: np.random.Generator) -> set[str]:
    """Random whole groups holding as near `fraction` of the samples as whole groups allow."""
    groups = _groups(samples)
    target = fraction * len(samples)
    chosen: set[str] = set()
    taken = 0
    for name in _shuffled_group_names(groups, rng):
        # Stop when the next group would overshoot more than stopping undershoots; but take
        # at least one group when any is asked for, or a small fraction would give nothing.
        if chosen and taken + len(groups[name]) / 2 > target or target <= 0:
            break
        chosen.add(name)
        taken += len(groups[name])
    return chosen


def limit(samples: Sequence[Sample], n: int, seed: int) -> list[Sample]:
    """At most `n` samples, seeded, in name order: each area keeps its share of n, and within
    an area whole ground groups are taken first, the last one cut if needed to reach the share.

    Keeping every area's share means a limited set can still be split by area; cutting a group
    cannot leak, because split_samples then moves whatever is left of it as one group.
    """
    if n < 0:
        raise ValueError(f"limit n must be >= 0, got {n}")
    if n >= len(samples):
        return list(samples)
    rng = np.random.default_rng(seed)
    by_area: dict[str, list[Sample]] = {}
    for sample in samples:
        by_area.setdefault(sample.area or "", []).append(sample)
    shares = _proportional_shares({area: len(members) for area, members in by_area.items()}, n)
    chosen = [s for area in sorted(by_area) for s in _take_groups(by_area[area], shares[area], rng)]
    return sorted(chosen, key=lambda s: s.name)


def _proportional_shares(counts: dict[str, int], n: int) -> dict[str, int]:
    """Split n in proportion to counts; leftover units go to the largest remainders (Hamilton)."""
    total = sum(counts.values())
    exact = {key: n * count / total for key, count in counts.items()}
    shares = {key: int(value) for key, value in exact.items()}
    by_remainder = sorted(counts, key=lambda key: (-(exact[key] - shares[key]), key))
    for key in by_remainder[: n - sum(shares.values())]:
        shares[key] += 1
    return shares


def _take_groups(samples: Sequence[Sample], n: int, rng: np.random.Generator) -> list[Sample]:
    groups = _groups(samples)
    chosen: list[Sample] = []
    did_not_fit: list[str] = []
    for name in _shuffled_group_names(groups, rng):
        if len(chosen) + len(groups[name]) <= n:
            chosen += groups[name]
        else:
            did_not_fit.append(name)
    for name in did_not_fit:  # fill up with part of a group so n is reached exactly
        room = n - len(chosen)
        if room == 0:
            break
        members = groups[name]
        chosen += [members[i] for i in sorted(rng.permutation(len(members))[:room])]
    return chosen
