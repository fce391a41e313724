"""Does cleaning the predicted mask help an unseen city? Small predicted blobs removed, small
holes filled, scored on the held-out probabilities a transfer run kept.

    python -m ablations.evaluate.cleanup --data ../shared/data/oam_buildings --out results/views --variants os2_shrink,os2_shrink_seed1,os2_shrink_seed2 [--view transpose]

Reads OUT/cache/VARIANT/CITY-VIEW.npy (the last epoch's held-out probabilities that
ablations.evaluate.transfer keeps for ensembles of variants) and the held-out masks, thresholds
at 0.5 and applies each setting of `--settings` (BLOB:HOLE: the predicted buildings smaller than
BLOB pixels dropped, the background pockets smaller than HOLE pixels filled; 0 leaves them).
Counts are summed over the variants (a recipe's seeds). Writes OUT/cleanup.md: building IoU per
held-out city under every setting, and the strict row, each city cleaned with the setting the
other cities score best.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from ablations import heldout, studies
from ablations.errors import UserFacingError
from ablations.evaluate.recorded import write_report
from ablations.evaluate.transfer import comma_separated
from zoo.metrics import confusion_counts

DEFAULT_SETTINGS = "0:0,16:0,32:0,64:0,128:0,0:16,0:64,32:32,64:64"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m ablations.evaluate.cleanup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="the data the transfer run used (default: synthetic smoke scenes)")
    parser.add_argument("--budget", default="standard", choices=sorted(studies.BUDGETS))
    parser.add_argument("--out", type=Path, required=True, help="the transfer run's --out")
    parser.add_argument("--variants", required=True, help="comma-separated variants whose probabilities are pooled")
    parser.add_argument("--view", default="transpose", help="which kept view set's probabilities (default transpose)")
    parser.add_argument("--settings", default=DEFAULT_SETTINGS, help=f"comma-separated BLOB:HOLE (default {DEFAULT_SETTINGS})")
    args = parser.parse_args(argv)
    try:
        args.settings = [_setting(text) for text in args.settings.split(",") if text.strip()]
    except ValueError as error:
        parser.error(f"--settings: {error}")
    args.variants = comma_separated(args.variants)
    return args


def _setting(text: str) -> tuple[int, int]:
    blob, _, hole = text.strip().partition(":")
    if not (blob.isdigit() and hole.isdigit()):
        raise ValueError(f"{text!r} is not BLOB:HOLE, two pixel counts (0 leaves that side alone)")
    return int(blob), int(hole)


def main(argv=None) -> int:
    args = parse_args(argv)
    return write_report(args.out / "cleanup.md", lambda: report(args))


def cleaned(predicted: np.ndarray, min_blob: int, min_hole: int) -> np.ndarray:
    """Boolean (H, W) building mask without buildings under `min_blob` pixels (8-connected) and
    with background pockets under `min_hole` pixels (4-connected, so a hole is what the
    building's outline closes) filled. A pocket cut off by the tile's edge counts as a hole too:
    the tile does not know what lies beyond it."""
    mask = predicted.astype(np.uint8)
    if min_blob:
        mask[_small_components(mask, min_blob, connectivity=8)] = 0
    if min_hole:
        mask[_small_components(1 - mask, min_hole, connectivity=4)] = 1
    return mask.astype(bool)


def _small_components(binary: np.ndarray, below: int, connectivity: int) -> np.ndarray:
    _, labels, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=connectivity)
    small = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] < below)
    return np.isin(labels, small[small > 0])  # label 0 is the other value, never a component


def counts_by_setting(probabilities: np.ndarray, masks: np.ndarray, settings) -> dict:
    """(min_blob, min_hole) -> the (tp, fp, fn, tn) of the tiles thresholded at 0.5 and cleaned."""
    thresholded = probabilities >= heldout.FIXED
    counts = {}
    for setting in settings:
        predicted = np.stack([cleaned(tile, *setting) for tile in thresholded])
        confusion = confusion_counts(masks, predicted)
        counts[setting] = np.array([confusion[k] for k in ("tp", "fp", "fn", "tn")], dtype=np.int64)
    return counts


def pooled_counts(out: Path, variants: list[str], view: str, masks: np.ndarray, areas: np.ndarray, settings) -> dict:
    """setting -> city -> counts summed over the variants' kept probabilities."""
    pooled = {setting: {} for setting in settings}
    for variant in variants:
        for city in sorted(set(areas)):
            path = out / "cache" / variant / f"{city}-{view}.npy"
            if not path.is_file():
                raise UserFacingError(f"{path}: no kept probabilities; run the variant with "
                                      f"python -m ablations.evaluate.transfer --views {view} --out {out}")
            by_setting = counts_by_setting(np.load(path).astype(np.float32), masks[areas == city], settings)
            for setting, counts in by_setting.items():
                pooled[setting][city] = pooled[setting].get(city, 0) + counts
    return pooled


def strict_counts(pooled: dict) -> tuple[dict, dict]:
    """Each city's counts under the setting with the best mean building IoU over the other cities,
    and that setting."""
    cities = list(next(iter(pooled.values())))
    counts, chosen = {}, {}
    for city in cities:
        others = [c for c in cities if c != city]
        chosen[city] = max(pooled, key=lambda s: np.mean([heldout.building_iou(pooled[s][c]) for c in others]))
        counts[city] = pooled[chosen[city]][city]
    return counts, chosen


def report(args) -> str:
    import pandas as pd

    from ablations.evaluate.transfer import held_out_masks

    masks, areas = held_out_masks(args.data, args.budget)
    pooled = pooled_counts(args.out, args.variants, args.view, masks, areas, args.settings)
    rows = [_row(_label(*setting), counts) for setting, counts in pooled.items()]
    strict, chosen = strict_counts(pooled)
    rows.append(_row("each city cleaned as the other cities chose", strict))
    choices = ", ".join(f"{city}: {blob}:{hole}" for city, (blob, hole) in chosen.items())
    return "\n".join([
        f"# Cleaning the predicted mask: {', '.join(args.variants)}, view {args.view}", "",
        f"Written by `python -m ablations.evaluate.cleanup --out {args.out} --variants {','.join(args.variants)} "
        f"--view {args.view}`. Held-out probabilities of the last epoch, threshold 0.5, counts summed over "
        "the variants; building IoU per held-out city. A blob is an 8-connected predicted building, a "
        "hole a 4-connected pocket of background, in pixels of the 256 x 256 tile.", "",
        pd.DataFrame(rows).to_markdown(index=False), "",
        f"Settings the other cities chose (BLOB:HOLE): {choices}.", ""])


def _label(blob: int, hole: int) -> str:
    parts = ([f"blobs < {blob} dropped"] if blob else []) + ([f"holes < {hole} filled"] if hole else [])
    return ", ".join(parts) or "as thresholded"


def _row(setting: str, counts_by_city: dict) -> dict:
    rows = {city: heldout.scores(counts) for city, counts in counts_by_city.items()}
    mean = heldout.mean_of(rows)
    return {"cleaning": setting, **{c: round(r["building_iou"], 4) for c, r in rows.items()},
            "mean": round(mean["building_iou"], 4), "P / R": f"{mean['precision']:.3f} / {mean['recall']:.3f}"}


if __name__ == "__main__":
    sys.exit(main())
