"""data: folder checks name the bad file, splits never share ground, augmentation keeps
image and mask aligned, synthetic data is deterministic. Fast and offline; the real OAM data is
used when present (env OAM_DATA, or ../shared/data/oam_buildings beside the repository)."""

from __future__ import annotations

import csv
import os
import pathlib
import time

import numpy as np
import pytest
from PIL import Image

from data import augment, folders, splits, synthetic
from data.folders import DataError
from experiments.tutorial_baseline import baseline

REPO = pathlib.Path(__file__).resolve().parents[1]
REAL_DATA = pathlib.Path(os.environ.get("OAM_DATA") or REPO.parent / "shared" / "data" / "oam_buildings")
NAMES = ("town_z21_800_400", "town_z21_801_400", "village_z21_900_500")


# --------------------------------------------------------------------------- helpers


def _image(seed: int, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _mask(seed: int, size: int = 16, on: int = 255) -> np.ndarray:
    return (np.random.default_rng(seed).random((size, size)) > 0.5).astype(np.uint8) * on


def _save(path: pathlib.Path, pixels: np.ndarray, mode: str | None = None) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode).save(path) if mode else Image.fromarray(pixels).save(path)
    return path


def _write_index(root: pathlib.Path, rows: list[tuple]) -> pathlib.Path:
    with open(root / "index.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("file", "area", "zoom"))
        writer.writerows(rows)
    return root / "index.csv"


@pytest.fixture
def folder(tmp_path) -> pathlib.Path:
    """Three valid 16x16 pairs and an index: two tiles in town, one in village."""
    for i, name in enumerate(NAMES):
        _save(tmp_path / "images" / f"{name}.png", _image(i))
        _save(tmp_path / "masks" / f"{name}.png", _mask(i))
    _write_index(tmp_path, [(f"{n}.png", n.split("_")[0], 21) for n in NAMES])
    return tmp_path


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


# --------------------------------------------------------------------------- scanning and checking


def test_valid_folder_scans_sorted_with_index_columns(folder):
    samples = folders.scan_folder(folder)
    assert [s.name for s in samples] == sorted(NAMES)
    town = samples[0]
    assert (town.area, town.zoom, town.group) == ("town", 21, "town/200_100")
    assert town.image_path == folder / "images" / f"{town.name}.png"


def test_without_index_zoom_comes_from_the_name(folder):
    (folder / "index.csv").unlink()
    samples = folders.scan_folder(folder)
    assert {s.area for s in samples} == {None}
    assert samples[0].zoom == 21 and samples[0].group == "town/200_100"


def _delete(path):
    path.unlink()


def _garbage(path):
    path.write_bytes(b"this is not a png at all" * 10)


def _truncate(path):
    path.write_bytes(path.read_bytes()[:60])


BAD = f"{NAMES[1]}.png"  # the one file each defect breaks
DEFECTS = {
    # name: (how to break the folder, the path the message must name)
    "missing mask": (lambda root: _delete(root / "masks" / BAD), f"images/{BAD}"),
    "missing image": (lambda root: _delete(root / "images" / BAD), f"masks/{BAD}"),
    "corrupt image": (lambda root: _garbage(root / "images" / BAD), f"images/{BAD}"),
    "truncated mask": (lambda root: _truncate(root / "masks" / BAD), f"masks/{BAD}"),
    "size mismatch": (lambda root: _save(root / "masks" / BAD, _mask(1, size=8)), f"masks/{BAD}"),
    "non-binary mask": (
        lambda root: _save(root / "masks" / BAD, np.where(_mask(1) > 0, 255, 128).astype(np.uint8)),
        f"masks/{BAD}",
    ),
    "grayscale image": (lambda root: _save(root / "images" / BAD, _image(1)[..., 0]), f"images/{BAD}"),
    "colour mask": (lambda root: _save(root / "masks" / BAD, _image(1)), f"masks/{BAD}"),
    "unknown file in index": (
        lambda root: _write_index(root, [(f"{n}.png", "town", 21) for n in (*NAMES, "ghost")]),
        "index.csv",
    ),
    "image not in index": (
        lambda root: _write_index(root, [(f"{n}.png", "town", 21) for n in NAMES[:2]]),
        "index.csv",
    ),
    "index without file column": (
        lambda root: (root / "index.csv").write_text("name,area\nx,y\n"),
        "index.csv",
    ),
}


@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_each_defect_raises_data_error_naming_the_file(folder, defect):
    break_folder, named = DEFECTS[defect]
    break_folder(folder)
    with pytest.raises(DataError) as caught:
        folders.scan_folder(folder)
    assert str(folder / named) in str(caught.value)


def test_unknown_index_file_is_named(folder):
    _write_index(folder, [(f"{n}.png", "town", 21) for n in (*NAMES, "ghost")])
    with pytest.raises(DataError, match="ghost.png"):
        folders.scan_folder(folder, check=False)


@pytest.mark.parametrize("missing", ["images", "masks"])
def test_missing_subfolder_is_named(folder, missing):
    for path in (folder / missing).iterdir():
        path.unlink()
    (folder / missing).rmdir()
    with pytest.raises(DataError, match=str(folder / missing)):
        folders.scan_folder(folder)


def test_missing_root_and_empty_folder_are_named(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "nowhere")):
        folders.scan_folder(tmp_path / "nowhere")
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(DataError, match=str(tmp_path / "images")):
        folders.scan_folder(tmp_path)


