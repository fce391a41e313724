"""python -m experiments.adapt.curve --data ../shared/data/oam_buildings [--folds results/final/folds]
                                   [--cities A,B] [--seeds 0,1,2] [--ks 0,8,16,32,64,128]
                                   [--modes M,...] [--out results/adapt/curve]
                                   [--fresh]

The adaptation curve under cross-validation by city: for each held-out city and seed, the
fold's decoder (trained on the other cities by `python -m training.fit --curve`, so it never
saw the city) adapted with K labelled tiles of the city, with its unlabelled imagery, or both,
against a decoder, and the TensorFlow tutorial's model, trained on the K tiles alone. Modes:
experiments.adapt.runs.MODES (default: adapt, unlabelled, transductive, scratch). Each point is
scored on the city's held-out ground (experiments.adapt.runs), one JSON per (city, seed, mode,
K) in OUT/CITY/seedS/: a finished point is skipped, one made by another configuration refused.
Seeds whose fold weights do not exist yet are skipped, so rerun it as they land.
`python -m experiments.adapt.table` reads them.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from data import folders  # noqa: E402
from experiments.adapt import runs  # noqa: E402
from training import allocator, provenance  # noqa: E402
from training.errors import UserFacingError, exit_status  # noqa: E402
from training.heldout import building_iou, threshold_index  # noqa: E402
from training.machine import describe, process_memory_gib  # noqa: E402
from training.recipe import BUDGETS, SERVED  # noqa: E402
from training.sources import load_encoder  # noqa: E402
from zoo import saving, unet  # noqa: E402
from zoo.files import write_json_atomic  # noqa: E402

PROTOCOL = 1  # bump when what a point means changes (its ground, its scoring)


@dataclasses.dataclass(frozen=True)
class CurveRequest:
    seeds: tuple[int, ...]
    ks: tuple[int, ...]
    modes: tuple[str, ...]
    folds: Path
    out: Path
    fresh: bool = False


def point_binding(name: str, samples: list, weights: Path, mode: str, k: int, seed: int) -> dict:
    return {
        "protocol": PROTOCOL, "city": name, "seed": seed, "mode": mode, "k": k,
        "data_fingerprint": provenance.data_fingerprint(samples),
        "parent_weights_sha256": saving.sha256_of(weights), "k_max": runs.k_max_of(len(samples)),
        "settings": runs.SETTINGS[mode].to_dict(),
        "served": {**SERVED.serving(), "config": SERVED.decoder.to_dict()},
    }  # fmt: skip


def finished(path: Path, binding: dict, fresh: bool) -> bool:
    if not path.is_file() or fresh:
        return False
    recorded = json.loads(path.read_text()).get("binding")
    if recorded != binding:
        changed = sorted(
            k for k in set(binding) | set(recorded or {}) if (recorded or {}).get(k) != binding.get(k)
        )
        raise UserFacingError(
            f"{path} was made by another configuration ({', '.join(changed)}): --fresh or --out"
        )
    return True


class Cities:
    """Each city's tiles encoded once, when first needed; each (city, seed)'s parent and ground."""

    def __init__(self, samples: list, encoder_model, folds: Path):
        self.samples, self.encoder_model, self.folds = samples, encoder_model, folds
        self.cities: dict = {}
        self.parents: dict = {}
        self.replays: dict = {}

    def samples_of(self, name: str) -> list:
        return [s for s in self.samples if s.area == name]

    def weights(self, name: str, seed: int) -> Path:
        return self.folds / f"seed{seed}" / f"{name}.weights.h5"

    def city(self, name: str) -> runs.City:
        """The city's encoded tiles; the previous city's are dropped (memory is shared here)."""
        if name not in self.cities:
            self.cities.clear()
            self.replays.clear()
            self.parents = {key: value for key, value in self.parents.items() if key[0] == name}
            gc.collect()
            started = time.time()
            self.cities[name] = runs.load_city(
                self.encoder_model, self.samples, name, BUDGETS["standard"].size
            )
            print(f"{name}: {len(self.cities[name].samples)} tiles encoded at scales {SERVED.scales} "
                  f"({time.time() - started:.0f}s)")  # fmt: skip
        return self.cities[name]

    def replay(self, name: str, seed: int):
        """The fold's own cities' tiles a "replay" point mixes in (encoded once per city and seed)."""
        if (name, seed) not in self.replays:
            self.replays = {
                (name, seed): runs.replay_set(
                    self.encoder_model, self.samples, name, BUDGETS["standard"].size, seed
                )
            }
        return self.replays[name, seed]

    def parent(self, name: str, seed: int):
        """The fold's model, its decoder weights (to restore after each point) and the seed's ground."""
        if (name, seed) not in self.parents:
            model = runs.parent_model(unet.encoder_of(self.encoder_model), self.weights(name, seed))
            kept = unet.decoder_of(model).get_weights()
            self.parents[name, seed] = (model, kept, runs.ground_of(self.city(name), seed))
        return self.parents[name, seed]


def run_point(cities: Cities, name: str, seed: int, mode: str, k: int, request: CurveRequest) -> None:
    samples, weights = cities.samples_of(name), cities.weights(name, seed)
    if k not in points_of(mode, (k,), runs.k_max_of(len(samples))):
        return
    path = request.out / name / f"seed{seed}" / f"{mode}-k{k}.json"
    binding = point_binding(name, samples, weights, mode, k, seed)
    if finished(path, binding, request.fresh):
        return  # before the city is encoded: a finished phase costs seconds
    city = cities.city(name)
    parent, kept, ground = cities.parent(name, seed)
    began = time.time()
    try:
        replay = cities.replay(name, seed) if mode == "replay" else None
        record = runs.run_point(city, ground, parent, mode, k, seed, replay=replay)
    finally:
        unet.decoder_of(parent).set_weights(kept)  # the next point starts from the fold's decoder
    record.update(binding=binding, run_seconds=round(time.time() - began, 1), machine=describe(),
                  peak_rss_gib=round(process_memory_gib()[1], 2))  # fmt: skip
    write_json_atomic(path, record)
    print(f"  {name} seed {seed} {mode} K={k}: {summary(record)} ({record['run_seconds']:.0f}s)", flush=True)


def points_of(mode: str, ks, k_max: int) -> list[int]:
    """The Ks a mode is run at: self-training alone has no labelled tiles (K = 0); from scratch
    needs some; every labelled K no larger than the city's k_max."""
    if mode in ("unlabelled", "transductive"):
        return [0]
    return [k for k in ks if k <= k_max and (k > 0 or mode == "adapt")]


