"""What `training.adapt` is asked, checked before any work: the request, the city's labelled
tiles and unlabelled imagery, the parent model, and the side the tiles are read at."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from data import folders
from training.adapt_method import AdaptSettings
from training.errors import UserFacingError
from training.recipe import BUDGETS
from zoo import saving
from zoo.predict import resize


@dataclasses.dataclass(frozen=True)
class AdaptRequest:
    model: Path
    data: Path | None = None  # labelled tiles of the new city (images/, masks/)
    tiles: int | None = None  # K; None: every labelled tile
    unlabeled: Path | None = None  # the city's imagery without labels (a folder of images)
    out: Path | None = None  # None: results/adapt/models/<city folder name>
    seed: int = 0
    fresh: bool = False
    settings: AdaptSettings = AdaptSettings()

    @property
    def out_folder(self) -> Path:
        name = (self.data or self.unlabeled).resolve().name
        return self.out or Path("results/adapt/models") / name


def check_inputs(request: AdaptRequest) -> tuple[list, list[Path]]:
    """The labelled samples and the unlabelled image paths, or one UserFacingError."""
    if not request.model.is_file():
        raise UserFacingError(
            f"--model {request.model}: no such model file "
            "(python -m training.fit makes results/final/model.keras)"
        )
    if request.data is None and request.unlabeled is None:
        raise UserFacingError("give --data CITY_DIR (labelled tiles), --unlabeled IMAGES_DIR, or both")
    labelled = scan_labelled(request.data) if request.data is not None else []
    pool = scan_unlabeled(request.unlabeled) if request.unlabeled is not None else []
    k = len(labelled) if request.tiles is None else request.tiles
    if request.tiles is not None and request.data is None:
        raise UserFacingError("--tiles counts labelled tiles: give --data CITY_DIR too")
    if k < 0 or k > len(labelled):
        raise UserFacingError(
            f"--tiles {k}: {request.data} has {len(labelled)} labelled tiles (0 to {len(labelled)})"
        )
    if k == 0 and not pool:
        raise UserFacingError("nothing to adapt on: --tiles 0 and no --unlabeled imagery")
    return labelled, pool


def scan_labelled(root: Path) -> list:
    try:
        return folders.scan_folder(root, check=True)
    except folders.DataError as error:
        first = str(error).splitlines()[0]
        raise UserFacingError(f"--data: {first} (a labelled run needs images/ and masks/)") from None


def scan_unlabeled(root: Path) -> list[Path]:
    """Every image under IMAGES_DIR, or under IMAGES_DIR/images when it is a data folder."""
    folder = root / "images" if (root / "images").is_dir() else root
    if not folder.is_dir():
        raise UserFacingError(f"--unlabeled {root}: not a folder of images")
    paths = sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in folders.EXTENSIONS
    )  # fmt: skip
    if not paths:
        raise UserFacingError(f"--unlabeled {folder}: no image files ({' '.join(folders.EXTENSIONS)})")
    return paths


def load_parent(path: Path):
    try:
        return saving.load(path)
    except (saving.ModelIntegrityError, FileNotFoundError, OSError, ValueError) as error:
        raise UserFacingError(f"--model {path}: {str(error).splitlines()[0]}") from None


def tile_size(metadata: dict, labelled: list, pool_paths: list[Path]) -> int:
    """The side the parent trained at (its budget's), else the first tile's own side."""
    budget = BUDGETS.get(metadata.get("budget", ""))
    if budget is not None:
        return budget.size
    first = labelled[0].image_path if labelled else pool_paths[0]
    return folders.read_image(first).shape[0]


def read_pool(paths: list[Path], size: int) -> np.ndarray:
    images = []
    for path in paths:
        try:
            image = folders.read_image(path)
        except folders.DataError as error:
            raise UserFacingError(str(error)) from None
        images.append(image if image.shape[:2] == (size, size) else resize(image, size, size))
    return np.stack(images)


def image_samples(paths: list[Path]) -> list:
    return [folders.Sample(p.stem, p, p, None, None, p.stem) for p in paths]
