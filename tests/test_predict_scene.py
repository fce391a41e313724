"""zoo.scene and app.predict's pipeline: the bands a scene is predicted in put together are
`zoo.predict.Segmenter`'s probabilities, the network starts before the image is read and the
outlines run beside the network, the reader holds at most two windows, and the outline flags
reach the GeoJSON. A numpy forward pass with a 9 x 9 receptive field stands in for the network
(no TensorFlow), so tiles, their overlaps and the reflect padding all show in the result.
"""

from __future__ import annotations

import threading
import time
import warnings

import numpy as np
import pytest
from PIL import Image

from app import pipeline, predict
from zoo.polygons import footprints_geojson
from zoo.predict import Segmenter
from zoo.scene import RowSource, network_pixels, probability_bands

UTM_37S = "EPSG:32737"
HALF_METRE = (0.5, 0, 530_000.0, 0, -0.5, 9_250_000.0)  # 0.5 m pixels in Dar es Salaam


def context_forward(batch: np.ndarray) -> np.ndarray:
    """Logits from the 9 x 9 mean of the red channel around each pixel (edges repeated)."""
    red = np.pad(batch[..., 0].astype(np.float64), ((0, 0), (4, 4), (4, 4)), mode="edge")
    sums = red.cumsum(1).cumsum(2)
    sums = np.pad(sums, ((0, 0), (1, 0), (1, 0)))
    box = (sums[:, 9:, 9:] - sums[:, :-9, 9:] - sums[:, 9:, :-9] + sums[:, :-9, :-9]) / 81
    return (((box - 128) / 12 + 0.01 * batch[..., 1])[..., None]).astype(np.float32)


def scene_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Blocks of 8 px, so a threshold makes building-like blobs of every size."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    return np.ascontiguousarray(blocks.repeat(8, 0).repeat(8, 1)[:height, :width])


def stand_in(scales=(1.0, 0.5), tta="none", forward=context_forward) -> Segmenter:
    return Segmenter(None, forward=forward, scales=scales, tta=tta, metadata={"name": "stand-in"})


def assembled(segmenter, image) -> tuple[np.ndarray, list[tuple[int, int]]]:
    out = np.full(image.shape[:2], np.nan, np.float32)
    bands = []
    for first, end, probabilities in probability_bands(segmenter, RowSource.of(image, segmenter.scales)):
        out[first:end] = probabilities
        bands.append((first, end))
    return out, bands


@pytest.mark.parametrize(
    "size, scales, tta",
    [
        ((1000, 1300), (1.0, 0.5), "none"),  # tiled at both scales
        ((2100, 600), (1.0, 0.5, 0.25), "none"),
        ((300, 200), (1.0, 0.5), "flips"),  # one tile: a single band
        ((900, 700), (1.0,), "rot180"),
        ((700, 700), (2.0, 1.0), "none"),  # a scale above 1: resized back down
    ],
)
def test_bands_put_together_are_the_segmenters_probabilities(size, scales, tta):
    segmenter = stand_in(scales, tta)
    image = scene_image(*size)
    got, bands = assembled(segmenter, image)
    np.testing.assert_array_equal(got, segmenter.probabilities(image))  # to the bit
    assert bands[0][0] == 0 and bands[-1][1] == size[0]
    assert all(end == first for (_, end), (first, _) in zip(bands, bands[1:]))
    assert len(bands) > 1 or max(size) <= 512 * max(scales)


def test_a_scale_that_does_not_halve_the_size_differs_by_rounding_only():
    segmenter = stand_in((1.0, 0.5))
    image = scene_image(1001, 777)
    got, bands = assembled(segmenter, image)
    assert len(bands) > 1
    assert np.abs(got - segmenter.probabilities(image)).max() < 1e-5


def test_the_network_work_reported_adds_up_to_network_pixels():
    segmenter = stand_in((1.0, 0.5), "rot180")
    image = scene_image(1100, 900)
    work = []
    for _ in probability_bands(segmenter, RowSource.of(image, segmenter.scales), on_work=work.append):
        pass
    assert sum(work) == network_pixels(segmenter, 1100, 900)
    # Scale 1: 3 x 3 tiles of 512; scale 0.5 (550 x 450, 614 x 514 with the 32 px of context
    # around it): 2 x 2; each seen twice (rot180).
    assert network_pixels(segmenter, 1100, 900) == 2 * (9 + 4) * 512**2


