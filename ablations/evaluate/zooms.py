"""Which inference scales suit which ground resolution: serving options scored per zoom level.

    python -m ablations.evaluate.zooms --curve-from results/zooms/os2_shrink/curve.json [--curve-from ...]

Reads the curves of one recipe (under one seed or several) that ablations.evaluate.transfer
recorded with counts per zoom level (`views_by_zoom`), sums the counts over the seeds and writes
OUT (default: by_zoom.md beside the first curve's folder; README.md there is the harness's own):

- building IoU at 0.5 of every recorded option, per held-out city and zoom level;
- a zoom-aware rule (ablations.heldout.zoom_aware): each zoom level of a city served the option
  that the *other* cities score best at that zoom, against the best single option. The rule
  needs each image's ground resolution, which the served contract does not carry, so it measures
  what knowing (or estimating) it would be worth; it is not served.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ablations import heldout
from ablations.evaluate.recorded import read_curve, write_report


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m ablations.evaluate.zooms", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--curve-from", type=Path, action="append", required=True,
                        help="a transfer curve.json with per-zoom counts; repeat for the recipe's other seeds")
    parser.add_argument("--out", type=Path, help="markdown to write (default: by_zoom.md beside the first curve's folder)")
    args = parser.parse_args(argv)
    args.out = args.out or args.curve_from[0].parent.parent / "by_zoom.md"  # README.md is the harness's
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    return write_report(args.out, lambda: report([read_curve(path, "views_by_zoom") for path in args.curve_from],
                                                 args.curve_from))


def pooled_by_zoom(curves: list[dict]) -> dict:
    """option -> city -> zoom -> counts summed over the curves (the seeds); only options every curve has."""
    options = [o for o in curves[0]["views_by_zoom"] if all(o in c["views_by_zoom"] for c in curves)]
    return {option: {city: {zoom: np.sum([np.asarray(c["views_by_zoom"][option][city][zoom]) for c in curves], axis=0)
                            for zoom in zooms}
                     for city, zooms in curves[0]["views_by_zoom"][option].items()}
            for option in options}


def report(curves: list[dict], paths: list[Path]) -> str:
    import pandas as pd

    by_zoom = pooled_by_zoom(curves)
    index = heldout.threshold_index()
    rows = [{"city": city, "zoom": zoom, "pixels (M)": _megapixels(counts), **{
                option: round(float(heldout.building_iou(by_zoom[option][city][zoom][index])), 3) for option in by_zoom}}
            for city, zooms in by_zoom[next(iter(by_zoom))].items() for zoom, counts in zooms.items()]
    whole = {option: {city: {"all": sum(zooms.values())} for city, zooms in by_city.items()}
             for option, by_city in by_zoom.items()}
    single_counts, single_chosen = heldout.zoom_aware(whole)  # one zoom level, "all": one option per city
    aware_counts, chosen = heldout.zoom_aware(by_zoom)
    everywhere = {option: heldout.mean_of(heldout.at_threshold({c: z["all"] for c, z in by_city.items()}))
                  for option, by_city in whole.items()}
    best = max(everywhere, key=lambda o: everywhere[o]["building_iou"])
    compare = [_compare_row(f"one option for every city, chosen on every city, its own included ({best})",
                            {c: z["all"] for c, z in whole[best].items()}),
               _compare_row("one option per city, chosen on the other cities", single_counts),
               _compare_row("each zoom its option, chosen on the other cities", aware_counts)]
    for city, zooms in chosen.items():
        zooms["one option"] = single_chosen[city]["all"]
    choices = [{"held-out city": city, **{(z if z == "one option" else f"zoom {z}"): option for z, option in zooms.items()}}
               for city, zooms in chosen.items()]
    seeds = ", ".join(str(c.get("seed", "?")) for c in curves)
    return "\n".join([
        f"# Serving options by zoom level: {curves[0].get('variant', '?')}, seeds {seeds}", "",
        "Written by `python -m ablations.evaluate.zooms " + " ".join(f"--curve-from {p}" for p in paths) + "`. "
        "Counts summed over the seeds; building IoU at threshold 0.5 of each held-out city's tiles "
        "of one zoom level (21: about 7 cm a pixel, 20: 15 cm, 19: 30 cm).", "",
        pd.DataFrame(rows).to_markdown(index=False), "",
        "## A zoom-aware rule against one option for every tile", "",
        "Each zoom level of a held-out city served the option the other two cities score best at "
        "that zoom, against one option for all its tiles chosen the same way (and, for reference, "
        "the one option best over every city, which lets each city help choose). A server would need each image's ground resolution, which the request does not "
        "carry: this is what knowing it would be worth, not what is served.", "",
        pd.DataFrame(compare).to_markdown(index=False), "",
        pd.DataFrame(choices).to_markdown(index=False), ""])


def _compare_row(serving: str, counts_by_city: dict) -> dict:
    rows = heldout.at_threshold(counts_by_city)
    mean = heldout.mean_of(rows)
    return {"serving": serving, **{c: round(r["building_iou"], 3) for c, r in rows.items()},
            "mean": round(mean["building_iou"], 3), "P / R": _pr(mean)}


def _megapixels(counts) -> float:
    """Pixels the counts cover (summed over seeds), in millions."""
    return round(float(np.asarray(counts)[0].sum()) / 1e6, 1)


def _pr(mean: dict) -> str:
    return f"{mean['precision']:.3f} / {mean['recall']:.3f}"


if __name__ == "__main__":
    sys.exit(main())
