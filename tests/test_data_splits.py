"""data.splits: every zoom of the same ground shares a group; splits by area or at random never share it."""

from __future__ import annotations

import pathlib

import pytest

from data import folders, splits
from data.folders import DataError

# --------------------------------------------------------------------------- helpers


def _samples(names_and_areas) -> list[folders.Sample]:
    """Samples without files, for split tests."""
    return [
        folders.Sample(name, path, path, area, None, folders.ground_group(name, area))
        for name, area in names_and_areas
        for path in [pathlib.Path(f"{name}.png")]
    ]


def _tile_family(area: str, x19: int, y19: int) -> list[tuple[str, str]]:
    """A zoom-19 tile with its 4 zoom-20 children and 16 zoom-21 grandchildren, as in the OAM data."""
    names = [f"{area}_z19_{x19}_{y19}"]
    names += [f"{area}_z20_{2 * x19 + dx}_{2 * y19 + dy}" for dx in range(2) for dy in range(2)]
    names += [f"{area}_z21_{4 * x19 + dx}_{4 * y19 + dy}" for dx in range(4) for dy in range(4)]
    return [(n, area) for n in names]


def _assert_disjoint_groups(split: splits.Split) -> None:
    parts = [{s.group for s in part} for part in (split.train, split.val, split.test)]
    assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]


# --------------------------------------------------------------------------- splits


def test_every_zoom_of_the_same_ground_shares_a_group():
    family = _tile_family("dar", 319292, 270960)
    assert {folders.ground_group(name, area) for name, area in family} == {"dar/319292_270960"}
    assert folders.ground_group("not_a_tile_name") == "not_a_tile_name"


def _three_areas() -> list[folders.Sample]:
    names = []
    for area, count in (("big", 6), ("middle", 3), ("small", 2)):
        for i in range(count):
            names += _tile_family(area, 1000 + i, 2000)
    return _samples(names)


def test_split_by_area_holds_out_exactly_that_area():
    samples = _three_areas()
    split = splits.split_samples(samples, test_area="small")
    assert {s.area for s in split.test} == {"small"}
    assert len(split.test) == sum(s.area == "small" for s in samples)
    assert "small" not in {s.area for s in split.train + split.val}
    assert sum(split.counts().values()) == len(samples)
    _assert_disjoint_groups(split)
    assert "area small" in split.description


def test_default_test_area_is_the_middle_sized_one():
    split = splits.split_samples(_three_areas())
    assert {s.area for s in split.test} == {"middle"}
    assert "middle-sized" in split.description


def test_unknown_test_area_lists_the_known_ones():
    with pytest.raises(DataError, match="big, middle, small"):
        splits.split_samples(_three_areas(), test_area="atlantis")


def test_val_area_validates_on_a_whole_other_city():
    samples = _three_areas()
    split = splits.split_samples(samples, val_area="small")
    assert {s.area for s in split.test} == {"middle"}
    assert {s.area for s in split.val} == {"small"}
    assert {s.area for s in split.train} == {"big"}
    assert len(split.val) == sum(s.area == "small" for s in samples)
    _assert_disjoint_groups(split)
    assert "val = area small" in split.description


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"val_area": "middle"}, "also the test area"),
        ({"val_area": "big", "test_area": "big"}, "also the test area"),
        ({"val_area": "atlantis"}, "big, middle, small"),
    ],
)
def test_bad_val_area_is_refused_with_a_reason(kwargs, message):
    with pytest.raises(DataError, match=message):
        splits.split_samples(_three_areas(), **kwargs)


def test_val_area_needs_three_areas():
    two = [s for s in _three_areas() if s.area != "small"]
    with pytest.raises(DataError, match="at least three areas"):
        splits.split_samples(two, val_area="big")


def test_random_split_without_areas_is_grouped_and_seeded():
    samples = _samples([(n, None) for x in range(20) for n, _ in _tile_family("t", 5000 + x, 7000)])
    first = splits.split_samples(samples, seed=3)
    again = splits.split_samples(samples, seed=3)
    other = splits.split_samples(samples, seed=4)
    _assert_disjoint_groups(first)
    assert [s.name for s in first.test] == [s.name for s in again.test]
    assert [s.name for s in first.val] == [s.name for s in again.val]
    assert [s.name for s in first.test] != [s.name for s in other.test]
    assert first.counts() == {"train": 294, "val": 42, "test": 84}  # whole 21-tile groups: 14/2/4 of 20


def test_split_refuses_a_group_in_two_parts():
    (one,) = _samples([("a_z21_8_8", None)])
    with pytest.raises(ValueError, match="a/2_2"):
        splits.Split(train=[one], val=[], test=[one], description="broken")


def test_limit_is_seeded_and_keeps_whole_groups():
    samples = _samples([(n, None) for x in range(10) for n, _ in _tile_family("t", 100 + x, 100)])
    picked = splits.limit(samples, 50, seed=1)
    assert len(picked) == 50 and picked == splits.limit(samples, 50, seed=1)
    sizes = sorted(sum(s.group == g for s in picked) for g in {s.group for s in picked})
    assert sizes == [8, 21, 21]  # two whole groups, then part of a third to reach n
    assert splits.limit(samples, 10_000, seed=1) == samples


def test_limit_keeps_every_area_in_proportion_so_area_splits_still_work():
    samples = _three_areas()  # 126 / 63 / 42 tiles
    picked = splits.limit(samples, 44, seed=0)
    per_area = {a: sum(s.area == a for s in picked) for a in ("big", "middle", "small")}
    assert per_area == {"big": 24, "middle": 12, "small": 8}
    assert {s.area for s in splits.split_samples(picked).test} == {"middle"}


@pytest.mark.parametrize(
    "name, position",
    [
        ("dar_es_salaam_TZ_z21_1277170_1083843", (21, 1277170, 1083843)),
        ("a_b_z19_3_4", (19, 3, 4)),
        ("z19_3_4", None),  # no prefix
        ("tile_z19_3", None),  # no y
        ("holiday_photo", None),
    ],
)
def test_tile_position_reads_the_xyz_grid_from_the_name(name, position):
    assert folders.tile_position(name) == position