def test_the_network_starts_on_the_first_rows_before_the_image_is_read():
    image = scene_image(1400, 600)
    source = RowSource(*image.shape[:2])
    rows_there = []

    def forward(batch):
        rows_there.append(source._rows)
        return context_forward(batch)

    segmenter = stand_in((1.0,), forward=forward)
    source.image[:600] = image[:600]
    source.filled(600)
    bands = probability_bands(segmenter, source)
    first, end, probabilities = next(bands)  # only rows [0, 600) are there
    assert (first, end) == (0, 448) and max(rows_there) == 600
    source.image[600:] = image[600:]
    source.finish(segmenter.scales)
    rest = list(bands)
    np.testing.assert_array_equal(
        np.concatenate([probabilities] + [band for *_, band in rest]), segmenter.probabilities(image)
    )


def test_a_failed_read_raises_where_its_rows_are_awaited():
    source = RowSource(1200, 600)
    source.filled(300)
    source.failed(OSError("the disk went away"))
    with pytest.raises(OSError, match="disk went away"):
        list(probability_bands(stand_in((1.0,)), source))


# -- app.predict ------------------------------------------------------------------------------


def write_geotiff(path, image: np.ndarray, crs=UTM_37S, transform=HALF_METRE) -> None:
    import rasterio
    from affine import Affine

    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=image.shape[0],
        width=image.shape[1],
        count=3,
        dtype="uint8",
        crs=crs,
        transform=Affine(*transform),
    ) as dataset:
        dataset.write(np.moveaxis(image, -1, 0))


def test_one_window_gives_the_servers_mask_and_outlines(tmp_path):
    from affine import Affine

    segmenter = stand_in()
    image = scene_image(1000, 1100, seed=1)
    write_geotiff(tmp_path / "scene.tif", image)
    shape = predict.Outlining()  # the served outline, minimum sizes: what the server applies too
    collection, mask = predict.scene_footprints(
        segmenter, tmp_path / "scene.tif", keep_mask=True, shape=shape
    )
    probabilities = segmenter.probabilities(image)
    np.testing.assert_array_equal(mask, segmenter.predict(image))
    whole = footprints_geojson(
        mask,
        probabilities,
        Affine(*HALF_METRE),
        UTM_37S,
        outline=shape.outline,
        min_area_m2=shape.min_area_m2,
    )
    assert collection["parts"] == {"count": 1, "window": predict.WINDOW, "margin": 0}
    assert collection["count"] == whole["count"] > 10
    # Buildings a band's edge cuts are joined, then simplified: equal up to where that meets.
    assert collection["total_area_m2"] == pytest.approx(whole["total_area_m2"], rel=1e-3)
    same = [a == b for a, b in zip(collection["features"], whole["features"])]
    assert sum(same) > 0.8 * len(same)


def test_an_image_of_one_band_gives_exactly_the_servers_geojson():
    from app.inputs import Upload

    segmenter = stand_in()
    image = scene_image(400, 300, seed=2)
    shape = predict.Outlining(min_pixels=20)
    collection, mask = predict.footprints(segmenter, Upload(image, why_pixels="a PNG"), shape)
    whole = footprints_geojson(
        segmenter.predict(image), segmenter.probabilities(image), why_pixels="a PNG", min_pixels=20
    )
    np.testing.assert_array_equal(mask, segmenter.predict(image))
    assert collection["features"] == whole["features"] and collection["count"] > 3


def test_a_scene_over_the_window_shows_progress_and_keeps_two_windows_at_most(tmp_path, monkeypatch, capsys):
    created, in_use = [], []

    class CountedSource(RowSource):
        def __init__(self, *shape):
            super().__init__(*shape)
            created.append(self)

    def forward(batch):
        time.sleep(0.002)  # the reader, far faster, could run ahead of the network
        return context_forward(batch)

    segmenter = stand_in((1.0, 0.5), forward=forward)
    real_bands = pipeline.probability_bands

    def bands(segmenter, source, on_work=None):
        in_use.append((created.index(source), len(created)))
        yield from real_bands(segmenter, source, on_work)

    monkeypatch.setattr(pipeline, "RowSource", CountedSource)
    monkeypatch.setattr(pipeline, "probability_bands", bands)
    monkeypatch.setattr(pipeline, "PROGRESS_EVERY_S", 0.0)
    image = scene_image(700, 900, seed=3)
    write_geotiff(tmp_path / "big.tif", image)
    collection, mask = predict.scene_footprints(
        segmenter, tmp_path / "big.tif", window=320, keep_mask=True, progress=True
    )
    assert collection["parts"] == {"count": 12, "window": 320, "margin": 20}  # 3 x 4 cores of 280
    assert [index for index, _ in in_use] == list(range(12))
    assert all(allocated <= index + 2 for index, allocated in in_use)  # this part and the next
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("part 1/12: ") and lines[-1].startswith("part 12/12: 100% of the network")
    assert "MP/s" in lines[-1]
    # Context differs near the joins, so the mask may differ there, but barely.
    assert (mask != segmenter.predict(image)).mean() < 0.02


