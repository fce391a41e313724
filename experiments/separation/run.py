"""python -m experiments.separation.run --data DIR [--target separation] [--seeds 0] [--out OUT]

Issue 33's training run: the served recipe with another training target (data.instances.TARGETS),
cross-validated by city exactly as `python -m training.fit --curve` cross-validates the served
recipe (training.crossval.learning_curve: the same pool, encoded copies, folds, schedule and
serving option), into OUT/TARGET/. Each fold keeps its held-out probabilities as served
(folds/seedN/CITY.probs.npy), which experiments.separation.evaluate scores building by building.
A killed run resumes at its first unfinished fold; seeds can be added later (--seeds 1,2).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads: its C++ start-up noise

from data import folders, instances  # noqa: E402
from training import allocator, crossval, features, fit, provenance  # noqa: E402
from training.errors import exit_status  # noqa: E402
from training.recipe import BUDGETS, SEED, SERVED, ServedRecipe  # noqa: E402
from training.sources import load_encoder  # noqa: E402
from zoo import unet  # noqa: E402
from zoo.files import write_json_atomic  # noqa: E402


def variant(target: str) -> ServedRecipe:
    """The served recipe, trained on `target` instead of the mask."""
    return dataclasses.replace(SERVED, training=dataclasses.replace(SERVED.training, target=target))


def run(data: Path, target: str, seeds: tuple[int, ...], out: Path, budget_name: str = "standard") -> dict:
    served = variant(target)
    budget = BUDGETS[budget_name]
    request = fit.FitRequest(data=data, out=out / target, budget=budget_name, curve=True, seeds=seeds)
    samples, _, source = fit.load_samples(request, budget)
    binding = {"data_kind": provenance.data_kind(source),
               "data_fingerprint": provenance.data_fingerprint(samples),
               "budget": budget.name, "test_area": "none", "weights": request.weights,
               "config": served.decoder.to_dict(), "recipe": served.training.to_dict()}  # fmt: skip
    provenance.check_binding(request.out, binding, fresh=False)
    encoder = load_encoder(request.weights)
    images, masks = folders.load_arrays(samples, budget.size)
    labels = instances.load_instances(samples, masks)
    copies = served.training.copies(budget)
    print(f"encoding {len(images)} tiles, {copies} copies, target '{target}' ...")
    pool = features.encode(
        unet.build(served.decoder, encoder=encoder),  # its preprocessing decides what the encoder sees
        images,
        masks,
        copies=copies,
        augmentation=served.training.augmentation,
        seed=SEED,
        target=target,
        labels=labels,
    )
    tiles = crossval.Tiles(pool, tuple(s.area for s in samples), fit.pixel_areas(samples, budget.size))
    fingerprint = {**binding, "curve_epochs": served.schedule_epochs}
    provenance.write_binding(request.out, binding)
    curve = crossval.learning_curve(
        served,
        encoder,
        tiles,
        served.schedule_epochs,
        seeds,
        request.out / "folds",
        fingerprint,
        eager=budget.eager,
    )
    write_json_atomic(request.out / f"curve_seeds{'-'.join(map(str, seeds))}.json", curve)
    return curve


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.separation.run", description=__doc__.split("\n\n")[1]
    )
    parser.add_argument("--data", type=Path, required=True, help="the data folder (images/, masks/, labels/)")
    parser.add_argument(
        "--target", default="separation", choices=[t for t in instances.TARGETS if t != "mask"]
    )
    parser.add_argument("--seeds", default=str(SEED), help="comma-separated seeds")
    parser.add_argument("--out", type=Path, default=Path("results/separation"))
    parser.add_argument("--budget", default="standard", choices=sorted(BUDGETS))
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    allocator.for_training()
    seeds = tuple(int(seed) for seed in args.seeds.split(","))
    if not args.data.is_dir():
        raise SystemExit(f"--data {args.data} is not a folder")
    return exit_status(lambda: run(args.data, args.target, seeds, args.out, args.budget))


if __name__ == "__main__":
    sys.exit(main())
