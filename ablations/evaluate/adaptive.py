"""Inference scales chosen per tile, from what the served passes already show.

    python -m ablations.evaluate.adaptive --curve-from results/adaptive/os2_shrink/curve.json [--curve-from ...seed1/curve.json ...] [--max-passes 2]

The half-size view lifts the city of large roofs (Nairobi) and costs the city of small houses
(Dar es Salaam), and the tiles' ground resolution does not say which kind a tile is: at zoom 21
the cities prefer opposite options (`results/zooms/by_zoom.md`). What a tile shows might: where
a roof is too large for the full-size pass, the half-size pass finds more building. So each
tile gets a signal from the two passes the served model runs anyway,

    r = (b_half - b_full) / (b_half + b_full + 1),  b = pixels predicted building (none@0.5, none),

and the rule serves option LARGE where r > cut and SMALL elsewhere. The pair and the cut are
chosen on the other cities (each city's counts summed over its tiles and the seeds, the mean
building IoU over those cities at threshold 0.5), then applied to the held-out city: nothing is
chosen on the city it is scored on. A pair of one option twice is that option alone, so the
rule competes with every single option under the same choice. Within `--max-passes`, a rule
counts the most passes a tile may cost: the two signal passes and the costlier option's.

Reads the curves ablations.evaluate.transfer recorded with per-tile counts (`tile_counts`;
`--scales` must include 0.5) and writes OUT (default: adaptive.md beside the first curve's folder).
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

from ablations import heldout
from ablations.errors import UserFacingError
from ablations.evaluate.recorded import read_curve, write_report
from zoo.predict import TTA_VIEW_INDICES

FULL, HALF = "none", "none@0.5"  # the passes the signal compares
CUTS = np.round(np.linspace(-1.0, 1.0, 41), 2)  # r is in (-1, 1): the first cut sends every tile to LARGE, the last none


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m ablations.evaluate.adaptive", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--curve-from", type=Path, action="append", required=True,
                        help="a transfer curve.json with per-tile counts; repeat for the recipe's other seeds")
    parser.add_argument("--max-passes", type=float, default=heldout.SERVED_MAX_PASSES,
                        help=f"latency budget of the budgeted rule, full-size passes an image (default {heldout.SERVED_MAX_PASSES:g})")
    parser.add_argument("--reference", default="none@1+0.5",
                        help="an option shown for every tile as well, unchosen (default: the one served now, "
                             "which the fit chose on all three cities)")
    parser.add_argument("--out", type=Path, help="markdown to write (default: adaptive.md beside the first curve's folder)")
    args = parser.parse_args(argv)
    args.out = args.out or args.curve_from[0].parent.parent / "adaptive.md"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)

    def made() -> str:
        curves = [read_curve(path, "tile_counts", (FULL, HALF), "--scales 0.5,... ") for path in args.curve_from]
        two_scale = [str(path) for path, curve in zip(args.curve_from, curves) if heldout.model_passes(curve) != 1.0]
        if two_scale:  # passes_of_rule counts one-scale passes, and its signal compares two of them
            raise UserFacingError(f"{', '.join(two_scale)}: a two-scale decoder's curve; the per-tile rule "
                                  "is defined for one-scale models")
        return report(pooled_tiles(curves), args.curve_from, args.max_passes, args.reference)

    return write_report(args.out, made)


def pooled_tiles(curves: list[dict]) -> dict:
    """option -> city -> (tiles x seeds, 3) counts: each seed's tiles side by side, as separate
    tiles (each seed's model sees a tile its own way). Only options every curve recorded."""
    options = [o for o in curves[0]["tile_counts"] if all(o in c["tile_counts"] for c in curves)]
    return {option: {city: np.concatenate([np.asarray(c["tile_counts"][option][city], np.int64) for c in curves])
                     for city in curves[0]["tile_counts"][option]}
            for option in options}


def signal(tiles: dict, city: str) -> np.ndarray:
    """r per tile: how much more building the half-size pass finds than the full-size one."""
    full, half = (tiles[name][city][:, :2].sum(axis=1) for name in (FULL, HALF))
    return (half - full) / (half + full + 1.0)


def passes_of_rule(small: str, large: str) -> float:
    """Full-size passes a tile costs at most: the signal's two passes and then the (view, scale)
    pairs of the option it is served, the costlier of the two. One option for every tile
    (small == large) needs no signal, only its own passes."""
    signal_passes = set() if small == large else {(0, 1.0), (0, 0.5)}

    def with_option(name: str) -> float:
        views, scales = heldout.option_of(name)
        pairs = signal_passes | {(view, scale) for view in TTA_VIEW_INDICES[views] for scale in scales}
        return sum(scale * scale for _, scale in pairs)

    return max(with_option(small), with_option(large))


def iou_by_cut(tiles: dict, city: str, small: str, large: str) -> np.ndarray:
    """The city's building IoU at every cut of CUTS (tiles with r > cut served `large`)."""
    r = signal(tiles, city)
    to_large = r[None, :] > CUTS[:, None]  # (cuts, tiles)
    counts = np.where(to_large[..., None], tiles[large][city][None], tiles[small][city][None]).sum(axis=1)
    return heldout.building_iou(counts)


def served_counts(tiles: dict, city: str, small: str, large: str, cut: float) -> np.ndarray:
    to_large = signal(tiles, city) > cut
    return np.where(to_large[:, None], tiles[large][city], tiles[small][city]).sum(axis=0)


def choose_rule(tiles: dict, cities: list[str], max_passes: float | None, single: bool = False) -> tuple:
    """(small, large, cut) with the best mean building IoU over `cities` (the first on a tie);
    single: one option for every tile (small == large)."""
    options = list(tiles)
    pairs = [(o, o) for o in options] if single else list(itertools.product(options, repeat=2))
    best, best_score = None, -1.0
    for small, large in pairs:
        if max_passes is not None and passes_of_rule(small, large) > max_passes + 1e-9:
            continue
        scores = np.mean([iou_by_cut(tiles, city, small, large) for city in cities], axis=0)
        index = int(np.argmax(scores))
        if scores[index] > best_score + 1e-12:
            best, best_score = (small, large, float(CUTS[index])), float(scores[index])
    return best


def leave_one_city_out(tiles: dict, max_passes: float | None, single: bool = False) -> dict:
    """city -> its rule (chosen on the other cities) and its scores under it."""
    cities = list(tiles[FULL])
    rows = {}
    for city in cities:
        small, large, cut = choose_rule(tiles, [c for c in cities if c != city] or [city], max_passes, single)
        share = float(np.mean(signal(tiles, city) > cut)) if small != large else 0.0
        rows[city] = {"small": small, "large": large, "cut": cut, "to_large": share, "passes": passes_of_rule(small, large),
                      **_scores(served_counts(tiles, city, small, large, cut))}
    return rows


def fixed(tiles: dict, option: str) -> dict:
    """city -> its scores with `option` for every tile, chosen on no city here."""
    if option not in tiles:
        raise UserFacingError(f"--reference {option}: not recorded; recorded: {', '.join(tiles)}")
    return {city: {"small": option, "large": option, "cut": 1.0, "to_large": 0.0, "passes": passes_of_rule(option, option),
                   **_scores(tiles[option][city].sum(axis=0))} for city in tiles[option]}


def _scores(counts) -> dict:
    tp, fp, fn = (int(c) for c in counts)
    return {"building_iou": tp / max(tp + fp + fn, 1), "precision": tp / max(tp + fp, 1), "recall": tp / max(tp + fn, 1)}


def report(tiles: dict, paths: list[Path], max_passes: float, reference: str = "none@1+0.5") -> str:
    import pandas as pd

    served = {f"{reference} for every tile (not chosen here)": fixed(tiles, reference),
              "single option, within the budget": leave_one_city_out(tiles, max_passes, single=True),
              "rule, within the budget": leave_one_city_out(tiles, max_passes),
              "single option, any cost": leave_one_city_out(tiles, None, single=True),
              "rule, any cost": leave_one_city_out(tiles, None)}
    cities = list(tiles[FULL])
    summary = [{"serving": name, **{c: round(rows[c]["building_iou"], 3) for c in cities},
                "mean": round(float(np.mean([r["building_iou"] for r in rows.values()])), 3),
                "P / R": f"{np.mean([r['precision'] for r in rows.values()]):.3f} / "
                         f"{np.mean([r['recall'] for r in rows.values()]):.3f}"}
               for name, rows in served.items()]
    choices = [{"serving": name, "held-out city": city, "small": r["small"], "large": r["large"], "cut": r["cut"],
                "tiles to large": f"{100 * r['to_large']:.0f} %", "passes at most": round(r["passes"], 2)}
               for name, rows in served.items() for city, r in rows.items()]
    return "\n".join([
        "# Inference scales chosen per tile", "",
        "Written by `python -m ablations.evaluate.adaptive " + " ".join(f"--curve-from {p}" for p in paths)
        + f" --max-passes {max_passes:g}`. A tile is served `large` where the half-size pass finds more building "
        "than the full-size one by more than `cut` (r = (b_half - b_full) / (b_half + b_full + 1)), else "
        "`small`; both and the cut chosen on the other cities, seeds pooled, threshold 0.5. Building IoU of "
        "each held-out city:", "",
        pd.DataFrame(summary).to_markdown(index=False), "",
        pd.DataFrame(choices).to_markdown(index=False), ""])


if __name__ == "__main__":
    sys.exit(main())