def summary(record: dict) -> str:
    fixed = sum(np.asarray(c)[threshold_index()] for c in record["counts"])
    return f"building IoU {float(building_iou(fixed)):.3f} at 0.5"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m experiments.adapt.curve", description=__doc__.split("\n\n")[1]
    )
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--folds", type=Path, default=Path("results/final/folds"))
    parser.add_argument("--cities", help="comma-separated (default: every area of the data)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--ks", default=",".join(map(str, runs.CURVE_KS)))
    parser.add_argument("--modes", default="adapt,unlabelled,transductive,scratch")
    parser.add_argument("--out", type=Path, default=Path("results/adapt/curve"))
    parser.add_argument("--fresh", action="store_true", help="redo points made by another configuration")
    return parser.parse_args(argv)


def run(args) -> None:
    modes = args.modes.split(",")
    unknown = sorted(set(modes) - set(runs.MODES))
    if unknown:
        raise UserFacingError(f"--modes: unknown {', '.join(unknown)}; choose from {', '.join(runs.MODES)}")
    try:
        samples = folders.scan_folder(args.data, check=False)
    except folders.DataError as error:
        raise UserFacingError(str(error)) from None
    names = args.cities.split(",") if args.cities else sorted({s.area for s in samples})
    request = CurveRequest(
        tuple(int(s) for s in args.seeds.split(",")), tuple(int(k) for k in args.ks.split(",")), tuple(modes),
        args.folds, args.out, args.fresh,
    )  # fmt: skip
    known = sorted({s.area for s in samples})
    if set(names) - set(known):
        raise UserFacingError(f"--cities: {', '.join(sorted(set(names) - set(known)))} not in {args.data}")
    cities = Cities(samples, unet.build(SERVED.decoder, encoder=load_encoder("imagenet")), args.folds)
    # Mode by mode (the points the targets need first), a city at a time (its tiles encoded once).
    for mode in request.modes:
        for name in names:
            for k in request.ks:
                for seed in request.seeds:
                    if cities.weights(name, seed).is_file():
                        run_point(cities, name, seed, mode, k, request)


def main(argv=None) -> int:
    args = parse_args(argv)
    allocator.for_training()
    return exit_status(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
