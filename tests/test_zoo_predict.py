"""zoo.predict: any-size prediction and tiling, thresholds, scales and test-time views, on random weights."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `pytest tests/...` from the repo root without an installed package
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from zoo import saving, unet  # noqa: E402
from zoo.config import DecoderConfig  # noqa: E402
from zoo.predict import TTA_VIEWS, ImageError, Segmenter, check_image  # noqa: E402

# Keras' legacy .h5 weight loader warns once per variable under numpy 2: noise, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy")


# ---------------------------------------------------------------- helpers


def image(height, width, seed=0):
    """uint8 RGB with structure at 8 px and at 1 px, so outputs vary at both scales."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3)).repeat(8, 0).repeat(8, 1)
    fine = rng.integers(0, 256, (height, width, 3))
    return (0.7 * coarse[:height, :width] + 0.3 * fine).astype(np.uint8)


def with_spread_logits(model, calibration):
    """The model followed by a fixed affine map giving its logits mean 0 and std 2.

    A random decoder's logits are ~1e-4, so every probability would be ~0.5 and any
    tiling mistake would look "tiny"; spreading them makes the comparisons sensitive.
    """
    logits = np.asarray(model(calibration[None].astype("float32")))
    gain = 2.0 / logits.std()
    inputs = keras.Input((None, None, 3))
    outputs = keras.layers.Rescaling(gain, offset=-logits.mean() * gain)(model(inputs))
    return keras.Model(inputs, outputs)


def record_batches(segmenter):
    """Wrap the segmenter's forward pass to record the batch shapes the model sees."""
    shapes, forward = [], segmenter._logits

    def spy(batch):
        shapes.append(batch.shape)
        return forward(batch)

    segmenter._logits = spy
    return shapes


@pytest.fixture(scope="module")
def spread_model():
    keras.utils.set_random_seed(0)
    return with_spread_logits(unet.build(DecoderConfig(width=0.5), weights=None), image(256, 256, seed=1))


# ---------------------------------------------------------------- 5. prediction


@pytest.mark.parametrize("height, width, padded", [(37, 61, (64, 64)), (100, 257, (128, 288))])
def test_any_size_image_gives_binary_mask_of_its_size(spread_model, height, width, padded):
    segmenter = Segmenter(spread_model)
    batches = record_batches(segmenter)
    mask = segmenter.predict(image(height, width))
    assert mask.shape == (height, width) and mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 1}
    assert batches == [(1, *padded, 3)]  # run whole, padded to a multiple of 32


def test_large_image_goes_through_tiles(spread_model):
    segmenter = Segmenter(spread_model)  # tile 512, overlap 64
    batches = record_batches(segmenter)
    mask = segmenter.predict(image(1024, 1024))
    assert mask.shape == (1024, 1024) and mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 1}
    assert all(shape[1:] == (512, 512, 3) for shape in batches)
    assert sum(shape[0] for shape in batches) >= 9  # 1024 + margins needs 3 x 3 tiles at least


def test_overlap_tiles_reproduce_the_whole_image_prediction(spread_model):
    picture = image(600, 600, seed=2)
    whole = Segmenter(spread_model, tile=640).probabilities(picture)  # one padded 608x608 pass
    tiled = Segmenter(spread_model, tile=256, overlap=128).probabilities(picture)
    seams = Segmenter(spread_model, tile=256, overlap=0).probabilities(picture)
    assert whole.shape == tiled.shape == seams.shape == (600, 600)
    assert whole.std() > 0.1  # probabilities spread: a misplaced tile could not hide
    difference = np.abs(tiled - whole)
    # The image border differs by design (reflected context vs the convs' zero padding);
    # inside it every pixel had the same context in both runs.
    assert difference[64:-64, 64:-64].mean() < 1e-3
    assert difference.mean() < 0.02
    # Tiles without overlap show their seams: the test can tell the two apart.
    assert np.abs(seams - whole)[64:-64, 64:-64].mean() > 10 * difference[64:-64, 64:-64].mean()
    assert np.abs(np.roll(whole, 1, axis=1) - whole).mean() > 3 * difference.mean()


def test_mask_is_probability_at_or_above_threshold(spread_model):
    segmenter = Segmenter(spread_model, threshold=0.3)
    picture = image(64, 96, seed=3)
    probabilities = segmenter.probabilities(picture)
    mask = segmenter.predict(picture)
    np.testing.assert_array_equal(mask, (probabilities >= 0.3).astype(np.uint8))
    assert mask.sum() > (probabilities >= 0.5).sum()  # the threshold made a difference


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((8, 8), np.uint8), "shape"),
        (np.zeros((8, 8, 4), np.uint8), "shape"),
        (np.zeros((8, 8, 1), np.uint8), "shape"),
        (np.zeros((1, 8, 8, 3), np.uint8), "shape"),
        (np.zeros((8, 8, 3), np.float32), "dtype"),
        (np.zeros((8, 8, 3), np.int64), "dtype"),
        (np.zeros((0, 8, 3), np.uint8), "empty"),
        (np.zeros((8, 0, 3), np.uint8), "empty"),
    ],
)
def test_check_image_rejects_what_is_not_an_rgb_uint8_image(bad, message):
    with pytest.raises(ImageError, match=message):
        check_image(bad)
    assert issubclass(ImageError, ValueError)


def test_check_image_accepts_rgb_uint8_and_segmenter_validates_tiling():
    good = np.zeros((5, 7, 3), np.uint8)
    assert check_image(good) is good
    with pytest.raises(ValueError, match="multiples of 32"):
        Segmenter(None, tile=500)
    with pytest.raises(ValueError, match="overlap"):
        Segmenter(None, tile=256, overlap=256)