def test_the_outlines_run_beside_the_network(tmp_path, monkeypatch):
    forwards, adds = [], []

    def forward(batch):
        time.sleep(0.01)
        forwards.append(time.perf_counter())
        return context_forward(batch)

    class Recorded(predict.SceneOutlines):
        def add(self, *args):
            adds.append((threading.current_thread().name, time.perf_counter()))
            super().add(*args)

    monkeypatch.setattr(predict, "SceneOutlines", Recorded)
    image = scene_image(1800, 700, seed=4)
    write_geotiff(tmp_path / "scene.tif", image)
    predict.scene_footprints(stand_in((1.0, 0.5), forward=forward), tmp_path / "scene.tif")
    assert len(adds) > 2 and {name for name, _ in adds} == {"outlines"}
    assert adds[0][1] < forwards[-1]  # the first band was outlined while the network ran


def test_outline_flags_reach_the_geojson(tmp_path):
    args = predict.parse_args(["x.tif", "--outline", "regular", "--min-area-m2", "30", "--min-pixels", "5"])
    shape = predict.Outlining(
        outline=args.outline, min_area_m2=args.min_area_m2, min_pixels=args.min_pixels,
        tolerance=args.tolerance, min_area=args.min_area,
    )  # fmt: skip
    assert (shape.outline, shape.min_area_m2, shape.min_pixels) == ("regular", 30.0, 5)
    segmenter = stand_in()
    image = scene_image(600, 600, seed=5)
    write_geotiff(tmp_path / "scene.tif", image)
    plain, _ = predict.scene_footprints(segmenter, tmp_path / "scene.tif")  # zoo.polygons' raw defaults
    shaped, _ = predict.scene_footprints(segmenter, tmp_path / "scene.tif", shape=shape)
    assert shaped["outline"] == "regular" and shaped["min_area_m2"] == 30.0 and shaped["min_pixels"] is None
    assert all(feature["properties"]["area_m2"] >= 30 for feature in shaped["features"])
    assert 0 < shaped["count"] < plain["count"]


def test_main_asks_for_the_fastest_runtime_and_says_which_ran(tmp_path, monkeypatch, capsys):
    asked = []

    def load(path, runtime):
        asked.append(runtime)
        segmenter = stand_in()
        segmenter.metadata = {"name": "stand-in", "serving": {"runtime": "tflite"}}
        return segmenter

    monkeypatch.setattr(predict, "load_segmenter", load)
    image = scene_image(300, 400, seed=6)
    Image.fromarray(image).save(tmp_path / "tile.png")
    assert predict.main([str(tmp_path / "tile.png"), "--model", str(tmp_path / "m.keras")]) == 0
    out = capsys.readouterr().out
    assert asked == ["auto"] and "MP/s through tflite" in out and "px² (a PNG carries no" in out
    assert (tmp_path / "tile.geojson").is_file()


def test_an_unreadable_part_is_an_error_naming_the_file(tmp_path, monkeypatch, capsys):
    image = scene_image(600, 300)
    write_geotiff(tmp_path / "whole.tif", image)
    data = (tmp_path / "whole.tif").read_bytes()
    (tmp_path / "scene.tif").write_bytes(data[: len(data) // 2])  # the header is there, the last rows not
    monkeypatch.setattr(predict, "load_segmenter", lambda path, runtime: stand_in())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = predict.main([str(tmp_path / "scene.tif"), "--model", str(tmp_path / "m.keras")])
    assert code == 1
    assert "scene.tif' could not be read (Read failed" in capsys.readouterr().err


def test_a_gray_tiff_is_read_into_all_three_channels(tmp_path):
    import rasterio

    gray = scene_image(200, 300)[..., 0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no georeferencing: outlines in pixels
        with rasterio.open(
            tmp_path / "gray.tif", "w", driver="GTiff", height=200, width=300, count=1, dtype="uint8"
        ) as out:
            out.write(gray[None])
    seen = []

    class Recording:
        threshold, metadata, model = 0.5, {"name": "recording"}, None

        def probabilities(self, image):
            seen.append(image.copy())
            return np.zeros(image.shape[:2], np.float32)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        predict.scene_footprints(Recording(), tmp_path / "gray.tif")
    np.testing.assert_array_equal(seen[0], np.repeat(gray[..., None], 3, axis=2))
