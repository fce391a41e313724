"""What transfers to an unseen city: recipe variants compared under cross-validation by city.

    python -m ablations.evaluate.transfer --data ../shared/data/oam_buildings [--variants a,b] [--epochs 3]

Every variant runs the final fit's learning curve (ablations.final): one decoder per city,
trained on the other cities with the same seed and cosine schedule, scored on its held-out
city after every epoch at every threshold. A variant differs from `selected` (the recipe the
final fit serves) in one thing: its loss, its preprocessing, its augmentation or its width.

- Features are encoded once per (form, augmentation) and shared by the folds (a form: the
  preprocessing, the encoder's taps, one or two scales; a pool too large for memory, as the
  wide taps', is memory-mapped from OUT/cache/pools/ and reused by a later run); a
  style augmentation borrows other cities' looks, so its augmented copies are encoded per
  fold from that fold's training cities only (the held-out city's look never trains).
- Test-time views are scored on the last epoch from encoded flipped and rotated copies of
  the held-out tiles, so which views to serve (`--views`: the flips by default, also the
  two-view sets and all eight rotations and flips) is chosen by cross-validation like the
  threshold.
- Each variant writes OUT/VARIANT/curve.json when it ends: a rerun skips finished variants
  and each finished fold is kept in OUT/cache/VARIANT/CITY-fold.json, so a killed run loses
  only the fold it was in. Held-out probabilities of the last epoch go to OUT/cache/ (not
  committed) for ensembles of variants (`--ensembles a+b`).
- OUT/README.md compares the variants: per city at the epoch and threshold chosen on the
  other cities, and the mean over cities.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ablations import studies
from ablations.data.augment import STYLE_AUGMENTATIONS
from ablations.errors import UserFacingError, exit_status
from zoo.config import DecoderConfig
from zoo.files import write_json_atomic, write_text_atomic
from ablations.heldout import option_names, scales_of
from zoo.predict import DIHEDRAL_VIEWS, TTA_VIEW_INDICES

# Test-time view sets cross-validation can score (zoo.predict's names, "none" is always scored).
RECORDABLE_VIEWS = [name for name in TTA_VIEW_INDICES if name != "none"]
DEFAULT_VIEWS = "flips"

SEED = 0
# A pool whose features would take more than this lives in a memory-mapped file under the
# run's cache, not in memory (the wide taps' two copies of 1,638 tiles: 17 GiB).
POOL_IN_MEMORY_LIMIT = 8 * 2 ** 30


@dataclasses.dataclass(frozen=True)
class Form:
    """What features are encoded as: the model's input preprocessing, the encoder's taps
    (zoo.encoder.TAP_SETS) and whether each image is encoded at half size too (a two-scale
    decoder's inputs)."""

    preprocess: str = "scale"
    taps: str = "narrow"
    half: bool = False

    @classmethod
    def of(cls, config: DecoderConfig) -> "Form":
        return cls(config.preprocess, config.taps, config.scale_fusion != "none")

    def folder(self, data_key: str, what: str) -> str:
        """A folder name for `what` in this form; the narrow taps' names are those written
        before taps were a choice, so encodings kept on disk are reused."""
        return (f"{data_key}-{self.preprocess}-{what}" + ("-half" if self.half else "")
                + ("" if self.taps == "narrow" else f"-{self.taps}taps"))


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    why: str
    config: DecoderConfig
    recipe: studies.Recipe
    relabel: str = "none"  # "confident": label pixels another city's model disputes train nothing
    base: str = "selected"  # the variant this one changes one thing of (the report's comparison)
    seed: int = SEED  # the decoder's initial weights and the order it sees the tiles in
    epoch_factor: int = 1  # its folds train this many times the run's --epochs

    def epochs_of(self, run_epochs: int) -> int:
        return run_epochs * self.epoch_factor

    @property
    def encoding(self) -> tuple[Form, str, int | None]:
        """What its pool is encoded with: the form, augmentation and copies (None: the budget's)."""
        return Form.of(self.config), self.recipe.augmentation, self.recipe.augmented_copies


def _variants() -> dict[str, Variant]:
    from ablations.final import SELECTED_DECODER as base, SELECTED_RECIPE as recipe

    two_scale = dataclasses.replace(base, scale_fusion="attention")

    def variant(name, why, config=base, relabel="none", **recipe_changes):
        return Variant(name, why, config, dataclasses.replace(recipe, **recipe_changes), relabel)

    listed = [
        variant("selected", "the served recipe: sensor augmentation, BCE + Dice, fixed input scaling"),
        variant("edge_band", "label noise: a 2-pixel band each side of every label edge ignored", edge_band=2),
        variant("style", "sensor augmentation plus other training cities' looks (histogram, PCA "
                "distribution or FDA spectrum matching, albumentations)", augmentation="sensor_style"),
        variant("standardize", "each image standardised per channel inside the model (colour constancy)",
                config=dataclasses.replace(base, preprocess="standardize")),
        variant("confident", "label noise: pixels a model trained on another training city confidently "
                "disputes train nothing (confident learning, per fold)", relabel="confident"),
        variant("bce", "plain BCE: calibrated probabilities, so a threshold may transfer", loss="bce"),
        variant("shrink", "sensor augmentation plus farther views: 3 tiles in 10 shrunk 2-4x, the border "
                "reflected (buildings at the sizes half-scale inference shows them)", augmentation="sensor_shrink"),
        variant("shrink_standardize", "farther views and per-image standardisation together: each "
                "raised Kathmandu, and they moved Dar es Salaam in opposite directions",
                config=dataclasses.replace(base, preprocess="standardize"), augmentation="sensor_shrink"),
        variant("shrink_copies4", "farther views seen more often: 4 encoded copies of each tile (3 "
                "augmented, so an epoch draws an augmented one 3 times in 4, against 1 in 2)",
                augmentation="sensor_shrink", augmented_copies=4),
        variant("rescale", "sensor augmentation plus farther or closer views (1 tile in 4 each), one scale: "
                "what the closer views alone do, beside rescale_scaleatt", augmentation="sensor_rescale"),
        variant("shrink_scaleatt", "farther views, and a two-scale decoder: the same decoder on the image at "
                "full and at half size, a learned per-pixel weight mixing the two (attention to scale)",
                config=two_scale, augmentation="sensor_shrink"),
        variant("rescale_scaleatt", "the two-scale decoder trained on farther and closer views (1 tile in 4 "
                "each): closer views make roofs too large for the full-size pass, where the mix should "
                "learn to trust the half-size one", config=two_scale, augmentation="sensor_rescale"),
        variant("shrink_widetaps", "farther views, and the wide taps: the encoder's 96- and 144-channel "
                "expansions at strides 2 and 4 (the tutorial's) instead of its 16- and 24-channel bottlenecks: "
                "more of what the frozen encoder saw at high resolution", config=dataclasses.replace(base, taps="wide"),
                augmentation="sensor_shrink"),
        variant("shrink_balanced", "farther views, each training city drawn equally often (an epoch of the same "
                "length): the largest city, Dar es Salaam with 966 of 1,638 tiles, no longer decides what the "
                "decoder learns", augmentation="sensor_shrink", sampling="areas"),
        variant("shrink_mixstyle", "farther views, and MixStyle: while training, each image's per-channel "
                "statistics at the stride-2, 4 and 8 taps mixed with another batch image's (Zhou et al. 2021), "
                "so a roof is seen in other cities' looks; identity when served",
                config=dataclasses.replace(base, feature_mixing="mixstyle"), augmentation="sensor_shrink"),
        variant("label_smoothing", "label noise: BCE targets smoothed by 0.1", label_smoothing=0.1),
        variant("width0.5", "capacity: twice the decoder channels", config=dataclasses.replace(base, width=0.5)),
        variant("os2", "speed: the decoder stops at stride 2 and resizes its logits bilinearly (no "
                "full-resolution level: 37% of a training step)", config=dataclasses.replace(base, output_stride=2)),
    ]
    # The served model decodes at stride 2 (results/final): each recipe change again on that
    # decoder, compared with `os2`. Faster too (42 against 71 min a variant before zoo.allocator).
    at_served_stride = [dataclasses.replace(v, name=f"os2_{v.name}", why=f"{v.why}; stride 2, as served",
                                            config=dataclasses.replace(v.config, output_stride=2), base="os2")
                        for v in listed if v.name not in ("selected", "os2")]
    # Each stride-2 variant again with seeds 1 and 2 (NAME_seedK, compared with NAME): the
    # spread a difference must beat; the report also pools each recipe's seeds. os2 + os2_seed1,
    # a two-decoder ensemble, is set against one decoder trained twice as long (os2_twice):
    # equal training CPU.
    reseeded = [dataclasses.replace(v, name=f"{v.name}_seed{seed}", seed=seed, base=v.name,
                                    why=f"seed spread: {v.name} with seed {seed} instead of 0")
                for seed in (1, 2) for v in [_by_name(listed, "os2"), *at_served_stride]]
    longer = [dataclasses.replace(_by_name(listed, "os2"), name="os2_twice", epoch_factor=2, base="os2",
                                  why="equal training CPU: the served recipe at stride 2 trained twice as "
                                      "long, against the two-decoder ensemble os2+os2_seed1")]
    return {v.name: v for v in listed + at_served_stride + reseeded + longer}


def _by_name(variants: list[Variant], name: str) -> Variant:
    return next(v for v in variants if v.name == name)


def parse_args(argv=None):
    variants = _variants()
    parser = argparse.ArgumentParser(prog="python -m ablations.evaluate.transfer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="data folder (default: synthetic smoke scenes)")
    parser.add_argument("--variants", default=",".join(variants),
                        help=f"comma-separated, run in this order (default all: {', '.join(variants)})")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of each fold's cosine schedule")
    parser.add_argument("--budget", default="standard", choices=sorted(studies.BUDGETS))
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--out", type=Path, default=Path("results/transfer"))
    parser.add_argument("--ensembles", default="", help="e.g. selected+standardize: averaged probabilities")
    parser.add_argument("--views", default=DEFAULT_VIEWS,
                        help="comma-separated test-time view sets to score besides none (default "
                             f"{DEFAULT_VIEWS}; choices: {', '.join(RECORDABLE_VIEWS)})")
    parser.add_argument("--scales", default="",
                        help="comma-separated sets of inference scales to score besides 1 alone, each "
                             "with no views and with every --views set, e.g. 1+0.5,1+0.5+0.25 (zoo.predict's "
                             "scales: the image also predicted shrunk, the probabilities averaged)")
    parser.add_argument("--report-only", action="store_true", help="rewrite README.md from finished variants")
    parser.add_argument("--drop-encodings", action="store_true",
                        help="at the end, delete the encoded views and pools under OUT/cache (GiBs each; a later "
                             "run encodes them again); finished folds and their probabilities are kept")
    args = parser.parse_args(argv)
    unknown_views = [v for v in comma_separated(args.views) if v not in RECORDABLE_VIEWS]
    if unknown_views or not comma_separated(args.views):
        parser.error(f"--views: unknown or empty {', '.join(unknown_views)}; choices: {', '.join(RECORDABLE_VIEWS)}")
    args.views = comma_separated(args.views)
    try:
        scale_sets = [scales_of(text) for text in comma_separated(args.scales)]
    except ValueError as error:
        parser.error(f"--scales: {error}")
    args.options = option_names(args.views, scale_sets)  # what each fold scores, by name
    unknown = [v for v in comma_separated(args.variants) if v not in variants]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choices: {', '.join(variants)}")
    return args


def comma_separated(text: str) -> list[str]:
    """"a, b,,c" -> ["a", "b", "c"]."""
    return [v.strip() for v in text.split(",") if v.strip()]


def main(argv=None) -> int:
    args = parse_args(argv)
    return exit_status(lambda: run(args))


@dataclasses.dataclass(frozen=True)
class EncoderProbe:
    """Another frozen encoder than the served one, for a probe (ablations.evaluate.image_statistics).
    Its name goes into the run's fingerprint, so its curves, kept folds and encodings are never
    taken for the served encoder's, nor theirs for its. `encoder_for(taps)` builds it."""
    name: str
    encoder_for: Callable


def run(args, probe: EncoderProbe | None = None) -> None:
    if not args.report_only:
        run_variants(args, probe)
        score_ensembles(args)
    write_report(args)
    if args.drop_encodings:
        drop_encodings(args.out)


def drop_encodings(out: Path) -> None:
    """Delete what Encodings keeps on disk under OUT/cache (the viewed copies, the pools too
    large for memory): regenerable, and 2.5-17 GiB each."""
    import shutil

    for folder in (out / "cache" / "flipped", out / "cache" / "pools"):
        if folder.is_dir() or folder.is_symlink():
            print(f"deleting the encodings in {folder}")
            folder.unlink() if folder.is_symlink() else shutil.rmtree(folder)


def run_variants(args, probe: EncoderProbe | None = None) -> None:
    from ablations import final, folds
    from ablations.data import folders
    from ablations.pipeline import load_encoder, scan_samples

    budget = studies.BUDGETS[args.budget]
    samples, _, source = scan_samples(budget, args.data)
    fingerprint = _fingerprint(samples, args.epochs, budget.name)
    if probe is not None:
        fingerprint["encoder"] = probe.name  # absent for the served encoder: its curves stay valid
    todo = [v for v in (_variants()[n] for n in comma_separated(args.variants))
            if not _finished(args.out, v, fingerprint, args.options)]
    if not todo:
        print("every variant asked for has finished; rewriting the report")
        return
    images, masks = folders.load_arrays(samples, budget.size)
    areas = np.asarray([s.area for s in samples], dtype=object)
    area_folds = folds.area_folds(list(areas))
    data_key = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:12]
    zooms = np.asarray([-1 if s.zoom is None else s.zoom for s in samples])  # -1: not a web-map tile
    encoder_for = probe.encoder_for if probe else (lambda taps: load_encoder(args.weights, taps))
    encodings = Encodings(encoder_for, images, masks, areas, budget, args.out / "cache" / "flipped", data_key, zooms)
    for variant in todo:
        started = time.time()
        print(f"variant {variant.name}: {variant.why}", flush=True)
        if variant.recipe.edge_band:
            draw_edge_band(variant, images, masks, args.out / variant.name / "edge_band.png")
        results, extra = cross_validate_variant(variant, encodings, area_folds, args.epochs, budget,
                                                cache=args.out / "cache", fingerprint=fingerprint,
                                                views=args.options)
        # The curve is as long as the folds trained (epochs_of), read from what they recorded.
        curve = final.curve_record(results, len(results[0].counts), time.time() - started)
        curve.update(variant=variant.name, why=variant.why, config=variant.config.to_dict(),
                     recipe=variant.recipe.to_dict(), relabel=variant.relabel, seed=variant.seed, fingerprint=fingerprint,
                     source=source, **extra)
        write_json_atomic(args.out / variant.name / "curve.json", curve)
        print(f"variant {variant.name} done in {(time.time() - started) / 60:.1f} min: mean held-out "
              f"building IoU {max(curve['mean_heldout_building_iou_by_epoch']):.3f}", flush=True)


def _fingerprint(samples, epochs: int, budget: str) -> dict:
    from ablations import provenance

    return {"data": provenance.data_fingerprint(samples), "epochs": epochs, "budget": budget, "seed": SEED}


def _finished(out: Path, variant: Variant, fingerprint: dict, views: list[str]) -> bool:
    from ablations.heldout import recorded_views

    path = out / variant.name / "curve.json"
    if not path.is_file():
        return False
    curve = json.loads(path.read_text())
    if curve.get("fingerprint") != fingerprint:
        raise UserFacingError(f"{path} was made with other data, epochs, budget or encoder; choose another --out "
                              "or delete that variant's folder to rerun it")
    missing = [name for name in views if name not in recorded_views(curve)]
    if missing:  # a rerun would retrain and overwrite a finished curve: never silently
        raise UserFacingError(f"{path} finished without the test-time views {', '.join(missing)} asked for; "
                              "choose another --out to score them")
    print(f"variant {variant.name}: finished earlier ({path}), skipped")
    return True


class Encodings:
    """Encoder features of the whole pool by (form, augmentation, copies), and flipped or
    rotated copies of every tile for test-time views. One form is kept in memory at a time,
    and one pool (about 5 GiB for two copies of 1,638 tiles at the narrow taps; a pool over
    POOL_IN_MEMORY_LIMIT is memory-mapped from `disk`'s parent/pools). The viewed copies (2.5
    GiB a view) live on disk under `disk` and are read memory-mapped. File names carry the
    data's fingerprint, so a later run on the same data reuses them and another data set never
    does. `encoder_for(taps)`: the frozen encoder cut at zoo.encoder.TAP_SETS[taps]."""

    def __init__(self, encoder_for, images, masks, areas, budget, disk: Path, data_key: str, zooms=None):
        self.encoder_for, self.images, self.masks, self.areas, self.budget = encoder_for, images, masks, areas, budget
        # Each tile's zoom level (ground resolution), so options can be scored per zoom; -1: unknown.
        self.zooms = np.full(len(images), -1) if zooms is None else np.asarray(zooms)
        self.disk, self.data_key = Path(disk), data_key
        self.cache: dict = {}  # (form, augmentation, copies) -> the pool's features
        self.views: dict = {}  # (form, view, scale) -> memory-mapped features of viewed tiles
        self.encoders: dict = {}

    def encoder(self, taps: str = "narrow"):
        if taps not in self.encoders:
            self.encoders[taps] = self.encoder_for(taps)
        return self.encoders[taps]

    def pool(self, form: Form, augmentation: str, copies: int | None = None):
        copies = studies.Recipe(augmentation=augmentation, augmented_copies=copies).copies(self.budget)
        key = (form, augmentation, copies)
        if key not in self.cache:
            self._make_room(form)
            if self.pool_bytes(form, copies) <= POOL_IN_MEMORY_LIMIT:
                self.cache[key] = self.encode(form, self.images, self.masks, copies, augmentation)
            else:
                folder = self.disk.parent / "pools" / form.folder(self.data_key, f"{augmentation}-copies{copies}")
                self.cache[key] = self._on_disk(folder, lambda allocate: self.encode(
                    form, self.images, self.masks, copies, augmentation, allocate=allocate))
        return self.cache[key]

    def pool_bytes(self, form: Form, copies: int) -> int:
        """What a pool's float16 features take: every tap of every copy (a quarter more at half size)."""
        from zoo.unet import STRIDES

        height, width = self.images.shape[1:3]
        channels = [int(t.shape[-1]) for t in self.encoder(form.taps).outputs]
        per_tile = sum((height // s) * (width // s) * c for s, c in zip(STRIDES, channels))
        return int(2 * copies * len(self.images) * per_tile * (1.25 if form.half else 1))

    def originals(self, form: Form):
        """Copy 0 of any cached pool is the unaugmented tiles (ablations.features.encode)."""
        for (kept, _, _), features in self.cache.items():
            if kept == form:
                return features
        return self.pool(form, "none")

    def viewed(self, form: Form, view: int, scale: float = 1.0):
        """Every tile seen through zoo.predict.DIHEDRAL_VIEWS[view], resized by `scale` and
        padded as zoo.predict's Segmenter does (`scaled_tiles`)."""
        key = (form, view, scale)
        if key not in self.views:
            forward, _ = DIHEDRAL_VIEWS[view]
            images = self.images if scale == 1.0 else scaled_tiles(self.images, scale)
            masks = self.masks if scale == 1.0 else np.zeros(images.shape[:3], np.uint8)  # never scored
            folder = self.disk / form.folder(self.data_key, f"view{view}" + ("" if scale == 1.0 else f"-scale{scale:g}"))
            self.views[key] = self._on_disk(folder, lambda allocate: self.encode(
                form, forward(images), forward(masks), 1, "none", allocate=allocate), forward(masks)[None])
        return self.views[key]

    def _on_disk(self, folder: Path, encode, masks=None):
        """Features encoded straight into memory-mapped files under `folder`, or those files
        as a run before this one wrote them; `done` is written last, so a killed write is
        redone. `masks`: the copies' masks if known (else those the encoding saved)."""
        from ablations.features import FeatureSet

        if not (folder / "done").is_file():
            folder.mkdir(parents=True, exist_ok=True)
            encoded = encode(lambda number, shape, dtype: np.lib.format.open_memmap(
                folder / f"tap{number}.npy", "w+", dtype, shape))
            for tap in encoded.taps:
                tap.flush()
            np.save(folder / "masks.npy", encoded.masks)
            (folder / "done").write_text("complete\n")
            del encoded
        count = len(list(folder.glob("tap*.npy")))
        taps = [np.load(folder / f"tap{n}.npy", mmap_mode="r") for n in range(count)]
        return FeatureSet(taps, np.load(folder / "masks.npy") if masks is None else masks, self.images)

    def encode(self, form: Form, images, masks, copies, augmentation, allocate=None):
        from ablations import features
        from ablations.final import SELECTED_DECODER
        from zoo import unet

        config = dataclasses.replace(SELECTED_DECODER, preprocess=form.preprocess, taps=form.taps,
                                     scale_fusion="attention" if form.half else "none")
        model = unet.build(config, encoder=self.encoder(form.taps))
        print(f"  encoding {len(images)} tiles: {copies} copies, {form.preprocess} input, {form.taps} taps, "
              f"'{augmentation}' augmentation" + (", at full and half size" if form.half else ""), flush=True)
        kind = augmentation if copies > 1 else "none"  # one copy: the images as given
        return features.encode(model, images, masks, copies, kind, seed=SEED, allocate=allocate)

    def _make_room(self, form: Form) -> None:
        """Before a new pool is encoded: every pool goes (GiBs each: a run that kept two, beside
        a fit, once ran a 24 GiB machine out of memory), and the viewed copies of another form.
        Variants listed with their augmentation together encode each pool once."""
        self.cache.clear()
        for key in [k for k in self.views if k[0] != form]:
            del self.views[key]
        gc.collect()


def seeded_model(variant: Variant, encoder):
    """The variant's U-Net on `encoder`, its decoder's initial weights drawn from the variant's
    seed (after the encoder is built: building one draws from the same generator)."""
    import keras

    from zoo import unet

    keras.utils.set_random_seed(variant.seed)
    return unet.build(variant.config, encoder=encoder)


def cross_validate_variant(variant: Variant, encodings: Encodings, area_folds, epochs: int, budget,
                           cache: Path, fingerprint: dict, views=(DEFAULT_VIEWS,)):
    """The variant's fold results (ablations.folds.FoldResult), and what else its folds record:
    the last epoch's held-out counts under each test-time view set of `views`, the label
    pixels set aside. Each finished fold is kept under `cache` with the data's fingerprint, so
    a variant killed mid-way resumes at its first unfinished fold."""
    from ablations import folds

    def build():
        return seeded_model(variant, encodings.encoder(variant.config.taps))

    epochs = variant.epochs_of(epochs)
    # What each fold records, by kind: kind -> option -> held-out city -> counts.
    recorded = {kind: {name: {} for name in (*views, *(PER_TILE_ONLY if kind == "tile_counts" else ()))}
                for kind in FOLD_RECORDS}
    results, set_aside = [], {}
    judged = judges(encodings, variant, build, epochs, budget, cache) if variant.relabel == "confident" else None
    for fold in area_folds:
        kept = _finished_fold(cache / variant.name, fold.val_area, fingerprint, views)
        if kept is not None:
            results.append(kept["result"])
            for kind in FOLD_RECORDS:  # folds kept before a kind was recorded have None for it
                for name in recorded[kind]:
                    recorded[kind][name][fold.val_area] = (kept[kind] or {}).get(name)
            if kept["set_aside"] is not None:
                set_aside[fold.val_area] = kept["set_aside"]
            continue
        pool = training_pool(encodings, variant, fold)
        if judged is not None:
            pool, set_aside[fold.val_area] = relabelled(pool, encodings, fold, judged, cache.parent / variant.name)
        result = folds.cross_validate(build, variant.recipe, pool, [fold], epochs, variant.seed,
                                      schedule_epochs=epochs, eager=budget.eager, areas=encodings.areas)[0]
        scored = score_fold(result.model, encodings, Form.of(variant.config), fold, views, cache / variant.name)
        for kind in FOLD_RECORDS:
            for name, counts in scored[kind].items():
                recorded[kind][name][fold.val_area] = counts
        result.model = None  # scored: free it
        results.append(result)
        _keep_fold(cache / variant.name, result, scored, set_aside.get(fold.val_area), fingerprint)
        del pool, scored  # a style fold's stacked features (GiBs) go before the next fold's are built
        gc.collect()
    return results, {**recorded, "set_aside": set_aside}


# What a fold records of its held-out tiles, under each option: "views", counts at every
# threshold (what the report and the fit choose from); "views_by_zoom", the same per zoom
# level (ablations.evaluate.zooms); "tile_counts", each tile's (tp, fp, fn) at threshold 0.5
# (ablations.evaluate.adaptive: rules that choose an option per tile).
FOLD_RECORDS = ("views", "views_by_zoom", "tile_counts")
# Scored per tile only: no views at scale 1, whose threshold counts the curve already holds.
PER_TILE_ONLY = ("none",)


def score_fold(model, encodings: Encodings, form: Form, fold, views, folder: Path) -> dict:
    """The held-out tiles of a fold under every option of `views` (and PER_TILE_ONLY), as
    FOLD_RECORDS: kind -> option -> counts. One-scale probabilities are kept under `folder`
    for ensembles of variants (every option would be GiBs)."""
    from ablations.folds import threshold_counts

    names = [*views, *(name for name in PER_TILE_ONLY if name not in views)]
    by_option = view_averaged_probabilities(model, encodings, form, fold.val_index, names)
    masks, zooms = encodings.masks[fold.val_index], encodings.zooms[fold.val_index]
    scored = {kind: {} for kind in FOLD_RECORDS}
    for name in names:
        probs = by_option.pop(name)
        scored["tile_counts"][name] = tile_counts(probs, masks)
        if name in views:
            scored["views"][name] = threshold_counts(probs, masks).tolist()
            scored["views_by_zoom"][name] = counts_by_zoom(probs, masks, zooms)
            if "@" not in name:
                folder.mkdir(parents=True, exist_ok=True)
                np.save(folder / f"{fold.val_area}-{name}.npy", probs.astype(np.float16))
        del probs
    return scored


def tile_counts(probs: np.ndarray, masks: np.ndarray, threshold: float = 0.5) -> list[list[int]]:
    """Each tile's (tp, fp, fn) pixels at `threshold` (a pixel at or above it is building)."""
    predicted, truth = probs >= threshold, masks.astype(bool)
    counts = [(predicted & truth), (predicted & ~truth), (~predicted & truth)]
    return np.stack([c.sum(axis=(1, 2)) for c in counts], axis=1).astype(np.int64).tolist()


def counts_by_zoom(probs: np.ndarray, masks: np.ndarray, zooms: np.ndarray) -> dict[str, list]:
    """Zoom level (as text, a JSON key) -> the counts of the tiles at that zoom, every threshold."""
    from ablations.folds import threshold_counts

    return {str(zoom): threshold_counts(probs[zooms == zoom], masks[zooms == zoom]).tolist()
            for zoom in sorted(set(zooms.tolist()))}


def _keep_fold(folder: Path, result, scored: dict, set_aside: dict | None, fingerprint: dict) -> None:
    write_json_atomic(folder / f"{result.val_area}-fold.json", {
        "fingerprint": fingerprint, "val_area": result.val_area, "tiles": int(result.tiles),
        "counts": np.asarray(result.counts).tolist(), "history": result.history,
        "train_seconds": float(result.train_seconds), **scored,
        "set_aside": None if set_aside is None else {a: float(f) for a, f in set_aside.items()}})


def _finished_fold(folder: Path, val_area: str, fingerprint: dict, views) -> dict | None:
    """A fold kept by an earlier, interrupted run of this variant on the same data and epochs
    that scored every view set of `views`."""
    from ablations.folds import FoldResult
    from ablations.heldout import recorded_views

    path = folder / f"{val_area}-fold.json"
    if not path.is_file():
        return None
    kept = json.loads(path.read_text())
    if kept["fingerprint"] != fingerprint:
        return None  # another data set or schedule: run the fold again (the curve checks the rest)
    kept_views = recorded_views(kept)  # a fold kept before view sets had names holds the flips
    if any(name not in kept_views for name in views):
        return None  # scored without a view set asked for now: run the fold again
    print(f"  fold without {val_area}: finished earlier ({path}), not re-run", flush=True)
    result = FoldResult(val_area, kept["tiles"], np.asarray(kept["counts"], dtype=np.int64), kept["history"],
                        kept["train_seconds"], model=None)
    # Folds kept before a kind of FOLD_RECORDS was recorded have None for it.
    return {"result": result, "views": kept_views, "views_by_zoom": kept.get("views_by_zoom"),
            "tile_counts": kept.get("tile_counts"), "set_aside": kept["set_aside"]}


def draw_edge_band(variant: Variant, images, masks, path: Path) -> None:
    """What the edge band sets aside, on the tiles where it sets aside most."""
    from ablations.evaluate.label_noise import flagged_picture
    from zoo.losses import away_from_edges

    band = np.asarray(away_from_edges(masks[..., None].astype(np.float32), variant.recipe.edge_band))[..., 0] == 0
    flagged_picture(images, masks, band, path, f"edge band: {variant.recipe.edge_band} px each side of every "
                    f"label edge trains nothing ({100 * band.mean():.1f} % of pixels)")


def judges(encodings: Encodings, variant: Variant, build, epochs: int, budget, cache: Path) -> dict:
    """city -> probabilities (copies, N, H, W) of a decoder trained on that city alone, for
    every pool tile: the judges of the confident-learning filter (ablations.evaluate.label_noise)."""
    from ablations.folds import FeatureView
    from ablations.evaluate.label_noise import CopyView
    from ablations.train import decoder_probabilities, train_decoder
    from zoo.unet import decoder_of

    pool = encodings.pool(*variant.encoding)
    judged = {}
    for area in sorted(set(encodings.areas)):
        # Other data, another decoder or seed never reuse a judge.
        path = cache / "judges" / f"{encodings.data_key}-{variant.config.name}-seed{variant.seed}-{area}.npy"
        if not path.is_file():  # a resumed run reuses a judge trained before the kill
            print(f"  judge: a decoder trained on {area} alone", flush=True)
            model = build()
            own = np.flatnonzero(encodings.areas == area)
            train_decoder(model, variant.recipe, FeatureView(pool, own), epochs, variant.seed,
                          eager=budget.eager, schedule_epochs=epochs, areas=encodings.areas[own])
            probs = [decoder_probabilities(decoder_of(model), CopyView(pool, c)) for c in range(pool.copies)]
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, np.stack(probs).astype(np.float16))
        judged[area] = np.load(path)
    return judged


def relabelled(pool, encodings: Encodings, fold, judged: dict, out: Path):
    """The fold's pool with its training pixels' disputed labels set aside, the fraction set
    aside per training city, and a picture of the most disputed tiles."""
    from ablations.evaluate import label_noise
    from ablations.features import FeatureSet
    from zoo.losses import IGNORE

    masks, fractions = label_noise.filtered_masks(pool.masks, encodings.areas, fold.train_index, judged)
    index = fold.train_index
    label_noise.flagged_picture(encodings.images[index], pool.masks[0, index], masks[0, index] == IGNORE,
                                out / f"set_aside_{fold.val_area}.png",
                                f"fold without {fold.val_area}: labels set aside in " + ", ".join(
                                    f"{a} {100 * f:.1f} %" for a, f in fractions.items()))
    print("  set aside: " + ", ".join(f"{a} {100 * f:.1f} % of label pixels" for a, f in fractions.items()), flush=True)
    return FeatureSet(pool.taps, masks, pool.images), fractions


def training_pool(encodings: Encodings, variant: Variant, fold):
    """The features a fold trains and validates on (indices into the whole pool). For a
    style augmentation: every tile's original, plus for the fold's training tiles a copy
    restyled after the fold's *other* training cities, never the held-out one. Held-out
    tiles keep their original in both copies; validation reads copy 0 only."""
    form, augmentation, copies = variant.encoding
    if augmentation not in STYLE_AUGMENTATIONS:
        return encodings.pool(form, augmentation, copies)
    if form.half:
        raise UserFacingError(f"variant {variant.name}: a style augmentation is not encoded at half size")
    from ablations.data import augment

    originals = encodings.originals(form)
    index = fold.train_index
    images, masks = augment.restyle(augmentation, encodings.images, encodings.masks, encodings.areas, index, SEED)
    restyled = encodings.encode(form, images, masks, 1, f"{augmentation}, styles from "
                                f"{', '.join(sorted(set(encodings.areas[index])))}")
    return RestyledCopies(originals, restyled, index)


class RestyledCopies:
    """Two copies of the pool without duplicating it: copy 0 is `originals`; copy 1 is the
    restyled feature of a training tile, and the original of any other (a held-out tile,
    whose copy 1 is never read). Duck-types FeatureSet."""

    def __init__(self, originals, restyled, index: np.ndarray):
        self.originals, self.restyled = originals, restyled
        self.position = np.full(originals.count, -1)
        self.position[index] = np.arange(len(index))
        self.images = originals.images

    copies = 2

    @property
    def count(self) -> int:
        return self.originals.count

    @property
    def masks(self) -> np.ndarray:
        second = self.originals.masks[0].copy()
        chosen = self.position >= 0
        second[chosen] = self.restyled.masks[0, self.position[chosen]]
        return np.stack([self.originals.masks[0], second])

    def batch(self, copy_index: np.ndarray, image_index: np.ndarray):
        restyled = (np.asarray(copy_index) == 1) & (self.position[image_index] >= 0)
        inputs, masks = self.originals.batch(np.zeros_like(copy_index), image_index)
        if restyled.any():
            ours = self.position[image_index[restyled]]
            their_inputs, their_masks = self.restyled.batch(np.zeros_like(ours), ours)
            for name in inputs:
                inputs[name][restyled] = their_inputs[name]
            masks[restyled] = their_masks
        return inputs, masks


def scaled_tiles(images: np.ndarray, scale: float) -> np.ndarray:
    """Each tile resized by `scale` and reflect-padded to the encoder's stride, exactly as
    zoo.predict.Segmenter prepares an image at that scale (probabilities_at, then _whole)."""
    from zoo.predict import reflect_pad, resize, round_up, scaled_size

    small = scaled_size(*images.shape[1:3], scale)
    padded = [round_up(side) for side in small]
    return np.stack([reflect_pad(resize(image, *small), *padded) for image in images])


def view_averaged_probabilities(model, encodings: Encodings, form: Form, index, names) -> dict:
    """Held-out probabilities under each serving option of `names` (ablations.heldout.option_of:
    a test-time view set, at one scale or several), as zoo.predict serves it: each view mapped
    back; at a smaller scale, cropped and resized to the tile's size; the views averaged, then
    the scales. Each (scale, view) is predicted once, however many options share it."""
    from ablations.folds import FeatureView
    from ablations.heldout import option_of
    from ablations.train import decoder_probabilities
    from zoo.predict import resize, scaled_size
    from zoo.unet import decoder_of, has_half_scale

    if has_half_scale(model) != form.half:
        raise ValueError(f"features encoded {'with' if form.half else 'without'} half size for a model "
                         f"{'with' if has_half_scale(model) else 'without'} a half-size pass")
    decoder = decoder_of(model)
    options = {name: option_of(name) for name in names}
    height, width = encodings.images.shape[1:3]
    totals = {name: 0.0 for name in names}
    for scale in sorted({s for _, scales in options.values() for s in scales}, reverse=True):
        at_scale = {name: (tta, scales) for name, (tta, scales) in options.items() if scale in scales}
        small = scaled_size(height, width, scale)
        by_views = {tta: 0.0 for tta, _ in at_scale.values()}
        for view in sorted(set().union(*(TTA_VIEW_INDICES[tta] for tta in by_views))):
            # view 0 at full size is the originals, encoded with the training pool
            features = (encodings.originals(form) if (view, scale) == (0, 1.0)
                        else encodings.viewed(form, view, scale))
            _, inverse = DIHEDRAL_VIEWS[view]
            probs = inverse(decoder_probabilities(decoder, FeatureView(features, index)).astype(np.float32))
            probs = probs[:, :small[0], :small[1]]
            if small != (height, width):
                probs = np.stack([resize(p, height, width) for p in probs])
            for tta in by_views:
                if view in TTA_VIEW_INDICES[tta]:
                    by_views[tta] = by_views[tta] + probs
            del probs
        for name, (tta, scales) in at_scale.items():
            totals[name] = totals[name] + by_views[tta] / (len(TTA_VIEW_INDICES[tta]) * len(scales))
        del by_views
    return totals


def score_ensembles(args) -> None:
    """Average the members' cached held-out probabilities (last epoch) under each view set of
    `--views` and record the counts at every threshold per city: OUT/ensembles/A+B.json, its
    "views" by set ("counts": the flips', as the report has always shown them)."""
    names = comma_separated(args.ensembles)
    if not names:
        return
    masks, areas = held_out_masks(args.data, args.budget)
    for name in names:
        members = name.split("+")
        path = args.out / "ensembles" / f"{name}.json"
        earlier = json.loads(path.read_text()) if path.is_file() else {}
        views = {**(earlier.get("views") or {}),  # what an earlier run scored under other --views stays
                 **{view: _ensemble_counts(args.out / "cache", members, view, areas, masks)
                    for view in args.views}}
        record = {"members": members, "views": views}
        if "flips" in views:
            record["counts"] = views["flips"]
        write_json_atomic(path, record)
        print(f"ensemble {name}: scored with {', '.join(args.views)} (recorded: {', '.join(views)})")


def held_out_masks(data, budget_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Every tile's mask and area, in the order a run's kept probabilities are (its samples')."""
    from ablations.data import folders
    from ablations.pipeline import scan_samples

    budget = studies.BUDGETS[budget_name]
    samples, _, _ = scan_samples(budget, data)
    _, masks = folders.load_arrays(samples, budget.size)
    return masks, np.asarray([s.area for s in samples], dtype=object)


def _ensemble_counts(cache: Path, members: list[str], view: str, areas, masks) -> dict:
    from ablations.folds import threshold_counts

    counts = {}
    for area in sorted(set(areas)):
        paths = [cache / member / f"{area}-{view}.npy" for member in members]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise UserFacingError(f"ensemble {'+'.join(members)}: no cached probabilities {', '.join(missing)}; "
                                  f"run its members first (same --out, --views {view})")
        probs = np.mean([np.load(p).astype(np.float32) for p in paths], axis=0)
        counts[area] = threshold_counts(probs, masks[areas == area]).tolist()
    return counts


def write_report(args) -> None:
    from ablations.evaluate import transfer_report

    text = transfer_report.render(args.out, _variants(), comma_separated(args.ensembles))
    write_text_atomic(args.out / "README.md", text)
    print(f"wrote {args.out / 'README.md'}")


if __name__ == "__main__":
    sys.exit(main())
