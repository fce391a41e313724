"""What one mask may cost `zoo.polygons` (issue 35: a noise-like image took 85 s and stalled the
server): about linear time, bounded holes and vertices a building, a deadline, GDAL fed in
batches. No model is needed.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import shapely
from shapely.geometry import Polygon, box
from test_polygons import blobs, burn

from zoo import polygons

# -- what one mask may cost (issue 35: a noise-like image took 85 s and stalled the server) ------


def noise(side: int, seed: int = 0, density: float = 0.64) -> np.ndarray:
    """Uniform noise at a density where the buildings percolate: one region spanning the
    image, riddled with tens of thousands of holes, what the model makes of a noise image."""
    return (np.random.default_rng(seed).random((side, side)) < density).astype(np.uint8)


def cpu_seconds(function, *args) -> float:

    started = time.process_time()  # CPU, not wall: other processes share this machine
    function(*args)
    return time.process_time() - started


def test_a_noise_mask_costs_about_linear_time_and_bounded_outlines():
    small, large = cpu_seconds(polygons.outlines, noise(512)), cpu_seconds(polygons.outlines, noise(1024))
    # 4x the pixels: about 4x the time (shapely's topology-preserving simplification was
    # about 16x, and took 60 s for one region at 2048 px).
    assert large < 8 * max(small, 0.05), (small, large)
    found = polygons.outlines(noise(1024))
    assert any(footprint.capped for footprint in found)
    for footprint in found:
        parts = getattr(footprint.geometry, "geoms", [footprint.geometry])
        assert sum(len(part.interiors) for part in parts) <= polygons.MAX_HOLES * len(parts)
        assert shapely.get_num_coordinates(footprint.geometry) <= polygons.MAX_VERTICES + 8
        assert footprint.geometry.is_valid
    collection = polygons.footprints_geojson(noise(256, density=0.7))
    capped = [f for f in collection["features"] if f["properties"].get("capped")]
    uncapped = [f for f in collection["features"] if not f["properties"].get("capped")]
    assert capped and all("capped" not in f["properties"] for f in uncapped)


def test_a_building_keeps_its_largest_holes_up_to_the_cap():
    mask = np.zeros((300, 300), np.uint8)
    mask[10:290, 10:290] = 1
    holes = [(20 + 20 * (i // 12), 20 + 20 * (i % 12), 3 + i % 5) for i in range(144)]
    for row, col, side in holes:
        mask[row : row + side, col : col + side] = 0
    (footprint,) = polygons.outlines(mask, tolerance=0)
    assert footprint.capped and len(footprint.geometry.interiors) == polygons.MAX_HOLES
    kept = sorted((Polygon(ring).area for ring in footprint.geometry.interiors), reverse=True)
    largest = sorted((side * side for _, _, side in holes), reverse=True)[: polygons.MAX_HOLES]
    assert kept == largest
    assert footprint.pixels == int(mask.sum())  # the mask's pixels, not the filled outline's


def test_small_holes_are_filled_and_larger_ones_kept():
    mask = burn([box(10, 10, 70, 50)], 60, 80)
    mask[20:22, 20:22] = 0  # 4 px: under min_area, filled before tracing
    mask[30:40, 40:50] = 0  # 100 px: a courtyard
    (footprint,) = polygons.outlines(mask, tolerance=0)
    assert len(footprint.geometry.interiors) == 1 and not footprint.capped
    assert footprint.geometry.equals(box(10, 10, 70, 50).difference(box(40, 30, 50, 40)))
    assert footprint.pixels == int(mask.sum())


def test_a_gap_between_roofs_meeting_at_corners_is_not_filled():
    # Two roofs touching at two corners enclose a 2 x 2 gap only in 4-connectivity: it leaks
    # out diagonally, so it is no hole, and the two roofs stay two buildings.
    mask = np.zeros((8, 8), np.uint8)
    mask[1, 1:4] = mask[2:4, 1] = 1  # an L: top and left of the gap
    mask[2:4, 4] = mask[4, 2:5] = 1  # a reversed L: right and bottom
    found = polygons.outlines(mask, tolerance=0, min_area=2)
    assert len(found) == 2 and sum(f.geometry.area for f in found) == mask.sum()


def test_an_island_in_a_courtyard_stays_a_building_and_the_courtyard_a_hole():
    mask = burn([box(10, 10, 90, 90)], 100, 100)
    mask[30:70, 30:70] = 0
    mask[45:55, 45:55] = 1  # a building inside the courtyard
    outer, inner = polygons.outlines(mask, tolerance=0)
    assert inner.geometry.equals(box(45, 45, 55, 55))
    assert outer.geometry.equals(box(10, 10, 90, 90).difference(box(30, 30, 70, 70)))


def test_outlines_stop_at_their_deadline():

    with pytest.raises(polygons.OutlineBudgetExceeded):
        polygons.outlines(noise(256), deadline=time.monotonic() - 1)
    with pytest.raises(polygons.OutlineBudgetExceeded):
        polygons.footprints_geojson(noise(256), deadline=time.monotonic() - 1)
    assert polygons.outlines(noise(64), deadline=time.monotonic() + 60)


def test_tracing_in_batches_gives_the_outlines_of_one_call(monkeypatch):
    # GDAL holds the GIL through a call, so components go to it in batches (TRACE_PIXELS):
    # with batches of a few components, every outline is the same as traced all at once.
    mask = blobs(200, 300, seed=5)
    mask[150:, :100] = noise(50, seed=6).repeat(2, axis=1)  # and a corner of speckle
    probabilities = np.random.default_rng(2).random(mask.shape).astype(np.float32)
    whole = polygons.outlines(mask, probabilities)
    monkeypatch.setattr(polygons, "TRACE_PIXELS", 64)
    batched = polygons.outlines(mask, probabilities)
    assert len(batched) == len(whole) > 20
    for one, other in zip(batched, whole):
        assert one == other
