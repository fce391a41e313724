"""python -m training.fit [--data DIR] [--out results/final] [--curve [--curve-epochs N] [--seeds 0,1,2]]
                        [--test-area AREA|none] [--budget standard] [--fresh] [--no-serve]

The main job: trains the served recipe (training.recipe.SERVED) on every city and serves it.
Writes OUT/model.keras with OUT/model.json, OUT/README.md (quality per held-out city, the
learning curve, samples) and points results/MODEL at the model. `--curve` first reruns the
cross-validated learning curve (training.crossval) into OUT and serves what it chooses;
without it the fit trains and serves exactly as SERVED says, reporting the curve SERVED was
chosen on.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads: its C++ start-up noise

import keras  # noqa: E402
import numpy as np  # noqa: E402

from data import folders  # noqa: E402
from training import allocator, crossval, features, heldout, plots, provenance, report  # noqa: E402
from training.errors import UserFacingError, exit_status  # noqa: E402
from training.machine import process_memory_gib  # noqa: E402
from training.recipe import BUDGETS, SEED, SERVED, ServedRecipe  # noqa: E402
from training.sources import load_encoder, scan_samples  # noqa: E402
from training.train import EpochProgress, train_decoder  # noqa: E402
from training.verify import full_model_scores  # noqa: E402
from zoo import saving, unet  # noqa: E402
from zoo.config import DecoderConfig  # noqa: E402
from zoo.files import write_json_atomic, write_text_atomic  # noqa: E402
from zoo.served import POINTER  # noqa: E402

REPOSITORY = Path(__file__).resolve().parents[1]  # where SERVED.curve is


@dataclasses.dataclass(frozen=True)
class FitRequest:
    data: Path | None = None  # None: synthetic scenes (a smoke test, not a model)
    out: Path = Path("results/final")
    test_area: str = "none"  # "none": every city trains (the model that ships)
    budget: str = "standard"
    weights: str = "imagenet"
    curve: bool = False  # rerun the cross-validated learning curve and serve what it chooses
    curve_epochs: int = SERVED.schedule_epochs
    seeds: tuple[int, ...] = (SEED,)
    point_served: bool = True  # write results/MODEL -> OUT/model.keras
    fresh: bool = False  # replace what OUT holds from a different run
    # Serve only options that run at most this many full-size passes of the network an image.
    max_passes: float = heldout.SERVED_MAX_PASSES

    @property
    def results_root(self) -> Path:
        return Path(self.out).parent


@dataclasses.dataclass(frozen=True)
class Serving:
    """How long the fit trains and how its model serves, and which curve said so."""

    epochs: int
    schedule_epochs: int
    threshold: float
    tta: str
    scales: tuple[float, ...]
    option: str  # the serving option's name (training.heldout.serving_options)


def run_fit(request: FitRequest, served: ServedRecipe = SERVED) -> dict:
    started = time.time()
    budget = BUDGETS[request.budget]
    pool_samples, test_samples, source = load_samples(request, budget)
    binding = {"data_kind": provenance.data_kind(source),
               "data_fingerprint": provenance.data_fingerprint(pool_samples + test_samples),
               "budget": budget.name, "test_area": request.test_area, "weights": request.weights,
               "config": served.decoder.to_dict(), "recipe": served.training.to_dict()}  # fmt: skip
    # Before anything is written, whatever the flags: a folder made by another run is never mixed.
    provenance.check_binding(request.out, binding, fresh=request.fresh)
    encoder = load_encoder(request.weights)
    pool = encode_pool(encoder, pool_samples, budget, served)
    areas = [s.area for s in pool_samples]
    tiles = crossval.Tiles(pool, tuple(areas), pixel_areas(pool_samples, budget.size))
    curve = the_curve(request, served, encoder, tiles, binding)
    provenance.write_binding(request.out, binding)
    serving = serving_choice(request, served, curve)
    print(
        f"final fit: {served.decoder.name}, '{served.training.augmentation}' augmentation, "
        f"{serving.epochs} of {serving.schedule_epochs} cosine epochs, threshold {serving.threshold:.2f}, "
        f"views '{serving.tta}' at scales {serving.scales}, {pool.count} tiles"
    )
    keras.utils.set_random_seed(SEED)  # the final model starts from the folds' seed-0 weights
    model = unet.build(served.decoder, encoder=encoder)
    history, seconds = train_decoder(
        model,
        served.training,
        pool,
        serving.epochs,
        SEED,
        callbacks=[EpochProgress()],
        eager=budget.eager,
        schedule_epochs=serving.schedule_epochs,
        areas=areas,
    )
    test = score_test(model, serving, test_samples, budget.size)
    metadata = final_metadata(
        request, served, serving, curve, history, seconds, test, source, pool_samples, test_samples
    )
    out = Path(request.out)
    path = saving.save(model, out / "model.keras", metadata)
    plots.samples(
        model,
        (serving.threshold, serving.tta, serving.scales),
        pool,
        test_samples,
        budget.size,
        out / "samples.png",
    )
    cost = {
        "wall_minutes": round((time.time() - started) / 60, 1),
        "peak_rss_gib": round(process_memory_gib()[1], 2),
    }
    write_text_atomic(out / "README.md", report.fit_report({**metadata, "cost": cost}, curve))
    if request.point_served:
        point_served_model(request.results_root, path)
    print(f"done in {cost['wall_minutes']} min; saved {path}; see {out / 'README.md'}")
    return metadata


def load_samples(request: FitRequest, budget):
    samples, root, source = scan_samples(budget, request.data)
    areas = sorted({s.area for s in samples if s.area})
    if request.test_area != "none" and request.test_area not in areas:
        raise UserFacingError(
            f"--test-area {request.test_area!r} is not an area of {root}; "
            f"known: {', '.join(areas) or 'none (no index.csv areas)'}, or 'none'"
        )
    test = [s for s in samples if s.area == request.test_area]
    pool = [s for s in samples if s.area != request.test_area]
    print(
        f"data: {source}; pool {len(pool)} tiles ({', '.join(sorted({s.area or '?' for s in pool}))}); "
        f"test {len(test)} tiles ({request.test_area})"
    )
    return pool, test, source


def pixel_areas(samples, size: int) -> np.ndarray:
    """Ground area in m² of one pixel of each tile as trained (read at `size` px a side)."""
    return np.array([folders.pixel_area_m2(sample.name, size) for sample in samples])


def encode_pool(encoder, pool_samples, budget, served: ServedRecipe) -> features.FeatureSet:
    """Every pool tile through the frozen encoder once, with the recipe's augmented copies: the
    folds and the final fit all train on these features."""
    images, masks = folders.load_arrays(pool_samples, budget.size)
    copies = served.training.copies(budget)
    print(
        f"encoding {len(images)} pool tiles once for every fold and the fit: {copies} copies with "
        f"'{served.training.augmentation}' augmentation ..."
    )
    model = unet.build(served.decoder, encoder=encoder)  # the encoder inside it makes the features
    return features.encode(
        model, images, masks, copies=copies, augmentation=served.training.augmentation, seed=SEED
    )


def the_curve(request: FitRequest, served: ServedRecipe, encoder, tiles, binding: dict) -> dict | None:
    """With --curve, a new cross-validated curve of `served` in OUT; else the one OUT holds, or
    the one `served` was chosen on when it was made on this data (copied into OUT, so the folder
    reads alone); None if neither."""
    path = Path(request.out) / "curve.json"
    if request.curve:
        fingerprint = {**binding, "curve_epochs": request.curve_epochs}
        curve = crossval.learning_curve(
            served,
            encoder,
            tiles,
            request.curve_epochs,
            request.seeds,
            Path(request.out) / "folds",
            fingerprint,
            eager=BUDGETS[request.budget].eager,
        )
    elif path.is_file():  # the binding check above vouches that it was made on this data
        curve = json.loads(path.read_text())
    else:
        curve = _served_curve(served, binding["data_fingerprint"])
        if curve is None:
            return None
    write_json_atomic(path, curve)
    plots.learning_curve(curve, Path(request.out) / "curve.png")
    return curve


def _served_curve(served: ServedRecipe, data_fingerprint: str) -> dict | None:
    """The curve `served` was chosen on, if it measured this recipe on this data."""
    source = REPOSITORY / served.curve
    if not source.is_file():
        return None
    curve = json.loads(source.read_text())
    recorded = curve.get("fingerprint") or {}
    same_data = data_fingerprint in (recorded.get("data"), recorded.get("data_fingerprint"))
    return curve if same_data and same_recipe(curve, served) else None


def same_recipe(curve: dict, served: ServedRecipe) -> bool:
    """Whether `curve` measured `served`'s decoder and training (configs recorded with retired
    fields at their served values compare equal)."""
    if "config" not in curve or "recipe" not in curve:
        return False
    return (DecoderConfig.from_dict(curve["config"]), curve["recipe"]) == (
        served.decoder,
        served.training.to_dict(),
    )


def serving_choice(request: FitRequest, served: ServedRecipe, curve: dict | None) -> Serving:
    """A new curve chooses (the best option within the latency budget); otherwise SERVED says."""
    if not request.curve:
        name = heldout.option_name(served.tta, served.scales)
        if served.threshold == heldout.FIXED:  # else: the option whose threshold the other cities chose
            name += f", {heldout.FIXED}"
        return Serving(
            served.epochs, served.schedule_epochs, served.threshold, served.tta, tuple(served.scales), name
        )
    name, option = heldout.best_option(curve, request.max_passes)
    return Serving(
        option["epochs"],
        curve["curve_epochs"],
        option["threshold"],
        option["tta"],
        tuple(option["scales"]),
        name,
    )


def score_test(model, serving: Serving, test_samples, size: int) -> dict | None:
    """The test area scored end to end as the model is served (empty when every city trains)."""
    if not test_samples:
        return None
    images, masks = folders.load_arrays(test_samples, size)
    return full_model_scores(model, serving.threshold, images, masks, tta=serving.tta, scales=serving.scales)


def final_metadata(
    request, served, serving: Serving, curve, history, seconds, test, source, pool_samples, test_samples
) -> dict:
    return {
        "name": f"final/{served.decoder.name}", "config": served.decoder.to_dict(),
        "recipe": served.training.to_dict(), "threshold": serving.threshold,
        "inference": {"threshold": serving.threshold, "scales": list(serving.scales), "tta": serving.tta},
        "epochs": serving.epochs, "schedule_epochs": serving.schedule_epochs, "seed": SEED,
        "history": history, "train_seconds": round(seconds, 1),
        "metrics": {"test": test, "cross_validated": report.cross_validated(curve, serving.option,
                                                                            request.max_passes)},
        "data": {"source": source, "trained_on": sorted({s.area or "?" for s in pool_samples}),
                 "tiles": len(pool_samples), "test_area": request.test_area, "test_tiles": len(test_samples)},
        "budget": request.budget, "machine": report.machine(), "date": report.now(),
        "command": "python -m training.fit " + " ".join(fit_argv(request)),
    }  # fmt: skip


def point_served_model(results_root: Path, model_path: Path) -> None:
    relative = Path(model_path).resolve().relative_to(Path(results_root).resolve())
    write_text_atomic(Path(results_root) / POINTER, f"{relative}\n")
    print(f"{Path(results_root) / POINTER} now names {relative}")


def fit_argv(request: FitRequest) -> list[str]:
    parts = ["--data", str(request.data)] if request.data else []
    if request.test_area != "none":
        parts += ["--test-area", request.test_area]
    if request.budget != "standard":
        parts += ["--budget", request.budget]
    if request.curve:
        parts += [
            "--curve",
            "--curve-epochs",
            str(request.curve_epochs),
            "--seeds",
            ",".join(map(str, request.seeds)),
        ]
    if Path(request.out) != Path("results/final"):
        parts += ["--out", str(request.out)]
    return parts


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.fit", description=__doc__.split("\n\n")[1])
    parser.add_argument(
        "--data",
        type=Path,
        help="folder with images/, masks/ and index.csv (cities); default: SYNTHETIC scenes (a smoke test)",
    )
    parser.add_argument("--out", type=Path, default=Path("results/final"))
    parser.add_argument(
        "--test-area",
        default="none",
        help="a city kept out of training and scored at "
        "the end; 'none' (default) trains on every city: the model that ships",
    )
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="standard")
    parser.add_argument(
        "--curve",
        action="store_true",
        help="rerun the cross-validated learning curve first and serve what it chooses",
    )
    parser.add_argument(
        "--curve-epochs",
        type=int,
        default=SERVED.schedule_epochs,
        help="length of the curve's cosine schedule",
    )
    parser.add_argument("--seeds", default=str(SEED), help="comma-separated seeds of the curve, pooled")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--no-serve", action="store_true", help="do not point results/MODEL at the model")
    parser.add_argument("--fresh", action="store_true", help="replace what OUT holds from a different run")
    return parser.parse_args(argv)


def to_request(args: argparse.Namespace) -> FitRequest:
    if args.data is not None and not args.data.is_dir():
        raise UserFacingError(f"--data {args.data} is not a folder")
    if args.curve_epochs < 1:
        raise UserFacingError("--curve-epochs must be at least 1")
    try:
        seeds = tuple(int(seed) for seed in args.seeds.split(","))
    except ValueError:
        raise UserFacingError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    return FitRequest(
        data=args.data,
        out=args.out,
        test_area=args.test_area,
        budget=args.budget,
        weights=args.weights,
        curve=args.curve,
        curve_epochs=args.curve_epochs,
        seeds=seeds,
        point_served=not args.no_serve,
        fresh=args.fresh,
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    allocator.for_training()
    return exit_status(lambda: run_fit(to_request(args)))


if __name__ == "__main__":
    sys.exit(main())
