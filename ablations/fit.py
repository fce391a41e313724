"""python -m ablations.fit [--data DIR] [--test-area AREA|none] [--curve [--curve-epochs N]]
                          [--epochs N] [--recipe-from MODEL.json | --curve-from CURVE.json ...]
                          [--max-passes N] [--out results/final] [--fresh]

Fits the selected recipe on every non-test area and serves it: writes OUT/model.keras (with
model.json), OUT/README.md (per-city quality, learning curve, samples) and points
results/MODEL at the model. `--curve` first runs the cross-validated learning curve (one
decoder per held-out area) that chooses the epochs and threshold, into OUT/curve.json;
without it the fit reuses the curve OUT already holds.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from ablations import studies  # noqa: E402  (cheap: no TensorFlow)
from ablations.heldout import SERVED_MAX_PASSES  # noqa: E402  (NumPy only)
from ablations.errors import UserFacingError, exit_status  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m ablations.fit", description=__doc__.split("\n\n")[1])
    parser.add_argument("--data", type=Path, help="folder with images/, masks/ and index.csv (areas); "
                        "default: SYNTHETIC scenes (a smoke test)")
    parser.add_argument("--test-area", default="none",
                        help="area kept out of training and scored at the end; 'none' (default) "
                        "trains on every area: the model that ships")
    parser.add_argument("--budget", choices=sorted(studies.BUDGETS), default="standard")
    parser.add_argument("--out", type=Path, default=Path("results/final"))
    parser.add_argument("--curve", action="store_true", help="run the cross-validated learning curve first "
                        "(of the recipe OUT/curve.json names, else of --recipe-from's or the selected one)")
    parser.add_argument("--curve-epochs", type=int, default=12, help="length of the curve's cosine schedule")
    parser.add_argument("--epochs", type=int, help="train this many epochs instead of the curve's choice")
    parser.add_argument("--recipe-from", type=Path, help="a model.json whose config and recipe to fit "
                        "(default: the recipe the cross-city studies selected)")
    parser.add_argument("--curve-from", type=Path, action="append", default=[],
                        help="a variant's curve.json from ablations.evaluate.transfer "
                        "(results/transfer/NAME/curve.json): fit its config and recipe with the epochs, "
                        "threshold and test-time views its cross-validation chose. Give it again with "
                        "the same recipe's curve under another seed (NAME_seed1) to choose them on the "
                        "seeds' confusion counts summed")
    parser.add_argument("--max-passes", type=float, default=SERVED_MAX_PASSES,
                        help="serve only options that run at most N full-size passes of the network an "
                        "image (a test-time view is one pass, a view at scale s counts s²), the best of "
                        f"them by cross-validation; the default {SERVED_MAX_PASSES:g} keeps a 256 px request "
                        "within 25 ms on 2 cores (results/bench.md); inf allows every option")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--no-serve", action="store_true", help="do not point results/MODEL at the model")
    parser.add_argument("--fresh", action="store_true", help="replace what OUT holds from a different run")
    return parser.parse_args(argv)


def to_request(args):
    from ablations.final import FitRequest

    if args.data is not None and not args.data.is_dir():
        raise UserFacingError(f"data folder {args.data} does not exist")
    if args.curve_from and (args.curve or args.recipe_from):
        raise UserFacingError("--curve-from brings its own curve and recipe: drop --curve and --recipe-from")
    for path in args.curve_from:
        if not path.is_file():
            raise UserFacingError(f"--curve-from {path} is not a file")
    if args.max_passes < 1:
        raise UserFacingError("--max-passes must be at least 1 (one pass: the image as given)")
    if args.curve_epochs < 1 or (args.epochs is not None and not 1 <= args.epochs <= args.curve_epochs):
        raise UserFacingError("--curve-epochs must be at least 1 and --epochs between 1 and --curve-epochs")
    return FitRequest(data=args.data, test_area=args.test_area, out=args.out, budget=args.budget,
                      weights=args.weights, curve=args.curve, curve_epochs=args.curve_epochs,
                      epochs=args.epochs, recipe_from=args.recipe_from, curve_from=tuple(args.curve_from),
                      point_served=not args.no_serve, fresh=args.fresh, max_passes=args.max_passes)


def main(argv=None) -> int:
    args = parse_args(argv)
    return exit_status(lambda: fit(args))


def fit(args) -> None:
    request = to_request(args)
    from ablations.final import run_fit  # TensorFlow loads only past this point

    run_fit(request)


if __name__ == "__main__":
    sys.exit(main())
