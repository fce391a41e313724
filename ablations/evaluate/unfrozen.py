"""A probe, not a served option: what keeping the encoder frozen costs on an unseen city.

    python -m ablations.evaluate.unfrozen --data ../shared/data/oam_buildings --variants os2_shrink,os2_shrink_seed1,os2_shrink_seed2 --encoder-lr 0,0.1 [--fine-tune-epochs 3] [--epochs 3] [--scales 1+0.5] [--out results/unfrozen]

The design freezes the ImageNet MobileNetV2 and trains only the decoder. Every lever inside that
design measured so far has left the unseen city short of the bar (results/EXPERIMENTS.md), so
this probe measures the one outside it, for the people who set the design to weigh: each fold
trains the whole U-Net end to end, the encoder's convolutions at `--encoder-lr` times the
decoder's learning rate. 0 keeps the encoder frozen: the control, which must reproduce the
transfer harness's number for the same variant. BatchNormalization stays frozen (statistics,
scale and offset): batches of 16 tiles from two cities would replace ImageNet's statistics with
noisier ones, and step 33 showed the encoder cannot do without them. With `--fine-tune-epochs N`,
each `--encoder-lr` F > 0 runs LP-FT instead (Kumar et al. 2022): the control first, then N
epochs of the whole U-Net at F times the recipe's learning rate, so a random decoder's gradients
never reach the encoder.

Everything else is the transfer harness's variant (ablations.evaluate.transfer): its decoder,
seed, loss, AdamW and cosine schedule over `--epochs`, its augmented copies (made with the
harness's seed) and its batch order (ablations.train.FeatureBatches). The held-out city is
scored as served, through zoo.predict.Segmenter at `--scales`, at every threshold.

Each fold writes OUT/RUN/CITY.json (RUN: VARIANT-encoder-lrF) with the data's fingerprint: a
rerun skips finished folds, and refuses a folder made with other data, epochs or scales. The
held-out probabilities go to OUT/cache/RUN/CITY.npy (not committed). OUT/README.md: building
IoU per held-out city at threshold 0.5, each recipe's seeds pooled, and the mean over cities.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

import numpy as np

from ablations import heldout, studies
from ablations.errors import UserFacingError, exit_status
from ablations.evaluate import transfer
from ablations.features import FeatureSet, augmented_copies
from zoo.files import write_json_atomic, write_text_atomic

DEFAULT_OUT = Path("results/unfrozen")


class ImagePool(FeatureSet):
    """A FeatureSet whose one tap is the tiles themselves, (copies, N, H, W, 3) uint8: batches of
    images for a whole U-Net, drawn by FeatureBatches and FeatureView as features are."""

    def batch(self, copy_index: np.ndarray, image_index: np.ndarray):
        return (self.taps[0][copy_index, image_index].astype(np.float32),
                self.masks[copy_index, image_index][..., None].astype(np.float32))


def augmented_pool(images: np.ndarray, masks: np.ndarray, augmentation: str, copies: int,
                   seed: int = transfer.SEED) -> ImagePool:
    """The tiles and `copies - 1` augmented versions, the very copies ablations.features.encode
    encodes (features.augmented_copies)."""
    made = list(augmented_copies(images, masks, copies, augmentation, seed))
    return ImagePool([np.stack([m[0] for m in made])], np.stack([m[1] for m in made]), images)


def thaw(encoder) -> list:
    """Let the encoder's convolutions train; its BatchNormalization layers stay frozen (and in
    inference mode, as zoo.unet.assemble calls the encoder with training=False)."""
    import keras

    encoder.trainable = True
    for layer in encoder.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    return encoder.trainable_variables


def train_end_to_end(model, recipe: studies.Recipe, pool, epochs: int, seed: int,
                     encoder_lr: float, decoder_lr: float = 1.0, first_epoch: int = 0) -> dict:
    """Train `model` (a zoo.unet U-Net) on `pool` as ablations.train.train_decoder trains its
    decoder (loss, AdamW, cosine schedule, seeded batch order), and with `encoder_lr` > 0 its
    encoder's convolutions too; each learning rate is that fraction of the recipe's. A second
    stage continues the batch order at `first_epoch`, with schedules of its own. Returns the
    mean loss by epoch, the seconds it took and how far the encoder's weights moved."""
    import keras
    import tensorflow as tf

    from ablations.train import FeatureBatches, cosine_adamw, loss_of
    from zoo.unet import decoder_of, encoder_of

    keras.utils.set_random_seed(seed)
    encoder = encoder_of(model)
    start_weights = [np.asarray(w) for w in encoder.weights]
    steps = epochs * math.ceil(pool.count / recipe.batch_size)
    groups = [(decoder_of(model).trainable_variables,
               cosine_adamw(recipe.learning_rate * decoder_lr, recipe.weight_decay, steps))]
    if encoder_lr > 0:
        groups.append((thaw(encoder), cosine_adamw(recipe.learning_rate * encoder_lr, recipe.weight_decay, steps)))
    variables = [v for group, _ in groups for v in group]
    for group, optimizer in groups:
        optimizer.build(group)
    loss_function = loss_of(recipe)

    @tf.function
    def step(images, masks):
        with tf.GradientTape() as tape:
            loss = loss_function(masks, model(images, training=True))
        gradients = tape.gradient(loss, variables)
        start = 0
        for group, optimizer in groups:
            optimizer.apply(gradients[start:start + len(group)], group)
            start += len(group)
        return loss

    # first_epoch=1: Keras' PyDataset adapter, which train_decoder's fit reads batches through,
    # peeks at a batch and then draws a new order before the first epoch, so the harness's
    # epoch k trains on the order after k; this draws the same orders.
    batches = FeatureBatches(pool, recipe.batch_size, seed, first_epoch=first_epoch + 1)
    started, losses = time.time(), []
    for _ in range(epochs):
        losses.append(float(np.mean([step(*batches[index]) for index in range(len(batches))])))
        batches.on_epoch_end()
    batches.release()
    return {"loss": losses, "train_seconds": time.time() - started,
            "encoder_change": relative_change(start_weights, encoder.weights)}


