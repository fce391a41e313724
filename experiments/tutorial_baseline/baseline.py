"""python -m experiments.tutorial_baseline.baseline [--data DIR] [--budget standard] [--out results]
                                                    [--weights W]

Trains the TensorFlow image-segmentation tutorial's recipe the way that tutorial does it:
frozen MobileNetV2 with its pix2pix decoder (transpose convs of 512/256/128/64 filters),
Adam at 1e-3, binary cross-entropy, random flips, the full model run end to end at every
step. Same split, tiles, epochs, batch size and threshold rule as the studies, so its
quality and training time sit beside the selected model in OUT/tutorial_recipe/table.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from tabulate import tabulate  # noqa: E402

from data import augment  # noqa: E402  (cheap: albumentations loads when used)
from training.errors import UserFacingError  # noqa: E402
from training.machine import describe  # noqa: E402
from training.recipe import BUDGETS, Budget, Recipe  # noqa: E402
from training.verify import full_model_scores  # noqa: E402
from zoo.files import write_json_atomic, write_text_atomic  # noqa: E402
from zoo.predict import Segmenter  # noqa: E402

if TYPE_CHECKING:
    import tensorflow as tf

COMPARED_STUDIES = ("decoder_variants", "decoder_width", "loss", "augmentation", "hparams")


@dataclasses.dataclass(frozen=True)
class BaselineRequest:
    """What `python -m experiments.tutorial_baseline.baseline` was asked to do."""

    out: Path = Path("results")
    data: Path | None = None  # None: synthetic scenes
    budget: str = "standard"
    test_area: str | None = None
    val_area: str | None = None
    weights: str = "imagenet"
    batch_size: int = 16
    epochs: int | None = None  # None: the budget's
    table_only: bool = False  # only rewrite table.md from the saved metrics.json


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m experiments.tutorial_baseline.baseline", description=__doc__.split("\n\n")[1]
    )
    parser.add_argument("--data", type=Path)
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="standard")
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--test-area")
    parser.add_argument("--val-area", help="validate on this whole area, as ablations.run --val-area")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, help="training epochs (default: the budget's)")
    parser.add_argument(
        "--table-only",
        action="store_true",
        help="only rewrite table.md from the saved metrics.json (after later studies)",
    )
    return parser.parse_args(argv)


def train_tutorial(arrays, epochs: int, batch_size: int, weights):
    import keras  # deferred: TensorFlow loads only to train (not for --table-only or --help)

    from zoo.losses import SegmentationLoss
    from zoo.unet import build_tutorial

    keras.utils.set_random_seed(0)
    model = build_tutorial(None if weights == "none" else weights)
    model.compile(keras.optimizers.Adam(1e-3), SegmentationLoss("bce"))
    images, masks = arrays["train"]
    dataset = tf_dataset(
        images, masks, batch_size, pipeline=augment.augmentation("flips", seed=0), shuffle_seed=0
    )
    started = time.time()
    history = model.fit(dataset, epochs=epochs, verbose=2)
    seconds = time.time() - started
    return model, seconds, {k: [float(v) for v in vs] for k, vs in history.history.items()}


def tf_dataset(
    images: np.ndarray,
    masks: np.ndarray,
    batch_size: int,
    pipeline=None,
    shuffle_seed: int | None = None,
    repeat: bool = False,
) -> "tf.data.Dataset":
    """Batches of (float32 images 0..255 NHWC, float32 masks NHW1); the model scales its input.

    No shuffle when `shuffle_seed` is None (evaluation order). The arrays stay in numpy: the
    dataset carries indices, and a batch is gathered (and augmented) by one numpy call.
    """
    import tensorflow as tf  # deferred: TensorFlow loads only to train (not for --table-only or --help)

    images, masks = _checked_arrays(images, masks, batch_size)
    height, width = images.shape[1:3]

    def gather(indices):
        return _gather_batch(images, masks, indices, pipeline)

    def to_tensors(indices):
        x, y = tf.numpy_function(gather, [indices], (tf.float32, tf.float32), stateful=pipeline is not None)
        x.set_shape((None, height, width, 3))
        y.set_shape((None, height, width, 1))
        return x, y

    dataset = tf.data.Dataset.range(len(images))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(images), seed=shuffle_seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()  # before batching, so batches stay full across epochs
    return dataset.batch(batch_size).map(to_tensors).prefetch(tf.data.AUTOTUNE)


def _checked_arrays(images: np.ndarray, masks: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    images, masks = np.asarray(images), np.asarray(masks)
    if masks.ndim == 4 and masks.shape[-1] == 1:
        masks = masks[..., 0]
    if images.ndim != 4 or images.shape[-1] != 3 or masks.shape != images.shape[:3]:
        raise ValueError(f"expected images (N,H,W,3) and masks (N,H,W), got {images.shape} and {masks.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return images, masks


def _gather_batch(images, masks, indices, pipeline) -> tuple[np.ndarray, np.ndarray]:
    x, y = images[indices], masks[indices]  # fancy indexing copies, so augmenting in place is safe
    if pipeline is not None:
        for i in range(len(x)):
            x[i], y[i] = augment.augment_pair(pipeline, x[i], y[i])
    return x.astype(np.float32), y[..., None].astype(np.float32)


def evaluate(model, arrays) -> tuple[float, dict]:
    """Threshold chosen on validation; test scores end to end, plus the validation score
    (the number the studies select by, so both recipes can be compared on it too)."""
    from training.train import choose_threshold  # deferred: it loads TensorFlow

    val_images, val_masks = arrays["val"]
    segmenter = Segmenter(model)
    val_probs = [segmenter.probabilities(image) for image in val_images]
    threshold, val_building_iou = choose_threshold(np.stack(val_probs), val_masks)
    scores = full_model_scores(model, threshold, *arrays["test"])
    return threshold, {**scores, "val_building_iou": val_building_iou}


def comparison_rows(out: Path, tutorial: dict) -> list[dict]:
    rows = [tutorial]
    for study in COMPARED_STUDIES:
        meta_file = out / study / "best" / "model.json"
        context_file = out / study / "context.json"
        if not meta_file.is_file():
            continue
        meta = json.loads(meta_file.read_text())
        context = json.loads(context_file.read_text())
        trials = len(list((out / study / "trials").glob("*.json")))
        record = json.loads((out / study / "trials" / f"{meta['trial_id']}.json").read_text())
        changed = {k: v for k, v in meta["recipe"].items() if Recipe().to_dict().get(k) != v}
        recipe = "".join(
            f", {k}={v:.3g}" if isinstance(v, float) else f", {k}={v}" for k, v in changed.items()
        )
        rows.append(
            _row(
                f"selected by `{study}` ({trials} trials): {meta['name'].split('/')[-1]}{recipe}",
                meta["metrics"]["test"],
                meta["trainable_params"],
                context["budget"],
                record["train_seconds"],
            )
        )
    return rows


def _row(name, scores, params, budget, seconds) -> dict:
    return {
        "model": name,
        "budget": budget,
        "test precision": f"{scores['precision']:.3f}",
        "test recall": f"{scores['recall']:.3f}",
        "test building IoU": f"{scores['building_iou']:.3f}",
        "test mean IoU": f"{scores['mean_iou']:.3f}",
        "test F1": f"{scores['f1']:.3f}",
        "trainable params": f"{params / 1e6:.2f} M",
        "training s (one model)": "-" if seconds is None else f"{seconds:.0f}",
    }


def main(argv=None) -> int:
    request = BaselineRequest(**vars(parse_args(argv)))
    from zoo.encoder import WeightsUnavailable  # deferred: zoo.encoder loads TensorFlow

    try:
        return run(request)
    except (UserFacingError, WeightsUnavailable) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def run(request: BaselineRequest) -> int:
    study_dir = request.out / "tutorial_recipe"
    if request.table_only:
        write_table(request.out, json.loads((study_dir / "metrics.json").read_text()))
        return 0
    result = train_and_score(
        BUDGETS[request.budget],
        request.data,
        request.test_area,
        request.val_area,
        request.weights,
        request.batch_size,
        request.epochs,
    )
    write_json_atomic(study_dir / "metrics.json", result)
    write_table(request.out, result)
    return 0


def train_and_score(
    budget: Budget,
    data: Path | None,
    test_area: str | None,
    val_area: str | None,
    weights: str,
    batch_size: int,
    epochs: int | None,
) -> dict:
    """Train and score the tutorial's recipe on the study split; `epochs` None: the budget's."""
    from ablations.pipeline import load_data  # deferred: it loads TensorFlow
    from zoo.saving import versions
    from zoo.unet import trainable_params

    split, arrays, source = load_data(budget, data, test_area, val_area)
    epochs = epochs or budget.epochs
    model, seconds, history = train_tutorial(arrays, epochs, batch_size, weights)
    threshold, scores = evaluate(model, arrays)
    n_train = len(arrays["train"][0])
    result = {
        "scores": scores,
        "threshold": threshold,
        "train_seconds": seconds,
        "images_per_second": epochs * n_train / seconds,
        "history": history,
        "trainable_params": trainable_params(model),
        "data": source,
        "split": split.description,
        "counts": split.counts(),
        "budget": budget.name,
        "epochs": epochs,
        "machine": describe(),
        "versions": versions(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "batch_size": batch_size,
    }
    return result


def write_table(out: Path, result: dict) -> None:
    tutorial = _row(
        "TF tutorial recipe (end to end, Adam, BCE, flips)",
        result["scores"],
        result["trainable_params"],
        result["budget"],
        result["train_seconds"],
    )
    lines = [
        "# The TensorFlow tutorial's recipe against the selected models",
        "",
        f"- **Data:** {result['data']}; split: {result['split']}",
        f"- **Tutorial recipe:** {result['epochs']} epochs, batch {result['batch_size']}, "
        f"{result['images_per_second']:.1f} training images/s end to end; "
        f"threshold {result['threshold']:.2f} "
        "(chosen on validation, as for the studies)",
        f"- **Machine:** {result['machine']}; {result['date']}",
        "",
        "Training seconds of a selected model are those of its own trial (decoder on cached "
        "features; the one-off encoding of the study's tiles is not included, see bench.md).",
        "",
        tabulate(comparison_rows(out, tutorial), headers="keys", tablefmt="github"),
        "",
    ]
    write_text_atomic(out / "tutorial_recipe" / "table.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
