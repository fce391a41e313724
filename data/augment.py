"""Named albumentations pipelines (AUGMENTATIONS), applied to an image and its mask together.

albumentations is imported inside the functions (it is slow to import), so importing this module is cheap.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    import albumentations

__all__ = ["AUGMENTATIONS", "augment_pair", "augmentation"]

AUGMENTATIONS = ("none", "flips", "geometric", "strong", "sensor", "zoom")
# The served recipe's: `sensor` plus 3 tiles in 10 seen 2-4x farther away (training.recipe).
FARTHER_AUGMENTATIONS = ("sensor_shrink",)


def augmentation(name: str, seed: int | None = None) -> "albumentations.Compose":
    """A named albumentations pipeline; the same seed gives the same stream of random choices."""
    known = AUGMENTATIONS + FARTHER_AUGMENTATIONS
    if name not in known:
        raise ValueError(f"unknown augmentation {name!r}; choices: {', '.join(known)}")
    A = _albumentations()
    transforms = []
    if name != "none":
        transforms += _dihedral(A)
    if name in ("geometric", "strong"):
        transforms += _small_affine(A)
    if name == "strong":
        transforms += _photometric(A)
    if name in ("sensor", *FARTHER_AUGMENTATIONS):
        transforms += _other_sensor(A)
    if name == "sensor_shrink":
        transforms += _farther_view(A)
    if name == "zoom":
        transforms += _closer_view(A)
    return A.Compose(transforms, seed=seed)


def _albumentations():
    # albumentations asks PyPI for a newer version on import: slow or a warning offline.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations  # deferred: a slow import, and the update check must be off first

    return albumentations


def _dihedral(A) -> list:
    # A flip and a random quarter turn cover all 8 symmetries of a square evenly: aerial
    # images have no "up". The vertical flip is redundant with them but harmless.
    return [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=1.0)]


def _small_affine(A) -> list:
    # Small scale changes mimic the 7-30 cm spread of ground resolution; reflecting the border
    # keeps texture (and buildings, reflected alike in the mask) instead of black corners.
    return [
        A.Affine(
            scale=(0.9, 1.1),
            rotate=(-15, 15),
            translate_percent=(-0.05, 0.05),
            interpolation=cv2.INTER_LINEAR,
            mask_interpolation=cv2.INTER_NEAREST,
            border_mode=cv2.BORDER_REFLECT_101,
            p=0.7,
        )
    ]


def _photometric(A) -> list:
    # Light changes only: different cameras, sun and haze; roof colour must stay recognisable.
    return [
        A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
        A.HueSaturationValue(hue_shift_limit=5, sat_shift_limit=15, val_shift_limit=10, p=0.3),
        A.RandomGamma(gamma_limit=(85, 115), p=0.3),
        A.OneOf([A.GaussNoise(std_range=(0.01, 0.04)), A.ImageCompression(quality_range=(60, 95))], p=0.3),
    ]


def _other_sensor(A) -> list:
    """An unseen city is also an unseen camera: another ground resolution (7-30 cm across the
    zoom levels here, more elsewhere), blur from resampling or motion, other colour balance
    and compression. Wider scale changes plus resolution loss teach the decoder not to rely
    on the sharpness of the training cities' imagery."""
    resample = {"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_LINEAR}
    return [
        A.Affine(
            scale=(0.75, 1.33),
            rotate=(-15, 15),
            interpolation=cv2.INTER_LINEAR,
            mask_interpolation=cv2.INTER_NEAREST,
            border_mode=cv2.BORDER_REFLECT_101,
            p=0.7,
        ),
        A.OneOf(
            [
                A.Downscale(scale_range=(0.25, 0.6), interpolation_pair=resample),
                A.GaussianBlur(blur_limit=(3, 7)),
                A.MotionBlur(blur_limit=(3, 7)),
            ],
            p=0.6,
        ),
        A.RandomBrightnessContrast(brightness_limit=0.25, contrast_limit=0.25, p=0.6),
        A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=25, val_shift_limit=15, p=0.5),
        A.RandomGamma(gamma_limit=(75, 130), p=0.4),
        A.OneOf([A.GaussNoise(std_range=(0.01, 0.05)), A.ImageCompression(quality_range=(40, 90))], p=0.4),
    ]


def _farther_view(A, p: float = 0.3) -> list:
    """A farther view: the tile shrunk 2-4x, the border reflected (mask alike) so the tile
    stays full. Served, the model also sees each image at half size (inference scales 1 and
    0.5, results/EXPERIMENTS.md step 23), where a large roof of Nairobi looks like a house; this
    trains the decoder on buildings at those sizes. The reflected copies are the price: mirrored
    seams no real image has."""
    return [
        A.Affine(
            scale=(0.25, 0.5),
            rotate=(-15, 15),
            interpolation=cv2.INTER_AREA,
            mask_interpolation=cv2.INTER_NEAREST,
            border_mode=cv2.BORDER_REFLECT_101,
            p=p,
        ),
    ]


def _closer_view(A) -> list:
    """A closer view of the same ground: the tile shows a 1/4-2/3 wide part of itself,
    enlarged to the full tile (1.5-4x). A 10 m roof at 7 cm/px already spans 140 px; enlarged,
    the training city's houses take the pixel sizes of larger buildings (and of finer
    imagery), so a roof that fills the tile, with no ground or edge in view, is something the
    decoder has seen. The offset reaches the tile's corners; the little it reaches past them
    is reflected, mask alike."""
    return [
        A.Affine(
            scale=(1.5, 4.0),
            translate_percent=(-0.25, 0.25),
            rotate=(-15, 15),
            interpolation=cv2.INTER_LINEAR,
            mask_interpolation=cv2.INTER_NEAREST,
            border_mode=cv2.BORDER_REFLECT_101,
            p=1.0,
        ),
    ]


def augment_pair(pipeline, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Augment one uint8 HxWx3 image and its uint8 HxW {0,1} mask together."""
    out = pipeline(image=image, mask=mask)
    new_image, new_mask = out["image"], out["mask"]
    if new_image.shape != image.shape or new_mask.shape != mask.shape:
        # Quarter turns of a non-square tile change its shape; batches need fixed shapes.
        raise ValueError(
            f"augmentation changed the size {image.shape} to {new_image.shape}; use square tiles"
        )
    return np.ascontiguousarray(new_image, np.uint8), np.ascontiguousarray(new_mask, np.uint8)
