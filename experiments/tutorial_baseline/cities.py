"""python -m experiments.tutorial_baseline.cities [--data DIR] [--final results/final] [--train-tutorial]
                                      [--out results/per_city]

The per-city table: each shared city as the unseen test area in turn, trained on the others,
for the selected recipe and for the TensorFlow tutorial's five-epoch recipe, side by side,
with the mean over cities.

The selected recipe's rows are the folds of the final fit's cross-validated learning curve
(`python -m training.fit --curve`): each fold trained on the other cities
and was scored on its own at the epoch and threshold chosen on the *other* folds. The
tutorial's rows are `experiments.tutorial_baseline.baseline --test-area CITY --epochs 5` runs, trained on
the other cities (less 15 % of their ground, held out to choose its threshold), written to
OUT/tutorial-CITY/; `--train-tutorial` runs the missing ones (about 20 minutes a city here).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from experiments.tutorial_baseline import baseline
from training import heldout, report
from training.heldout import mean_of, option_of

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TUTORIAL_EPOCHS = 5
SHOWN = ("precision", "recall", "building_iou", "mean_iou")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m experiments.tutorial_baseline.cities", description=__doc__.split("\n\n")[1]
    )
    parser.add_argument("--data", type=Path, help="the data folder (needed with --train-tutorial)")
    parser.add_argument(
        "--final",
        type=Path,
        default=Path("results/final"),
        help="the final fit's folder, whose curve.json holds the selected recipe's folds",
    )
    parser.add_argument("--out", type=Path, default=Path("results/per_city"))
    parser.add_argument(
        "--train-tutorial",
        action="store_true",
        help="train the tutorial recipe for every city that has no result yet",
    )
    parser.add_argument("--weights", default="imagenet")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    curve_file = args.final / "curve.json"
    if not curve_file.is_file():
        print(
            f"error: {curve_file} does not exist: run `python -m training.fit --data DIR --curve` first",
            file=sys.stderr,
        )
        return 2
    recorded = json.loads(curve_file.read_text())
    curve = served_rows(recorded, args.final)
    left_out = option_left_out_rows(recorded, args.final)
    cities = sorted(curve["per_city"])
    if args.train_tutorial:
        if args.data is None:
            print("error: --train-tutorial needs --data", file=sys.stderr)
            return 2
        for city in cities:
            train_tutorial_for(city, args.data, args.out, args.weights)
    tutorial = {city: read_tutorial(args.out, city) for city in cities}
    from zoo.files import write_text_atomic

    page = render(curve, tutorial, args.final, left_out)
    write_text_atomic(args.out / "README.md", page)
    print(page)
    return 0


def served_metadata(final: Path) -> dict:
    """What the fit in `final` serves (its model.json), or {} before a fit wrote one."""
    metadata_file = Path(final) / "model.json"
    return json.loads(metadata_file.read_text()) if metadata_file.is_file() else {}


def served_rows(curve: dict, final: Path) -> dict:
    """The curve with the per-city rows of what the fit serves (OUT/model.json): each row as
    the serving option its cross-validation chose (views and scales, fixed 0.5 or not) scores it."""
    served = served_metadata(final).get("metrics", {}).get("cross_validated", {}).get("per_city")
    return {**curve, "per_city": served or curve["per_city"]}


def option_left_out_rows(curve: dict, final: Path) -> dict:
    """Each city under the serving option the other cities chose, within the fit's latency
    budget (training.heldout.option_left_out)."""
    validated = served_metadata(final).get("metrics", {}).get("cross_validated", {})
    if validated.get("per_city_option_left_out"):  # what the fit recorded beside what it serves
        return validated["per_city_option_left_out"]
    budget = validated.get("passes_budget") or {}
    return heldout.option_left_out(curve, budget.get("max_passes", heldout.SERVED_MAX_PASSES))


VIEWS_IN_WORDS = {
    "flips": "the four flips averaged",
    "dihedral": "all eight rotations and flips averaged",
    "rot180": "the image and its half turn averaged",
    "transpose": "the image and its mirror across the diagonal averaged",
}


def _served_as(curve: dict) -> str:
    rules = {row.get("rule") for row in curve["per_city"].values()} - {None}
    if not rules or rules == {"plain"}:
        return "."
    rule = rules.pop()
    threshold = (
        "a threshold of 0.5, fixed and chosen on no city"
        if rule.endswith(", 0.5")
        else "each row's threshold chosen on the other cities"
    )
    tta, scales = option_of(rule.split(",")[0])
    views = VIEWS_IN_WORDS.get(tta, "no test-time views")
    if scales != (1.0,):
        views += f", at scales {', '.join(f'{s:g}' for s in scales)} averaged"
    return (
        f", served as the fit serves it (`{rule}`: the last epoch, {threshold}, {views}; which option "
        "to serve was chosen by the mean over the cities)."
    )


def _left_out_section(left_out: dict | None, tutorial: dict) -> list[str]:
    if not left_out:
        return []
    lines = [
        "Each row's serving option chosen on the other cities only: nothing in a row is chosen "
        "on its own city.",
        "",
        report.per_city_table(left_out, with_rule=True),
        "",
    ]
    done = [t["scores"] for t in tutorial.values() if t]
    if len(done) == len(left_out):
        ours, theirs = (
            mean_of(left_out)["building_iou"],
            float(sum(t["building_iou"] for t in done) / len(done)),
        )
        lines += [f"Against the tutorial recipe's mean building IoU {theirs:.3f}: {ours - theirs:+.3f}.", ""]
    return lines


def _pooled(curve: dict) -> str:
    pooled = curve.get("pooled")
    if not pooled:
        return ""
    return (
        f" Each row sums the fold's confusion counts over the recipe's curves under seeds "
        f"{', '.join(map(str, pooled['seeds']))}, on which the fit chose how to serve; the served "
        "model itself is one seed's."
    )


def tutorial_file(out: Path, city: str) -> Path:
    return Path(out) / f"tutorial-{city}" / "tutorial_recipe" / "metrics.json"


def read_tutorial(out: Path, city: str) -> dict | None:
    path = tutorial_file(out, city)
    return json.loads(path.read_text()) if path.is_file() else None


def train_tutorial_for(city: str, data: Path, out: Path, weights: str) -> None:
    if tutorial_file(out, city).is_file():
        return

    print(f"tutorial recipe, {city} held out ...")
    baseline.main(
        [
            "--data",
            str(data),
            "--test-area",
            city,
            "--epochs",
            str(TUTORIAL_EPOCHS),
            "--weights",
            weights,
            "--out",
            str(Path(out) / f"tutorial-{city}"),
        ]
    )


def rows(curve: dict, tutorial: dict) -> list[dict]:
    table = []
    for city, selected in sorted(curve["per_city"].items()):
        row = {"unseen city": city}
        row.update({f"selected {_label(k)}": f"{selected[k]:.3f}" for k in SHOWN})
        theirs = (tutorial.get(city) or {}).get("scores")
        row.update({f"tutorial {_label(k)}": f"{theirs[k]:.3f}" if theirs else "not run" for k in SHOWN})
        table.append(row)
    table.append(mean_row(curve, tutorial))
    return table


def mean_row(curve: dict, tutorial: dict) -> dict:
    import numpy as np

    row = {"unseen city": "**mean over cities**"}
    selected = list(curve["per_city"].values())
    row.update({f"selected {_label(k)}": f"**{np.mean([s[k] for s in selected]):.3f}**" for k in SHOWN})
    done = [t["scores"] for t in tutorial.values() if t]
    complete = len(done) == len(selected)
    row.update(
        {
            f"tutorial {_label(k)}": (
                f"**{np.mean([t[k] for t in done]):.3f}**"
                if complete
                else f"({len(done)} of {len(selected)} run)"
            )
            for k in SHOWN
        }
    )
    return row


def _label(metric: str) -> str:
    return {"building_iou": "building IoU", "mean_iou": "mean IoU"}.get(metric, metric)


def render(curve: dict, tutorial: dict, final: Path, left_out: dict | None = None) -> str:
    from tabulate import tabulate

    name = served_metadata(final).get("name", "the selected recipe")
    ran = [t for t in tutorial.values() if t]
    tutorial_line = (
        f"{ran[0]['epochs']} epochs, batch {ran[0]['batch_size']}, end to end, threshold "
        "chosen on 15 % of the training cities' ground"
        if ran
        else "not run yet"
    )
    lines = [
        "# Quality on a city the model never saw: one row per shared city",
        "",
        "Written by `python -m experiments.tutorial_baseline.cities`. Pixel counts summed over the whole "
        "city; "
        "building IoU = TP/(TP+FP+FN), mean IoU = mean of building and background IoU.",
        "",
        f"- **Selected recipe** (`{name}`): each row is a fold of the final fit's cross-validated "
        f"learning curve ({curve['curve_epochs']}-epoch cosine schedule), trained on the other cities "
        "and scored on this one at the epoch and threshold chosen on the *other* folds"
        + _served_as(curve)
        + _pooled(curve),
        f"- **Tutorial recipe** (frozen MobileNetV2, pix2pix decoder, Adam, BCE, flips): {tutorial_line}.",
        f"- **Machine:** {curve['machine']}; curve {curve['date']}.",
        "",
        tabulate(rows(curve, tutorial), headers="keys", tablefmt="github"),
        "",
        *_left_out_section(left_out, tutorial),
        *report.building_lines(
            served_metadata(final).get("metrics", {}).get("cross_validated", {}).get("buildings")
        ),
        "Other cities, withheld from this repository, check what ships. The training, epochs and "
        "threshold of a row are never chosen on its own city; the serving option of the first "
        "table is (it was chosen on the mean over every city), that of the second is not.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
