"""The README and the picture of `experiments.outlines.compare`'s record."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tabulate import tabulate

from zoo import polygons

SHOWN = {
    "building_precision": "building precision",
    "building_recall": "building recall",
    "building_f1": "building F1",
    "matched_iou": "matched IoU",
    "pixel_iou": "pixel building IoU",
    "vertices_per_building": "vertices / building",
}


def write_readme(record: dict, path: Path) -> None:
    chosen = record["chosen"]
    lines = [
        "# Raw against regular outlines, and the smallest building worth keeping",
        "",
        f"Made by `python -m experiments.outlines.compare --data {record['data']} --folds {record['folds']} "
        f"--out {path.parent}` ({record['date']}; {record['machine']}; {record['seconds']:.0f} s). "
        "Question, method and decision: "
        "[experiments/outlines/README.md](../../experiments/outlines/README.md).",
        "",
        f"**Data:** the held-out probabilities of the served recipe under cross-validation by city "
        f"(`{record['folds']}/seedN/CITY.probs.npy`, written by `python -m training.fit --curve`): each city "
        f"predicted by a model trained on the other cities only, seeds {_seeds(record)}; "
        + ", ".join(f"{city} {n} tiles" for city, n in record["tiles"].items())
        + f" of {record['data']} (256 px). Threshold {record['threshold']}, outlines as the server makes "
        "them (`zoo.polygons.outlines`, tolerance 1 px, holes and specks under 8 px² dropped), rasterised "
        "back (pixel centres) and scored against the true mask. Counts summed over tiles and seeds; "
        "*mean* is over the cities. Building metrics: a predicted building (8-connected component of "
        "the rasterised outlines) is found when its IoU with a still-unmatched true one is at least 0.5 "
        "(`zoo.metrics.BuildingCounts`). Pixel building IoU = TP/(TP+FP+FN) of the rasterised outlines.",
        "",
        "## Raw and regular outlines, no minimum size",
        "",
        _kind_table(record, "m2", "0.0"),
        "",
        "*mask* is the thresholded mask itself, before any outline (what `training.crossval` counts): "
        "its specks under 8 px, which outlines drop, are most of its false positives.",
        "",
        *_library_note(record),
        "## Building F1 against the minimum size",
        "",
        "A minimum leaves predicted buildings out, never true ones. Mean building F1 over the cities "
        "(and, in brackets, the buildings kept, summed over cities and seeds):",
        "",
        _curve_table(record, "m2", "minimum area (m²)"),
        "",
        _curve_table(record, "pixels", "minimum mask pixels"),
        "",
        f"## Chosen defaults: `outline={chosen['outline']}`, `min_area_m2={chosen['min_area_m2']:g}`, "
        f"`min_pixels={chosen['min_pixels']}`",
        "",
        "The outline kind with the higher mean building F1 without a minimum (within 0.005: the higher "
        "pixel IoU); for it, the smallest minimum whose mean building F1 is within 0.005 of the best, "
        "as it leaves out the fewest real buildings. The pixel minimum (for images that do not say their "
        "ground resolution) is looked for only up to what the m² minimum is in pixels at the coarsest "
        f"tiles of the data ({record['coarsest_pixel_m2']:.4f} m² a pixel, zoom 19: "
        f"{chosen['min_area_m2'] / record['coarsest_pixel_m2']:.0f} px): building F1 against pixels keeps "
        "rising to the grid's end because most tiles are zoom 21 (about 7.5 cm a pixel), where 1024 px "
        "is 6 m², but a pixel minimum that high would drop most real buildings of a 30 cm image. "
        "`zoo.polygons` DEFAULT_OUTLINE, "
        "DEFAULT_MIN_AREA_M2 and DEFAULT_MIN_PIXELS hold these (tests/test_outlines.py checks that "
        "they match this record); the server and `app.predict` apply them.",
        "",
        f"At the chosen minimum area ({chosen['min_area_m2']:g} m²):",
        "",
        _kind_table(record, "m2", str(float(chosen["min_area_m2"])), with_mask=False),
        "",
        "![raw and regular outlines](outlines.png)",
        "",
        "Left: raw outlines; right: regular (no minimum size); on one held-out tile of each city (seed "
        f"{record['seeds'][0].removeprefix('seed')}), the true buildings shaded.",
        "",
        _order_note(record),
        "",
    ]
    path.write_text("\n".join(lines))


def _seeds(record: dict) -> str:
    return ", ".join(seed.removeprefix("seed") for seed in record["seeds"])


def _library_note(record: dict) -> list[str]:
    if "buildingregulariser" not in record["kinds"]:
        return []
    return [
        "*buildingregulariser*: the package's `regularize_single_polygon` with its own defaults "
        "(parallel threshold 1, simplify 0.5, 45° edges and circles allowed; units here are pixels), "
        "applied to the raw outlines. It is not a dependency of the product: the run had it installed "
        "beside the environment (`pip install --no-deps --target DIR buildingregulariser geopandas "
        "pyproj pyogrio`, `PYTHONPATH=DIR`); without it the comparison has the two served kinds only.",
        "",
    ]


def _kind_table(record: dict, rule: str, minimum: str, with_mask: bool = True) -> str:
    rows = []
    for city in [*record["cities"], "mean"]:
        if city != "mean" and with_mask:
            mask = record["per_city"][city]["mask"]
            rows.append({"held-out city": city, "outline": "mask", **_cells(mask)})
        for kind in record["kinds"]:
            scores = (
                record["mean"][kind][rule][minimum]
                if city == "mean"
                else record["per_city"][city][kind][rule][minimum]["scores"]
            )
            rows.append({"held-out city": city, "outline": kind, **_cells(scores)})
    return tabulate(rows, headers="keys", tablefmt="github")


def _cells(scores: dict) -> dict:
    """The shown scores, blank where a row has none (the mask has no outlines to count)."""
    return {
        label: ""
        if key not in scores
        else f"{scores[key]:.1f}"
        if key.startswith("vertices")
        else f"{scores[key]:.3f}"
        for key, label in SHOWN.items()
    }


def _curve_table(record: dict, rule: str, label: str) -> str:
    rows = []
    for kind in record["kinds"]:
        row = {"outline": kind}
        for minimum, scores in record["mean"][kind][rule].items():
            kept = sum(record["per_city"][city][kind][rule][minimum]["outlines"] for city in record["cities"])
            row[f"{label} {float(minimum):g}"] = f"{scores['building_f1']:.3f} ({kept})"
        rows.append(row)
    return tabulate(rows, headers="keys", tablefmt="github")


def _order_note(record: dict) -> str:
    checks = {name: check for name, check in record["order_checks"].items() if check}
    if not checks:
        return "Tile order: no fold record beside the probabilities to check it against."
    agree = [
        name
        for name, check in checks.items()
        if np.allclose(check["fold"][:3], check["here"][:3], rtol=0.01, atol=2)
    ]
    return (
        f"Tile order checked: the fold records' own building counts (mask, all sizes) agree with this "
        f"script's on {len(agree)} of {len(checks)} city-seed pairs (within 1 %: the probabilities are "
        "kept as float16)."
    )


def picture(examples: dict, path: Path) -> None:
    """One row a city: the tile with raw outlines, then with regular ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(examples), 2, figsize=(8, 4 * len(examples)), squeeze=False)
    for row, (city, (name, image, truth, prob)) in enumerate(sorted(examples.items())):
        predicted = (prob >= 0.5).astype(np.uint8)
        for column, kind in enumerate(polygons.OUTLINES):
            axis = axes[row, column]
            shaded = image.astype(float) / 255
            shaded[truth > 0] = 0.6 * shaded[truth > 0] + 0.4 * np.array([0.2, 0.4, 1.0])
            axis.imshow(shaded)
            found = polygons.outlines(predicted, prob, outline=kind)
            for footprint in found:
                for ring in _rings(footprint.geometry):
                    xy = np.asarray(ring.coords)
                    axis.plot(xy[:, 0], xy[:, 1], color="#ffe000" if kind == "raw" else "#00ffd0", lw=1.2)
            corners = sum(len(ring.coords) - 1 for f in found for ring in _rings(f.geometry))
            axis.set_title(f"{city}: {kind}, {len(found)} buildings, {corners} vertices", fontsize=9)
            axis.set_xlim(0, image.shape[1])
            axis.set_ylim(image.shape[0], 0)
            axis.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _rings(geometry):
    for part in getattr(geometry, "geoms", [geometry]):
        yield part.exterior
        yield from part.interiors
