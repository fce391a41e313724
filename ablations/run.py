"""python -m ablations.run STUDY [--data DIR] [--budget smoke|standard|full] [--out DIR]
                          [--seeds N] [--only NAME=V1,V2] [--cv areas [--halving KEEP]]
                          [--output-stride 2] [--fresh] [--chief | --worker ID] [--oracle HOST:PORT]
python -m ablations.run --list

Runs a KerasTuner search for STUDY, scores every trial on the held-out test split, writes
OUT/STUDY/{trials.csv, table.md, *.png, best/model.keras, best/model.json} and indexes the
study in OUT/README.md. Rerunning the same command resumes; --fresh starts over.

Distributed (KerasTuner's chief/worker mode, see ablations/distributed.py): one process with
`--chief --oracle HOST:PORT` serves the oracle and writes the report when the search ends;
processes with `--worker ID --oracle HOST:PORT` run the trials. All use the same STUDY,
budget, data and --out folder.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from ablations import distributed, studies  # noqa: E402  (cheap: no TensorFlow)
from ablations.request import StudyRequest  # noqa: E402
from training import allocator  # noqa: E402
from training.errors import UserFacingError, exit_status  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ablations.run", description=__doc__.split("\n\n")[1])
    parser.add_argument("study", nargs="?", help="study name (see --list)")
    parser.add_argument("--list", action="store_true", help="list the studies and exit")
    parser.add_argument(
        "--data",
        type=Path,
        help="folder with images/ and masks/ (and optionally "
        "index.csv with an 'area' column); default: SYNTHETIC scenes",
    )
    parser.add_argument("--budget", choices=sorted(studies.BUDGETS), default="standard")
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--seeds", type=int, help="repeats of each configuration (default: budget's)")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME=V1,V2",
        help="run only these values of one of the study's choices (repeatable), "
        "e.g. --only augmentation=flips,sensor --seeds 3; use its own --out",
    )
    parser.add_argument("--fresh", action="store_true", help="discard earlier trials of this study")
    parser.add_argument(
        "--test-area", help="area held out as the test split (default: the middle-sized area)"
    )
    parser.add_argument(
        "--val-area",
        help="validate on this whole area (cross-city validation) "
        "instead of random ground groups of the training areas",
    )
    parser.add_argument(
        "--cv",
        choices=("none", "areas"),
        default="none",
        help="'areas': cross-validation by area; each trial trains once per non-test "
        "area held out, and the objective is the mean over those folds",
    )
    parser.add_argument(
        "--halving",
        type=int,
        metavar="KEEP",
        help="successive halving (with --cv areas, grid studies): every configuration "
        "trains one epoch of its schedule, and only the KEEP best continue to the "
        "budget's epochs, from where they stopped",
    )
    parser.add_argument(
        "--output-stride",
        type=int,
        choices=(1, 2),
        help="the base decoder's finest level (default: the study's base decoder's): 2 "
        "stops at half resolution and resizes the logits (about 1.8x faster to train)",
    )
    parser.add_argument(
        "--weights",
        default="imagenet",
        help="encoder weights: 'imagenet' (default; honours $ZOO_ENCODER_WEIGHTS), "
        "a .h5 path, or 'none' for random weights (tests only)",
    )
    parser.add_argument(
        "--chief",
        action="store_true",
        help="serve the KerasTuner oracle at --oracle, run no trials, write the report",
    )
    parser.add_argument(
        "--worker",
        metavar="ID",
        help="run trials from the oracle at --oracle as worker ID (unique per "
        "worker; restart a killed worker with the same ID)",
    )
    parser.add_argument(
        "--oracle",
        metavar="HOST:PORT",
        help="the chief's address (on the chief: where to listen, e.g. 0.0.0.0:8000)",
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list:
        print(studies.describe())
        return 0
    allocator.for_training()
    return exit_status(lambda: study(make_request(args)))


def study(request: StudyRequest) -> None:
    """Run the study `request` names (resuming its earlier trials unless it says fresh)."""
    from ablations.pipeline import run_study  # deferred: TensorFlow loads only past this point

    run_study(request)


def make_request(args: argparse.Namespace) -> StudyRequest:
    """The checked, frozen request; also sets the chief/worker role KerasTuner reads."""
    if not args.study:
        raise UserFacingError("name a study, e.g. `python -m ablations.run decoder_variants` (see --list)")
    if args.study not in studies.STUDIES:
        raise UserFacingError(f"unknown study {args.study!r}; known: {', '.join(studies.STUDIES)}")
    if args.seeds is not None and args.seeds < 1:
        raise UserFacingError("--seeds must be at least 1")
    if args.data is not None and not args.data.is_dir():
        raise UserFacingError(f"data folder {args.data} does not exist")
    if args.cv == "areas" and args.val_area:
        raise UserFacingError("--cv areas validates on every non-test area in turn: drop --val-area")
    if args.halving is not None:
        if args.cv != "areas":
            raise UserFacingError(
                "--halving ranks configurations by their cross-validated score: add --cv areas"
            )
        if studies.STUDIES[args.study].search != "grid":
            raise UserFacingError(
                f"--halving cuts a grid; study {args.study!r} searches by Bayesian optimisation"
            )
        if args.halving < 1:
            raise UserFacingError("--halving KEEP: at least one configuration must continue")
    request = StudyRequest(
        study=args.study,
        data=args.data,
        budget=args.budget,
        out=args.out,
        seeds=args.seeds,
        only=parse_only(args.only),
        fresh=args.fresh,
        test_area=args.test_area,
        val_area=args.val_area,
        cv=args.cv,
        halving=args.halving,
        output_stride=args.output_stride,
        weights=args.weights,
        chief=args.chief,
        worker=args.worker,
        oracle=args.oracle,
    )
    # KerasTuner reads its chief/worker roles from the environment when the tuner is made.
    distributed.configure(request.chief, request.worker, request.oracle)
    if request.fresh and distributed.role() == "worker":
        raise UserFacingError(
            "--fresh is for the chief (or a single process), not a worker: "
            "a worker would delete the records of the others"
        )
    if distributed.role() == "chief":
        distributed.check_port_free()
    return request


def parse_only(items: list[str]) -> dict[str, tuple[str, ...]]:
    """`--only NAME=V1,V2` flags as {NAME: (V1, V2)}; whether NAME and the values exist is
    checked when the study declares its space (ablations.search.RestrictedChoices)."""
    only = {}
    for item in items:
        name, _, values = item.partition("=")
        chosen = tuple(v.strip() for v in values.split(",") if v.strip())
        if not name.strip() or not chosen:
            raise UserFacingError(
                f"--only {item!r}: expected NAME=VALUE[,VALUE...], e.g. augmentation=flips,sensor"
            )
        only[name.strip()] = chosen
    return only


if __name__ == "__main__":
    sys.exit(main())
