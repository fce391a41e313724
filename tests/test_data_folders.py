"""data.folders: folder checks name the bad file; images and masks read in every accepted format."""

from __future__ import annotations

import csv
import pathlib

import numpy as np
import pytest
from PIL import Image

from data import folders
from data.folders import DataError

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
