"""ablations.evaluate.scales: a tile's neighbours are laid around it, and each view crops back to the tile."""
from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image

from ablations.data import folders, splits
from ablations.evaluate import scales
from zoo.predict import resize


def _tiles(tmp_path, colours: dict[tuple[int, int], int], area: str = "town") -> list[folders.Sample]:
    """Constant-colour 256 px tiles at zoom 21, one per (x, y); the mask is 'red > 128'."""
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir(exist_ok=True)
    samples = []
    for (x, y), value in colours.items():
        name = f"{area}_z21_{x}_{y}"
        image_path, mask_path = tmp_path / "images" / f"{name}.png", tmp_path / "masks" / f"{name}.png"
        Image.fromarray(np.full((256, 256, 3), value, np.uint8)).save(image_path)
        Image.fromarray(np.full((256, 256), 255 * (value > 128), np.uint8)).save(mask_path)
        samples.append(folders.Sample(name, image_path, mask_path, area, 21, folders.ground_group(name, area)))
    return samples


def test_neighbours_sit_where_the_tile_grid_puts_them_and_missing_ones_are_mirrored(tmp_path):
    samples = _tiles(tmp_path, {(10, 10): 100, (11, 10): 200, (10, 11): 50})
    centre = samples[0]
    canvas = scales.Neighbourhood(samples).canvas(centre, margin=256)
    assert canvas.shape == (768, 768, 3)
    assert (canvas[256:512, 256:512] == 100).all()      # the tile itself
    assert (canvas[256:512, 512:768] == 200).all()      # x + 1 is east
    assert (canvas[512:768, 256:512] == 50).all()       # y + 1 is south (XYZ tiles grow downwards)
    assert (canvas[256:512, 0:256] == 100).all()        # no x - 1 tile: the tile mirrored


def test_a_wide_margin_reaches_the_second_ring_of_neighbours(tmp_path):
    samples = _tiles(tmp_path, {(10, 10): 100, (12, 10): 200, (10, 8): 50})
    canvas = scales.Neighbourhood(samples).canvas(samples[0], margin=512)
    assert canvas.shape == (1280, 1280, 3)
    assert (canvas[512:768, 1024:1280] == 200).all()   # x + 2
    assert (canvas[0:256, 512:768] == 50).all()         # y - 2


def test_a_margin_crops_the_neighbourhood_symmetrically(tmp_path):
    samples = _tiles(tmp_path, {(10, 10): 100, (11, 10): 200})
    canvas = scales.Neighbourhood(samples).canvas(samples[0], margin=128)
    assert canvas.shape == (512, 512, 3)
    assert (canvas[128:384, 384:512] == 200).all()
    assert (canvas[128:384, 128:384] == 100).all()


class _Brightness:
    """A stand-in segmenter: 'probability' = red channel / 255, resized as the real one does."""

    def probabilities_at(self, image, scale):
        height, width = image.shape[:2]
        small = resize(image, round(height * scale), round(width * scale))
        return resize(small[..., 0].astype(np.float32) / 255, height, width)


def test_every_view_returns_the_tile_itself_after_scaling_and_cropping(tmp_path):
    samples = _tiles(tmp_path, {(10, 10): 102, (11, 10): 255, (9, 10): 0})
    neighbourhood = scales.Neighbourhood(samples)
    for scale, margin in [(1.0, 0), (1.0, 128), (0.5, 256), (0.25, 512)]:
        probs = scales.view_probabilities(_Brightness(), neighbourhood, samples[0], scale, margin)
        assert probs.shape == (256, 256)
        # the middle of the tile, away from bilinear blur at its edges, is the tile's own value
        np.testing.assert_allclose(probs[32:-32, 32:-32], 102 / 255, atol=1e-3)


def test_every_scale_set_is_scored_alone_and_with_neighbours_and_selection_uses_neighbours(tmp_path):
    val = _tiles(tmp_path, {(1, 1): 200, (2, 1): 40}, area="valtown")
    test = _tiles(tmp_path, {(5, 5): 220, (6, 5): 20, (5, 6): 180}, area="testtown")
    split = splits.Split([], val, test, "two toy areas")
    rows = scales.evaluate(_Brightness(), split, progress=lambda *_: None)
    assert {(r["setting"], r["label"]) for r in rows} == {
        (setting, label) for setting in scales.SETTINGS for label in scales.SCALE_SETS}
    alone = next(r for r in rows if r["setting"] == "alone" and r["label"] == "1")
    assert alone["val_building_iou"] == 1.0 and alone["building_iou"] == 1.0
    assert alone["test_by_zoom"] == {"21": 1.0}
    assert scales.select(rows)["setting"] == "with neighbours"


def test_apply_writes_the_policy_the_server_then_uses(tmp_path):
    import keras

    from zoo import saving, unet
    from zoo.config import DecoderConfig
    from zoo.predict import Segmenter

    keras.utils.set_random_seed(0)
    path = saving.save(unet.build(DecoderConfig(width=0.25), weights=None), tmp_path / "m.keras",
                       {"threshold": 0.5})
    best = {"scales": [1.0, 0.5], "threshold": 0.35, "val_building_iou": 0.5}
    scales.apply_policy(path, best, tmp_path / "README.md")
    segmenter = Segmenter.from_file(path)  # the checksum still verifies
    assert segmenter.scales == (1.0, 0.5) and segmenter.threshold == 0.35
