"""ablations.context: a tile's neighbours are laid around it, and each view crops back to the tile."""
from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image

from ablations import context, data
from zoo.predict import resize


def _tiles(tmp_path, colours: dict[tuple[int, int], int]) -> list[data.Sample]:
    """Constant-colour 256 px tiles at zoom 21, one per (x, y)."""
    (tmp_path / "images").mkdir()
    samples = []
    for (x, y), value in colours.items():
        name = f"town_z21_{x}_{y}"
        path = tmp_path / "images" / f"{name}.png"
        Image.fromarray(np.full((256, 256, 3), value, np.uint8)).save(path)
        samples.append(data.Sample(name, path, pathlib.Path("unused.png"), "town", 21, data.ground_group(name, "town")))
    return samples


def test_neighbours_sit_where_the_tile_grid_puts_them_and_missing_ones_are_mirrored(tmp_path):
    samples = _tiles(tmp_path, {(10, 10): 100, (11, 10): 200, (10, 11): 50})
    centre = samples[0]
    canvas = context.Neighbourhood(samples).canvas(centre, margin=256)
    assert canvas.shape == (768, 768, 3)
    assert (canvas[256:512, 256:512] == 100).all()      # the tile itself
    assert (canvas[256:512, 512:768] == 200).all()      # x + 1 is east
    assert (canvas[512:768, 256:512] == 50).all()       # y + 1 is south (XYZ tiles grow downwards)
    assert (canvas[256:512, 0:256] == 100).all()        # no x - 1 tile: the tile mirrored


def test_a_wide_margin_reaches_the_second_ring_of_neighbours(tmp_path):
    samples = _tiles(tmp_path, {(10, 10): 100, (12, 10): 200, (10, 8): 50})
    canvas = context.Neighbourhood(samples).canvas(samples[0], margin=512)
    assert canvas.shape == (1280, 1280, 3)
    assert (canvas[512:768, 1024:1280] == 200).all()   # x + 2
    assert (canvas[0:256, 512:768] == 50).all()         # y - 2


def test_a_margin_crops_the_neighbourhood_symmetrically(tmp_path):
    samples = _tiles(tmp_path, {(10, 10): 100, (11, 10): 200})
    canvas = context.Neighbourhood(samples).canvas(samples[0], margin=128)
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
    neighbourhood = context.Neighbourhood(samples)
    for scale, margin in [(1.0, 0), (1.0, 128), (0.5, 256), (0.25, 512)]:
        probs = context.view_probabilities(_Brightness(), neighbourhood, samples[0], scale, margin)
        assert probs.shape == (256, 256)
        # the middle of the tile, away from bilinear blur at its edges, is the tile's own value
        np.testing.assert_allclose(probs[32:-32, 32:-32], 102 / 255, atol=1e-3)