def test_segmenter_from_file_uses_the_saved_threshold(spread_model, tmp_path):
    path = saving.save(spread_model, tmp_path / "spread.keras", {"threshold": 0.8})
    segmenter = Segmenter.from_file(path, tile=256)
    assert segmenter.threshold == 0.8 and segmenter.tile == 256
    assert segmenter.metadata["sha256"] == saving.sha256_of(path)
    picture = image(64, 64, seed=6)
    probabilities = segmenter.probabilities(picture)
    mask = segmenter.predict(picture)
    np.testing.assert_array_equal(mask, probabilities >= 0.8)
    assert mask.sum() < (probabilities >= 0.5).sum()  # the threshold made a difference


def test_several_scales_average_the_resized_predictions(spread_model):
    picture = image(100, 157, seed=7)
    segmenter = Segmenter(spread_model, scales=(1.0, 0.5))
    batches = record_batches(segmenter)
    averaged = segmenter.probabilities(picture)
    assert averaged.shape == (100, 157)
    assert [b[1:3] for b in batches] == [(128, 160), (64, 96)]  # full size, then 50x78 padded
    single = Segmenter(spread_model)
    full, half = single.probabilities_at(picture, 1.0), single.probabilities_at(picture, 0.5)
    np.testing.assert_allclose(averaged, (full + half) / 2, atol=1e-6)
    assert np.abs(full - half).mean() > 0.01  # the coarse view really is a different prediction


def test_segmenter_from_file_uses_the_saved_inference_policy(spread_model, tmp_path):
    path = saving.save(
        spread_model,
        tmp_path / "scaled.keras",
        {"threshold": 0.5, "inference": {"scales": [1.0, 0.25], "threshold": 0.6}},
    )
    segmenter = Segmenter.from_file(path)
    assert segmenter.scales == (1.0, 0.25) and segmenter.threshold == 0.6
    assert Segmenter.from_file(path, scales=(1.0,)).scales == (1.0,)  # the caller may override


@pytest.mark.parametrize("scales", [(), (0.0,), (1.0, -0.5), (8.0,)])
def test_bad_scales_are_refused(spread_model, scales):
    with pytest.raises(ValueError, match="scales"):
        Segmenter(spread_model, scales=scales)


# ---------------------------------------------------------------- test-time augmentation


@pytest.mark.parametrize(
    "tta, group",
    [
        ("flips", [lambda a: a[:, ::-1], lambda a: a[::-1]]),
        ("dihedral", [lambda a: a[:, ::-1], lambda a: np.rot90(a), lambda a: np.swapaxes(a, 0, 1)]),
        ("rot180", [lambda a: a[::-1, ::-1]]),
        ("transpose", [lambda a: np.swapaxes(a, 0, 1)]),
    ],
)
def test_test_time_views_make_the_prediction_equivariant(spread_model, tta, group):
    """Averaging over a group of views makes the prediction commute with that group, which
    a single random-weight U-Net (3x3 kernels, not symmetric) does not do by itself."""
    picture = image(64, 64, seed=3)
    plain, averaged = Segmenter(spread_model), Segmenter(spread_model, tta=tta)
    base = averaged.probabilities(picture)
    for view in group:
        np.testing.assert_allclose(
            averaged.probabilities(np.ascontiguousarray(view(picture))), view(base), atol=1e-5
        )
    flipped = plain.probabilities(np.ascontiguousarray(picture[:, ::-1]))
    assert np.abs(flipped - plain.probabilities(picture)[:, ::-1]).max() > 1e-3


def test_a_requests_views_share_one_forward_pass_and_a_full_batch_goes_view_by_view(spread_model):
    segmenter = Segmenter(spread_model, tta="flips", batch_size=8)
    batches = record_batches(segmenter)
    picture = image(64, 64, seed=5)
    together = segmenter.probabilities(picture)
    assert batches == [(4, 64, 64, 3)]  # one pass of the four flips
    one_by_one = np.mean(
        [
            inverse(segmenter._forward_once(np.ascontiguousarray(forward(picture[None].astype(np.float32)))))[
                0
            ]
            for forward, inverse in TTA_VIEWS["flips"]
        ],
        axis=0,
    )
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)
    batches.clear()
    segmenter._forward(np.stack([picture] * 8))  # a full batch of tiles: memory stays at 8 images
    assert batches == [(8, 64, 64, 3)] * 4


def test_test_time_views_run_through_tiles_and_scales(spread_model):
    picture = image(600, 300, seed=4)  # tiled at 512 with a non-square canvas
    segmenter = Segmenter(spread_model, tta="dihedral", scales=(1.0, 0.5))
    batches = record_batches(segmenter)
    probabilities = segmenter.probabilities(picture)
    assert probabilities.shape == (600, 300)
    # Every image seen in all eight views, never more than batch_size (8) images a pass: the
    # tiles (a batch of 2 at scale 1) four views a pass, the half-scale image's two shapes
    # under a quarter turn each one pass of its four views. The tiles are square.
    assert sorted(batches) == [(4, 160, 320, 3), (4, 320, 160, 3)] + [(8, 512, 512, 3)] * 2
    single_view = Segmenter(spread_model, scales=(1.0, 0.5)).probabilities(picture)
    assert 1e-3 < np.abs(probabilities - single_view).mean() < 0.5


def test_unknown_test_time_views_are_refused_by_name(spread_model):
    with pytest.raises(ValueError, match="tta must be one of none, rot180, transpose, flips, dihedral"):
        Segmenter(spread_model, tta="rotate")


def test_segmenter_from_file_reads_the_saved_test_time_views(spread_model, tmp_path):
    path = saving.save(spread_model, tmp_path / "tta.keras", {"inference": {"tta": "flips"}})
    assert Segmenter.from_file(path).tta == "flips"
