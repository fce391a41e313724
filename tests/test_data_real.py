"""data on the real OAM data, skipped without it (env OAM_DATA, or ../shared/data/oam_buildings)."""

from __future__ import annotations

import csv
import os
import pathlib
import time

import numpy as np
import pytest

from data import folders, splits

REPO = pathlib.Path(__file__).resolve().parents[1]
REAL_DATA = pathlib.Path(os.environ.get("OAM_DATA") or REPO.parent / "shared" / "data" / "oam_buildings")


def _assert_disjoint_groups(split: splits.Split) -> None:
    parts = [{s.group for s in part} for part in (split.train, split.val, split.test)]
    assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]


# --------------------------------------------------------------------------- the real OAM data

needs_real_data = pytest.mark.skipif(
    not (REAL_DATA / "index.csv").is_file(), reason=f"OAM data not found at {REAL_DATA} (set OAM_DATA)"
)


@needs_real_data
def test_real_index_split_by_area_never_shares_ground():
    samples = folders.scan_folder(REAL_DATA, check=False)
    assert len(samples) == 1638
    assert {s.area for s in samples} == {"dar_es_salaam_TZ", "nairobi_KE", "kathmandu_NP"}
    # Each zoom-19 tile comes with its 4 zoom-20 and 16 zoom-21 descendants.
    assert {sum(t.group == s.group for t in samples) for s in samples[::50]} == {21}
    for area in (None, "kathmandu_NP", "dar_es_salaam_TZ"):
        split = splits.split_samples(samples, test_area=area)
        _assert_disjoint_groups(split)
        expected = area or "nairobi_KE"  # middle-sized: 966 / 504 / 168 tiles
        assert {s.area for s in split.test} == {expected}
        assert len(split.test) == sum(s.area == expected for s in samples)
        print(split.description)


@needs_real_data
def test_real_folder_full_check(monkeypatch, capsys):
    """check=True decodes every image and every mask once, and the real tiles pass: 256 x 256
    RGB, masks read as 0/1 whose building fraction and area are those of index.csv."""
    read, calls = {}, []  # path -> (shape, a mask's building fraction); filled by the check's threads

    def recording(reader):
        def read_and_record(path):
            array = reader(path)
            calls.append(pathlib.Path(path))
            read[pathlib.Path(path)] = (array.shape, float(array.mean()) if array.ndim == 2 else None)
            assert array.ndim == 3 or set(np.unique(array)) <= {0, 1}, path
            return array

        return read_and_record

    monkeypatch.setattr(folders, "read_image", recording(folders.read_image))
    monkeypatch.setattr(folders, "read_mask", recording(folders.read_mask))
    started = time.perf_counter()
    samples = folders.scan_folder(REAL_DATA, check=True)
    seconds = time.perf_counter() - started

    with open(REAL_DATA / "index.csv", newline="") as handle:
        index = {pathlib.Path(row["file"]).stem: row for row in csv.DictReader(handle)}
    assert sorted(s.name for s in samples) == sorted(index) and len(samples) == 1638
    assert sorted(calls) == sorted([s.image_path for s in samples] + [s.mask_path for s in samples])
    for sample in samples:
        row = index[sample.name]
        assert (sample.area, sample.zoom) == (row["area"], int(row["zoom"])), sample.name
        assert read[sample.image_path][0] == (256, 256, 3), sample.image_path
        shape, fraction = read[sample.mask_path]
        assert shape == (256, 256), sample.mask_path
        assert fraction == pytest.approx(float(row["building_frac"]), abs=1e-4), sample.mask_path
    with capsys.disabled():
        print(f"\nscan_folder(check=True) on {len(samples)} real tiles: {seconds:.1f} s")