def probe_then_fine_tune(model, recipe: studies.Recipe, pool, epochs: int, fine_tune_epochs: int,
                         seed: int, fine_tune_lr: float, thaw: bool = True) -> dict:
    """LP-FT (Kumar et al. 2022): the decoder trained on the frozen encoder first, exactly as the
    control, then the whole U-Net fine-tuned for `fine_tune_epochs` with every learning rate at
    `fine_tune_lr` times the recipe's. The encoder is never moved by a random decoder's
    gradients, which is what distorts pretrained features and costs unseen data. `thaw=False`
    is LP-FT's own control: the second stage trains the decoder alone, at the same rate."""
    probed = train_end_to_end(model, recipe, pool, epochs, seed, encoder_lr=0.0)
    if not fine_tune_epochs:
        return probed
    tuned = train_end_to_end(model, recipe, pool, fine_tune_epochs, seed, encoder_lr=fine_tune_lr if thaw else 0.0,
                             decoder_lr=fine_tune_lr, first_epoch=epochs)
    return {"loss": probed["loss"] + tuned["loss"], "train_seconds": probed["train_seconds"] + tuned["train_seconds"],
            "encoder_change": tuned["encoder_change"]}


def relative_change(before: list[np.ndarray], after) -> float:
    """||after - before|| / ||before|| over all the weights."""
    moved = sum(float(np.sum((np.asarray(a) - b) ** 2)) for a, b in zip(after, before))
    return math.sqrt(moved / sum(float(np.sum(b ** 2)) for b in before))


def held_out_probabilities(model, images: np.ndarray, scales) -> np.ndarray:
    """Each tile's probabilities as the served model would give them (zoo.predict.Segmenter)."""
    from zoo.predict import Segmenter

    segmenter = Segmenter(model, scales=scales)
    return np.stack([segmenter.probabilities(image) for image in images])


