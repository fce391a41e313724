"""The fit's report: OUT/README.md, and the cross-validated numbers its model's metadata carries."""

from __future__ import annotations

import datetime

from tabulate import tabulate

from training import heldout
from training.machine import describe as describe_machine
from zoo.metrics import BuildingCounts

# Columns of the per-city tables: metric key -> header.
SHOWN = {"precision": "precision", "recall": "recall", "building_iou": "building IoU", "mean_iou": "mean IoU"}


def machine() -> str:
    return describe_machine()


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def cross_validated(curve: dict | None, option: str, max_passes: float | None) -> dict | None:
    """The served option's quality on each held-out city, as the model's metadata records it.
    `per_city`: every city under the served option; `per_city_option_left_out`: each city under
    the option the *other* cities chose (nothing in a row chosen on its own city)."""
    if curve is None:
        return None
    options = heldout.serving_options(curve)
    if option not in options:
        return None
    rows = {
        city: {"epochs": options[option]["epochs"], "rule": option, **row}
        for city, row in options[option]["per_city"].items()
    }
    return {
        "option": option,
        "cities": sorted(rows),
        "per_city": rows,
        "mean": heldout.mean_of(rows),
        "per_city_option_left_out": heldout.option_left_out(curve, max_passes),
        "buildings": building_rows(curve, option),
        # Counted after zoo.separate split the blobs (training.crossval.predicted_buildings); only
        # said when so, so a served recipe's metadata reads as before.
        **({"buildings_split": True} if (curve.get("recipe") or {}).get("target", "mask") != "mask" else {}),
        "pooled_seeds": (curve.get("pooled") or {}).get("seeds", [curve.get("seed", 0)]),
    }


def building_rows(curve: dict, option: str) -> dict | None:
    """Minimum size (pixels) -> city -> building precision, recall, F1 and matched IoU of the
    served option, counted one by one at the fixed threshold (training.crossval); None when the
    curve predates building counts or the option is served at another threshold."""
    name, _, threshold = option.partition(", ")
    recorded = (curve.get("buildings") or {}).get(name)
    if recorded is None or threshold != str(heldout.FIXED):
        return None
    sizes = next(iter(recorded.values()))
    return {
        size: {city: BuildingCounts(*recorded[city][size]).scores() for city in recorded} for size in sizes
    }


def fit_report(metadata: dict, curve: dict | None) -> str:
    data, served, cost = metadata["data"], metadata["inference"], metadata["cost"]
    scales = ", ".join(f"{s:g}" for s in served["scales"])
    lines = [
        f"# Final fit: `{metadata['name']}`", "",
        f"- **Command:** `{metadata['command']}`; {metadata['date']}; {metadata['machine']}",
        f"- **Trained on:** {data['tiles']} tiles of {', '.join(data['trained_on'])} ({data['source']}), "
        f"{metadata['epochs']} epochs of a {metadata['schedule_epochs']}-epoch cosine schedule, "
        f"`{metadata['recipe']['augmentation']}` augmentation; "
        f"{metadata['train_seconds']:.0f} s of training, "
        f"{cost['wall_minutes']} min and {cost['peak_rss_gib']} GiB peak in all.",
        f"- **Served:** threshold {served['threshold']:.2f}, test-time views `{served['tta']}`, "
        f"scales {scales} "
        "(the recipe: `training/recipe.py`).", "",
    ]  # fmt: skip
    lines += quality_lines(metadata["metrics"]["cross_validated"], curve)
    test = metadata["metrics"]["test"]
    if test:
        lines += [
            f"**Test area {data['test_area']}** ({data['test_tiles']} tiles, end to end as served): "
            + ", ".join(f"{label} {test[key]:.3f}" for key, label in SHOWN.items())
            + ".",
            "",
        ]
    if curve is not None:
        lines += ["![learning curve: training and held-out building IoU by epoch](curve.png)", ""]
    lines += ["![samples: RGB, truth, prediction](samples.png)", ""]
    return "\n".join(lines)


def quality_lines(cross: dict | None, curve: dict | None) -> list[str]:
    if not cross:
        return [
            "No cross-validated curve of this recipe in this folder: run with `--curve` to measure "
            "its quality on cities it never saw.",
            "",
        ]
    seeds = ", ".join(map(str, cross["pooled_seeds"]))
    lines = [
        "## Quality on a city the model never saw",
        "",
        "Each row: the recipe trained on the other cities only (a fold of the learning curve, "
        f"seeds {seeds}, counts summed over seeds), scored on the held-out city as served "
        f"(`{cross['option']}`). Pixel counts summed over the city; building IoU = TP/(TP+FP+FN), "
        "mean IoU = mean of building and background IoU.",
        "",
        per_city_table(cross["per_city"]),
        "",
        "Each city's serving option chosen on the other cities only: nothing in a row is chosen "
        "on its own city.",
        "",
        per_city_table(cross["per_city_option_left_out"], with_rule=True),
        "",
    ]
    lines += building_lines(cross.get("buildings"), split=cross.get("buildings_split", False))
    return lines + [f"Curve: {curve['chosen']['rule']}; {curve['machine']}; {curve['date']}.", ""]


BUILDING_SHOWN = {
    "building_precision": "building precision",
    "building_recall": "building recall",
    "building_f1": "building F1",
    "matched_iou": "matched IoU",
}


def building_lines(buildings: dict | None, split: bool = False) -> list[str]:
    """The same held-out cities counted building by building (the SpaceNet rule); `split`: the
    blobs were split into buildings first (zoo.separate), as the recipe's target asks."""
    if not buildings:
        return []
    table = []
    for size, by_city in buildings.items():
        label = (
            "all"
            if size == "0"
            else f">= {size.replace('m2', ' m²')}"
            if size.endswith("m2")
            else f">= {size} px"
        )
        for city, row in by_city.items():
            table.append(
                {
                    "held-out city": city,
                    "buildings": label,
                    **{header: f"{row[key]:.3f}" for key, header in BUILDING_SHOWN.items()},
                }
            )
    return [
        "Building by building: a predicted building (8-connected component of the mask) is found "
        "when its IoU with a still-unmatched true one is at least 0.5; counts summed over the city "
        "and the seeds. `>= 64 px` and `>= 4 m²` ignore smaller buildings on both sides (m² from each "
        "tile's ground resolution)."
        + (
            " The mask's blobs are split into buildings first (`zoo.separate`, a watershed from "
            "the model's confident cores), as the recipe's `separation` target asks."
            if split
            else ""
        ),
        "",
        tabulate(table, headers="keys", tablefmt="github"),
        "",
    ]


def per_city_table(rows: dict, with_rule: bool = False) -> str:
    table = [
        {
            "held-out city": city,
            **({"option": f"`{row['rule']}`"} if with_rule else {}),
            **{label: f"{row[key]:.3f}" for key, label in SHOWN.items()},
        }
        for city, row in rows.items()
    ]
    mean = heldout.mean_of(rows)
    table.append(
        {
            "held-out city": "**mean**",
            **({"option": ""} if with_rule else {}),
            **{label: f"**{mean[key]:.3f}**" for key, label in SHOWN.items()},
        }
    )
    return tabulate(table, headers="keys", tablefmt="github")
