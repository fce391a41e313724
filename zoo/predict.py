"""Any-size RGB array -> binary building mask, used by ablations and app alike.

Images up to `tile` pixels a side are reflect-padded to a multiple of 32 (the encoder's
output stride) and run whole. Larger ones go through U-Net's overlap-tile strategy:
overlapping tiles, each keeping only its centre, so every output pixel was predicted with
at least `overlap/2` pixels of real context around it.

With several `scales`, the image is also predicted resized by each scale (0.5: half the
pixels a side, so twice the ground per pixel) and the probabilities, resized back, are
averaged. A model trained on small houses then also sees a city's large roofs at the size
it learned (results/cross_city/inference/README.md measures what that buys). A saved model's
metadata may name its scales and threshold under "inference" (training.fit writes them).

Test-time augmentation (`tta`): each forward pass also runs on the batch flipped ("flips":
identity, horizontal, vertical, both), on all eight rotations and flips ("dihedral"), or on
one other view only ("rot180", "transpose": two passes, for latency-bound serving), and
the probabilities, mapped back, are averaged. Aerial images have no "up", so every view is
as plausible as the original, and the model's errors on them are partly independent.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

STRIDE = 32

# Views of an NHW(C) batch: (forward, inverse) pairs over the spatial axes 1 and 2.
_IDENTITY = (lambda a: a, lambda a: a)
_FLIP_H = (lambda a: a[:, :, ::-1], lambda a: a[:, :, ::-1])
_FLIP_V = (lambda a: a[:, ::-1], lambda a: a[:, ::-1])
_FLIP_HV = (lambda a: a[:, ::-1, ::-1], lambda a: a[:, ::-1, ::-1])


def _transposed(view):
    forward, inverse = view
    return (lambda a: np.swapaxes(forward(a), 1, 2), lambda a: inverse(np.swapaxes(a, 1, 2)))


# The eight rotations and flips of a square, numbered: cross-validation encodes each view once
# and names it by this number, so the order never changes.
DIHEDRAL_VIEWS = (
    _IDENTITY,
    _FLIP_H,
    _FLIP_V,
    _FLIP_HV,
    _transposed(_IDENTITY),
    _transposed(_FLIP_H),
    _transposed(_FLIP_V),
    _transposed(_FLIP_HV),
)
# Which views each choice averages. The two-view sets cost two passes instead of the flips'
# four: "rot180" adds the half turn (both flips), "transpose" the mirror across the diagonal.
TTA_VIEW_INDICES = {
    "none": (0,),
    "rot180": (0, 3),
    "transpose": (0, 4),
    "flips": (0, 1, 2, 3),
    "dihedral": tuple(range(8)),
}
TTA_VIEWS = {name: tuple(DIHEDRAL_VIEWS[i] for i in indices) for name, indices in TTA_VIEW_INDICES.items()}
# A server's choice of views: "model" applies the ones the model's metadata names (chosen by
# cross-validation); the others override them (`python -m app --tta`).
TTA_FROM_MODEL = "model"
TTA_CHOICES = (TTA_FROM_MODEL, *TTA_VIEWS)


class ImageError(ValueError):
    """The array is not an HxWx3 uint8 RGB image."""


def check_image(image) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ImageError(f"image must be H x W x 3 (RGB), got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageError(f"image is empty: shape {image.shape}")
    if image.dtype != np.uint8:
        raise ImageError(f"image must be uint8 0..255, got dtype {image.dtype}")
    return image


class Segmenter:
    """Wraps a U-Net (logits out) with its threshold and tiling policy.

    `forward` (float32 batch N x H x W x 3, RGB 0..255 -> logits N x H x W x 1) replaces the
    Keras model's own forward pass, e.g. an exported runtime from `zoo.runtimes`; `model` may
    then be None."""

    def __init__(
        self,
        model,
        threshold: float = 0.5,
        tile: int = 512,
        overlap: int = 64,
        batch_size: int = 8,
        metadata: dict | None = None,
        scales=(1.0,),
        tta: str = "none",
        forward=None,
    ):
        if tile % STRIDE or overlap % STRIDE or overlap >= tile:
            raise ValueError("tile and overlap must be multiples of 32, overlap < tile")
        scales = tuple(float(s) for s in scales)
        if not scales or not all(0 < s <= 4 for s in scales):
            raise ValueError(f"scales must be a non-empty list of numbers in (0, 4], got {scales}")
        if tta not in TTA_VIEWS:
            raise ValueError(f"tta must be one of {', '.join(TTA_VIEWS)}, got {tta!r}")
        self.model, self.threshold, self.tile, self.overlap = model, threshold, tile, overlap
        self.tta = tta
        self.batch_size, self.scales = batch_size, scales
        self.metadata = metadata or {}
        self._logits = forward if forward is not None else _shape_agnostic(model)

    @classmethod
    def from_file(cls, path, verify: bool = True, **kwargs) -> "Segmenter":
        from zoo import saving  # deferred: Keras loads only for a model file, not for the numpy helpers

        model, metadata = saving.load(path, verify=verify)
        return cls(model, metadata=metadata, **{**options_from(metadata), **kwargs})

    def predict(self, image) -> np.ndarray:
        """HxW uint8 mask of 0/1."""
        return (self.probabilities(image) >= self.threshold).astype(np.uint8)

    def probabilities(self, image) -> np.ndarray:
        image = check_image(image)
        return np.mean([self.probabilities_at(image, scale) for scale in self.scales], axis=0)

    def probabilities_at(self, image, scale: float = 1.0) -> np.ndarray:
        """Probabilities of `image` predicted resized by `scale`, at the image's own size."""
        image = check_image(image)
        height, width = image.shape[:2]
        if scale != 1.0:
            small = resize(image, *scaled_size(height, width, scale))
            return resize(self.probabilities_at(small), height, width)
        if max(height, width) <= self.tile:
            return self._whole(image)
        return self._tiled(image)

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        batch = batch.astype(np.float32)
        views = TTA_VIEWS[self.tta]
        viewed = [np.ascontiguousarray(forward(batch)) for forward, _ in views]
        return np.mean([inverse(probs) for (_, inverse), probs in zip(views, self._through(viewed))], axis=0)

    def _through(self, viewed: list[np.ndarray]) -> list[np.ndarray]:
        """Probabilities of each view's batch. Views of one shape share forward passes of up to
        `batch_size` images: one request's four flips are one pass of 4, not four of 1 (about
        a fifth faster on 2 cores), while a full batch of tiles still goes one view at a time,
        so memory stays bounded by `batch_size`."""
        n, out = len(viewed[0]), [None] * len(viewed)
        views_per_pass = max(1, self.batch_size // n)
        by_shape: dict[tuple, list[int]] = {}
        for index, view in enumerate(viewed):
            by_shape.setdefault(view.shape, []).append(index)
        for indices in by_shape.values():
            for start in range(0, len(indices), views_per_pass):
                chosen = indices[start : start + views_per_pass]
                probs = self._forward_once(np.concatenate([viewed[i] for i in chosen]))
                for k, index in enumerate(chosen):
                    out[index] = probs[k * n : (k + 1) * n]
        return out

    def _forward_once(self, batch: np.ndarray) -> np.ndarray:
        logits = self._logits(batch)
        return sigmoid(np.asarray(logits, dtype=np.float32)[..., 0])

    def _whole(self, image):
        height, width = image.shape[:2]
        padded = reflect_pad(image, round_up(height), round_up(width))
        return self._forward(padded[None])[0, :height, :width]

    def _tiled(self, image):
        height, width = image.shape[:2]
        step = self.tile - self.overlap
        margin = self.overlap // 2
        # Pad so every tile is full and the image's own border also gets `margin` of context.
        canvas = reflect_pad(image, height + 2 * margin, width + 2 * margin, before=margin)
        canvas = reflect_pad(
            canvas, _cover(canvas.shape[0], self.tile, step), _cover(canvas.shape[1], self.tile, step)
        )
        origins = [
            (y, x)
            for y in range(0, canvas.shape[0] - self.tile + 1, step)
            for x in range(0, canvas.shape[1] - self.tile + 1, step)
        ]
        out = np.zeros(canvas.shape[:2], np.float32)
        for start in range(0, len(origins), self.batch_size):
            chunk = origins[start : start + self.batch_size]
            tiles = np.stack([canvas[y : y + self.tile, x : x + self.tile] for y, x in chunk])
            for (y, x), prob in zip(chunk, self._forward(tiles)):
                # Tiles overlap by `overlap`; each keeps its centre, so the kept parts abut.
                # (Not prob[margin:-margin]: with overlap 0 that slice is empty.)
                out[y + margin : y + self.tile - margin, x + margin : x + self.tile - margin] = prob[
                    margin : self.tile - margin, margin : self.tile - margin
                ]
        return out[margin : margin + height, margin : margin + width]


def options_from(metadata: dict) -> dict:
    """The threshold, scales and test-time views a saved model's metadata names."""
    inference = metadata.get("inference") or {}
    return {
        "threshold": float(inference.get("threshold", metadata.get("threshold", 0.5))),
        "scales": tuple(inference.get("scales", (1.0,))),
        "tta": inference.get("tta", "none"),
    }


def resize(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a uint8 HxWx3 image or a float HxW map (Pillow's BILINEAR filter
    widens with the scale factor when shrinking, so a downscaled image is not aliased)."""
    if array.shape[:2] == (height, width):
        return array
    if array.dtype == np.uint8:
        return np.asarray(Image.fromarray(array).resize((width, height), Image.BILINEAR))
    picture = Image.fromarray(np.asarray(array, np.float32))  # a float32 map opens as mode F
    return np.asarray(picture.resize((width, height), Image.BILINEAR), np.float32)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    # tanh form: no overflow warning for very negative logits, unlike 1 / (1 + exp(-x)).
    return 0.5 * (1.0 + np.tanh(0.5 * logits))


def _shape_agnostic(model):
    """One traced graph for every image size: predict_on_batch would retrace per new shape."""
    import tensorflow as tf  # deferred: reports import this module for its view names, without TF

    spec = tf.TensorSpec([None, None, None, 3], tf.float32)
    traced = tf.function(lambda batch: model(batch, training=False), input_signature=[spec])
    return lambda batch: traced(tf.constant(batch)).numpy()


def reflect_pad(image: np.ndarray, height: int, width: int, before: int = 0) -> np.ndarray:
    """Pad to height x width, `before` pixels on top/left and the rest at bottom/right.

    Reflection keeps texture statistics at the border (zeros would look like a black roof);
    numpy's 'symmetric' mode also works when the pad exceeds the image size."""
    pad_h, pad_w = height - image.shape[0] - before, width - image.shape[1] - before
    pads = [(before, pad_h), (before, pad_w)] + [(0, 0)] * (image.ndim - 2)
    return np.pad(image, pads, mode="symmetric") if (before or pad_h or pad_w) else image


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """The size an image is predicted at for `scale` (probabilities_at), at least 1 px a side."""
    return max(1, round(height * scale)), max(1, round(width * scale))


def round_up(size: int, multiple: int = STRIDE) -> int:
    """`size` padded to a whole number of `multiple`s: the encoder's stride for a whole image."""
    return -(-size // multiple) * multiple


def _cover(size: int, tile: int, step: int) -> int:
    """Smallest length >= size that a whole number of tiles at `step` covers exactly."""
    if size <= tile:
        return tile
    return tile + round_up(size - tile, step) if step else tile