def run_name(variant: str, encoder_lr: float, fine_tune_epochs: int = 0, frozen: bool = False) -> str:
    if fine_tune_epochs:
        return f"{variant}-{'lplp' if frozen else 'lpft'}{fine_tune_epochs}-lr{encoder_lr:g}"
    return f"{variant}-encoder-lr{encoder_lr:g}"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m ablations.evaluate.unfrozen", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="data folder (default: synthetic smoke scenes)")
    parser.add_argument("--variants", default="os2_shrink", help="the transfer harness's variants, comma-separated")
    parser.add_argument("--encoder-lr", default="0,0.1",
                        help="comma-separated fractions of the decoder's learning rate for the encoder (0: frozen)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of each fold's cosine schedule")
    parser.add_argument("--fine-tune-epochs", type=int, default=0,
                        help="LP-FT: train the decoder on the frozen encoder first (the control), then fine-tune "
                             "everything for this many epochs, every learning rate at each --encoder-lr > 0 times "
                             "the recipe's (default 0: one stage, the encoder thawed from the start)")
    parser.add_argument("--fine-tune-frozen", action="store_true",
                        help="LP-FT's control: the second stage trains only the decoder, at the same rate, telling "
                             "what the encoder adds from what more decoder epochs add (runs named lplpN-lrF)")
    parser.add_argument("--scales", default="1+0.5", help="inference scales, as served (default 1+0.5)")
    parser.add_argument("--budget", default="standard", choices=sorted(studies.BUDGETS))
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    try:
        args.encoder_lr = [float(text) for text in transfer.comma_separated(args.encoder_lr)]
        args.scales = heldout.scales_of(args.scales)
    except ValueError as error:
        parser.error(str(error))
    if not args.encoder_lr or any(lr < 0 for lr in args.encoder_lr):
        parser.error("--encoder-lr: fractions >= 0, comma-separated")
    if args.fine_tune_epochs < 0:
        parser.error("--fine-tune-epochs: 0 or more")
    args.variants = transfer.comma_separated(args.variants)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    return exit_status(lambda: run(args))


def run(args) -> None:
    from ablations import folds, provenance
    from ablations.data import folders
    from ablations.pipeline import scan_samples

    known = transfer._variants()
    variants = [_supported(known, name) for name in args.variants]
    budget = studies.BUDGETS[args.budget]
    samples, _, _ = scan_samples(budget, args.data)
    fingerprint = {"data": provenance.data_fingerprint(samples), "epochs": args.epochs, "budget": budget.name,
                   "scales": list(args.scales), "probe": "unfrozen"}
    images, masks = folders.load_arrays(samples, budget.size)
    area_folds = folds.area_folds([s.area for s in samples])
    pools = {}  # (augmentation, copies) -> ImagePool, shared by the variants that use it
    for variant in variants:
        key = (variant.recipe.augmentation, variant.recipe.copies(budget))
        for encoder_lr in args.encoder_lr:
            fine_tune_epochs = args.fine_tune_epochs if encoder_lr > 0 else 0  # lr 0: the control either way
            frozen = bool(fine_tune_epochs) and args.fine_tune_frozen
            name = run_name(variant.name, encoder_lr, fine_tune_epochs, frozen)
            ours = {**fingerprint, "variant": variant.name, "encoder_lr": encoder_lr,
                    **({"fine_tune_epochs": fine_tune_epochs} if fine_tune_epochs else {}),
                    **({"fine_tune_frozen": True} if frozen else {})}
            for fold in area_folds:
                path = args.out / name / f"{fold.val_area}.json"
                if _finished(path, ours):
                    continue
                if key not in pools:
                    print(f"augmenting {len(images)} tiles: {key[1]} copies, '{key[0]}'", flush=True)
                    pools = {key: augmented_pool(images, masks, *key)}
                record = run_fold(variant, encoder_lr, fine_tune_epochs, frozen, pools[key], images, masks, fold, args)
                np.save(_kept(args.out / "cache" / name / f"{fold.val_area}.npy"), record.pop("probabilities"))
                write_json_atomic(path, {**record, "fingerprint": ours})
    write_text_atomic(args.out / "README.md", report(args.out))
    print(f"wrote {args.out / 'README.md'}")


def _supported(known: dict, name: str):
    if name not in known:
        raise UserFacingError(f"unknown variant {name!r}; the transfer harness's are {', '.join(known)}")
    variant = known[name]
    from ablations.data.augment import STYLE_AUGMENTATIONS

    if variant.relabel != "none" or variant.recipe.augmentation in STYLE_AUGMENTATIONS or variant.epoch_factor != 1:
        raise UserFacingError(f"variant {name}: relabelled, restyled or longer variants are not supported by this probe")
    return variant


def _finished(path: Path, fingerprint: dict) -> bool:
    if not path.is_file():
        return False
    if json.loads(path.read_text()).get("fingerprint") != fingerprint:
        raise UserFacingError(f"{path} was made with other data, epochs, scales or budget; choose another --out")
    print(f"{path}: finished earlier, skipped")
    return True