def test_several_bad_files_are_all_reported(folder):
    _garbage(folder / "images" / f"{NAMES[0]}.png")
    _garbage(folder / "images" / f"{NAMES[2]}.png")
    with pytest.raises(DataError) as caught:
        folders.scan_folder(folder)
    assert "2 bad files" in str(caught.value)
    assert NAMES[0] in str(caught.value) and NAMES[2] in str(caught.value)


def test_check_false_does_not_open_files(folder):
    _garbage(folder / "images" / f"{NAMES[1]}.png")
    assert len(folders.scan_folder(folder, check=False)) == 3


# --------------------------------------------------------------------------- reading formats


@pytest.mark.parametrize("on", [1, 255])
def test_masks_0_1_and_0_255_read_as_0_1(tmp_path, on):
    path = _save(tmp_path / "m.png", _mask(3, on=on))
    mask = folders.read_mask(path)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    assert np.array_equal(mask, _mask(3, on=1))


def test_mask_with_identical_rgb_channels_or_opaque_alpha_is_accepted(tmp_path):
    grey = _mask(4)
    rgb = _save(tmp_path / "rgb.png", np.stack([grey] * 3, -1))
    rgba = _save(tmp_path / "rgba.png", np.stack([grey] * 3 + [np.full_like(grey, 255)], -1))
    one_bit = tmp_path / "bits.png"
    Image.fromarray(grey > 0).save(one_bit)
    for path in (rgb, rgba, one_bit):
        assert np.array_equal(folders.read_mask(path), grey // 255), path


@pytest.mark.parametrize("ext", [".jpg", ".jpeg", ".tif", ".TIFF"])
def test_jpeg_and_tiff_images_are_accepted(tmp_path, ext):
    _save(tmp_path / "images" / f"a{ext}", _image(5))
    _save(tmp_path / "masks" / "a.tif", _mask(5))
    (sample,) = folders.scan_folder(tmp_path)
    image = folders.read_image(sample.image_path)
    assert image.shape == (16, 16, 3) and image.dtype == np.uint8


def test_rgba_image_is_read_as_rgb(tmp_path):
    rgb = _image(6)
    alpha = np.random.default_rng(6).integers(0, 256, (16, 16, 1), dtype=np.uint8)
    path = _save(tmp_path / "rgba.png", np.concatenate([rgb, alpha], -1))
    assert np.array_equal(folders.read_image(path), rgb)


def test_jpeg_mask_with_lossy_values_says_why(tmp_path):
    path = _save(tmp_path / "m.jpg", _mask(7))
    with pytest.raises(DataError, match="lossy"):
        folders.read_mask(path)


def test_load_arrays_stacks_and_resizes(folder):
    samples = folders.scan_folder(folder)
    images, masks = folders.load_arrays(samples)
    assert images.shape == (3, 16, 16, 3) and masks.shape == (3, 16, 16)
    assert images.dtype == masks.dtype == np.uint8 and set(np.unique(masks)) <= {0, 1}
    small_images, small_masks = folders.load_arrays(samples, size=8)
    assert small_images.shape == (3, 8, 8, 3) and set(np.unique(small_masks)) <= {0, 1}


def test_load_arrays_refuses_mixed_sizes_without_size(folder):
    _save(folder / "images" / f"{NAMES[2]}.png", _image(2, size=24))
    _save(folder / "masks" / f"{NAMES[2]}.png", _mask(2, size=24))
    samples = folders.scan_folder(folder)
    with pytest.raises(DataError, match=NAMES[2]):
        folders.load_arrays(samples)
    assert folders.load_arrays(samples, size=16)[0].shape == (3, 16, 16, 3)


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


# --------------------------------------------------------------------------- synthetic data


def test_synthetic_scenes_are_deterministic_and_realistic_enough():
    first = [synthetic.synthetic_scene(np.random.default_rng(0), 64) for _ in range(2)]
    assert np.array_equal(first[0][0], first[1][0]) and np.array_equal(first[0][1], first[1][1])
    rng = np.random.default_rng(1)
    scenes = [synthetic.synthetic_scene(rng, 64) for _ in range(50)]
    images, masks = np.stack([s[0] for s in scenes]), np.stack([s[1] for s in scenes])
    assert images.shape == (50, 64, 64, 3) and images.dtype == np.uint8
    assert set(np.unique(masks)) == {0, 1}
    empty = np.mean([m.max() == 0 for m in masks])
    assert 0.15 <= empty <= 0.45, empty


def test_synthetic_folder_passes_the_checks_and_groups_2x2(tmp_path):
    root = synthetic.write_synthetic_folder(tmp_path / "synth", n=12, size=32, seed=0)
    samples = folders.scan_folder(root, check=True)
    assert len(samples) == 12 and {s.area for s in samples} == {"synth_a", "synth_b", "synth_c"}
    assert all(sum(t.group == s.group for t in samples) == 4 for s in samples)
    assert [p.name for p in tmp_path.iterdir()] == ["synth"]  # no staging folder left behind
    with pytest.raises(FileExistsError):
        synthetic.write_synthetic_folder(root, n=2, size=32)


def test_default_synthetic_root_is_cached_under_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    root = synthetic.default_synthetic_root(4, 32, 7)
    assert root.is_relative_to(tmp_path) and len(folders.scan_folder(root)) == 4
    stamp = (root / "index.csv").stat().st_mtime_ns
    assert synthetic.default_synthetic_root(4, 32, 7) == root
    assert (root / "index.csv").stat().st_mtime_ns == stamp


# --------------------------------------------------------------------------- augmentation and tf.data


def _blocky_pair(seed: int, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """An image of 8x8 blocks and a mask read off it, so alignment can be checked after moves."""
    blocks = np.random.default_rng(seed).integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
    image = np.kron(blocks, np.ones((8, 8, 1), np.uint8))
    return image, (image[..., 0] > 128).astype(np.uint8)


def test_flips_keep_image_and_mask_aligned():
    pipeline = augment.augmentation("flips", seed=0)
    image, mask = _blocky_pair(0)
    moved = 0
    for _ in range(8):
        new_image, new_mask = augment.augment_pair(pipeline, image, mask)
        assert np.array_equal(new_mask, (new_image[..., 0] > 128).astype(np.uint8))
        moved += not np.array_equal(new_image, image)
    assert moved > 0


def test_geometric_keeps_alignment_up_to_interpolation():
    pipeline = augment.augmentation("geometric", seed=1)
    image, mask = _blocky_pair(1)
    for _ in range(5):
        new_image, new_mask = augment.augment_pair(pipeline, image, mask)
        assert set(np.unique(new_mask)) <= {0, 1}
        assert np.mean(new_mask == (new_image[..., 0] > 128)) > 0.9


def _edges_through_the_centre(mask: np.ndarray) -> int:
    """Rising edges along the middle row plus the middle column: fewer when the view is closer."""
    middle = mask.shape[0] // 2
    return sum(int(np.sum(np.diff(line.astype(int)) == 1)) for line in (mask[middle], mask[:, middle]))


def test_zoom_shows_a_closer_view_with_the_mask_aligned():
    size = 64
    stripes = np.tile((np.arange(size) // 4 % 2).astype(np.uint8), (size, 1))  # 4 px wide, period 8
    image = np.repeat(stripes[..., None] * 255, 3, axis=2).astype(np.uint8)
    pipeline = augment.augmentation("zoom", seed=4)
    counts = []
    for _ in range(10):
        new_image, new_mask = augment.augment_pair(pipeline, image, stripes)
        assert np.mean(new_mask == (new_image[..., 0] > 128)) > 0.9
        counts.append(_edges_through_the_centre(new_mask))
    # 8 edges at full size; 1.5-4x closer leaves at most 8 / 1.5 * 1.22 (a 15 degree turn).
    assert max(counts) < 8 and np.mean(counts) < 0.7 * 8


@pytest.mark.parametrize("name", augment.AUGMENTATIONS)
def test_every_augmentation_keeps_sizes_and_types(name):
    image, mask = _blocky_pair(2)
    new_image, new_mask = augment.augment_pair(augment.augmentation(name, seed=2), image, mask)
    assert new_image.shape == image.shape and new_mask.shape == mask.shape
    assert new_image.dtype == new_mask.dtype == np.uint8


def test_none_is_identity_and_the_same_seed_repeats_the_stream():
    image, mask = _blocky_pair(3)
    same_image, same_mask = augment.augment_pair(augment.augmentation("none"), image, mask)
    assert np.array_equal(same_image, image) and np.array_equal(same_mask, mask)

    def stream(seed):
        pipeline = augment.augmentation("strong", seed=seed)
        return [augment.augment_pair(pipeline, image, mask)[0] for _ in range(3)]

    assert all(np.array_equal(a, b) for a, b in zip(stream(5), stream(5)))


def test_unknown_augmentation_lists_the_choices():
    with pytest.raises(ValueError, match="none, flips, geometric, strong"):
        augment.augmentation("wild")


def test_tf_dataset_yields_float_batches():
    images = np.stack([_blocky_pair(i, 32)[0] for i in range(5)])
    masks = np.stack([_blocky_pair(i, 32)[1] for i in range(5)])
    flips = augment.augmentation("flips", seed=0)
    dataset = baseline.tf_dataset(images, masks, batch_size=2, pipeline=flips, shuffle_seed=0)
    batches = list(dataset.as_numpy_iterator())
    assert [len(x) for x, _ in batches] == [2, 2, 1]
    x, y = batches[0]
    assert x.shape == (2, 32, 32, 3) and y.shape == (2, 32, 32, 1)
    assert x.dtype == y.dtype == np.float32 and x.max() > 1 and set(np.unique(y)) <= {0.0, 1.0}
    again = list(
        baseline.tf_dataset(
            images, masks, 2, augment.augmentation("flips", seed=0), shuffle_seed=0
        ).as_numpy_iterator()
    )
    assert all(np.array_equal(u[0], v[0]) for u, v in zip(batches, again))  # seeded: same stream
    plain = next(iter(baseline.tf_dataset(images, masks, batch_size=5).as_numpy_iterator()))
    assert np.array_equal(plain[0], images.astype(np.float32))  # no shuffle, no augmentation: as given


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


def test_a_16_bit_rgb_png_is_refused_naming_its_depth(tmp_path):
    """Pillow reads it as 8-bit by keeping the high byte (40000 becomes 156): one rule with the
    server, which refuses it too."""
    import cv2

    from data.folders import DataError, read_image

    path = tmp_path / "deep.png"
    cv2.imwrite(str(path), np.full((4, 4, 3), 40000, np.uint16))
    with pytest.raises(DataError, match=r"deep\.png: a 16-bit PNG"):
        read_image(path)
    shallow = tmp_path / "shallow.png"
    cv2.imwrite(str(shallow), np.full((4, 4, 3), 200, np.uint8))
    assert read_image(shallow).max() == 200