def _kept(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def run_fold(variant, encoder_lr: float, fine_tune_epochs: int, frozen: bool, pool: ImagePool, images, masks,
             fold, args) -> dict:
    """Train one fold's U-Net end to end (in two stages with `fine_tune_epochs`) and score its
    held-out city at every threshold."""
    from ablations.folds import FeatureView, threshold_counts
    from ablations.pipeline import load_encoder

    print(f"{run_name(variant.name, encoder_lr, fine_tune_epochs, frozen)}: hold out {fold.val_area} ({len(fold.val_index)} tiles), "
          f"train on {len(fold.train_index)}", flush=True)
    # A fresh encoder each fold (training it end to end changes it in place), and the decoder
    # the harness's fold starts from.
    model = transfer.seeded_model(variant, load_encoder(args.weights, variant.config.taps))
    train = FeatureView(pool, fold.train_index)
    trained = (probe_then_fine_tune(model, variant.recipe, train, args.epochs, fine_tune_epochs, variant.seed,
                                    encoder_lr, thaw=not frozen)
               if fine_tune_epochs else
               train_end_to_end(model, variant.recipe, train, args.epochs, variant.seed, encoder_lr))
    probabilities = held_out_probabilities(model, images[fold.val_index], args.scales)
    counts = threshold_counts(probabilities, masks[fold.val_index])
    at_half = heldout.scores(counts[heldout.threshold_index()])
    print(f"  {fold.val_area}: building IoU {at_half['building_iou']:.3f} at 0.5 "
          f"({trained['train_seconds']:.0f} s training, encoder moved {trained['encoder_change']:.4f})", flush=True)
    return {"city": fold.val_area, "tiles": int(len(fold.val_index)), "counts": counts.tolist(),
            "thresholds": heldout.THRESHOLDS.tolist(), **trained,
            "probabilities": probabilities.astype(np.float16)}


def report(out: Path) -> str:
    """Building IoU per held-out city at threshold 0.5, each recipe's seeds pooled."""
    import pandas as pd

    runs: dict[str, dict[str, dict]] = {}  # recipe -> seed's run -> city -> record
    for path in sorted(out.glob("*/*.json")):
        record = json.loads(path.read_text())
        recipe = re.sub(r"_seed\d+(?=-(encoder-lr|lpft|lplp))", "", path.parent.name)
        runs.setdefault(recipe, {}).setdefault(path.parent.name, {})[record["city"]] = record
    rows = [_row(recipe, seeds) for recipe, seeds in sorted(runs.items())]
    return "\n".join([
        "# What the frozen encoder costs: the U-Net trained end to end, each city held out in turn", "",
        "Written by `python -m ablations.evaluate.unfrozen`. Each fold trains on the other cities and is "
        "scored on its held-out city as served (zoo.predict.Segmenter at the run's scales), threshold 0.5; "
        "counts summed over a recipe's seeds, then building IoU per city and the mean over cities. "
        "`encoder-lr0` is the frozen encoder (the control); `encoder-lrF` trains the encoder's convolutions at "
        "F times the decoder's learning rate from the start; `lpftN-lrF` trains the decoder on the frozen encoder "
        "first (the control), then fine-tunes everything for N epochs at F times the recipe's learning rate (LP-FT); "
        "`lplpN-lrF` is its control, the second stage training the decoder alone. A probe: nothing here is served.", "",
        pd.DataFrame(rows).to_markdown(index=False) if rows else "(no finished folds yet)", ""])


def _row(recipe: str, seeds: dict[str, dict]) -> dict:
    cities = sorted(set.intersection(*(set(by_city) for by_city in seeds.values())))

    def counts_of(by_city: dict) -> dict:  # city -> (thresholds, 4), the cities every seed finished
        return {city: by_city[city]["counts"] for city in cities}

    pooled = heldout.at_threshold(heldout.summed_counts(list(seeds.values()), counts_of))
    mean = heldout.mean_of(pooled)
    each = [heldout.mean_of(heldout.at_threshold(counts_of(by_city)))["building_iou"] for by_city in seeds.values()]
    moved = [r["encoder_change"] for by_city in seeds.values() for r in by_city.values()]
    return {"recipe": recipe, "seeds": len(seeds), **{c: round(pooled[c]["building_iou"], 3) for c in cities},
            "mean": round(mean["building_iou"], 3), "P / R": f"{mean['precision']:.3f} / {mean['recall']:.3f}",
            "each seed": " / ".join(f"{v:.3f}" for v in each), "encoder moved": f"{max(moved):.4f}"}


if __name__ == "__main__":
    sys.exit(main())
