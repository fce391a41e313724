"""python -m training.adapt --model results/final/model.keras --data CITY_DIR [--tiles K]
                           [--unlabeled IMAGES_DIR] [--out DIR] [--seed S] [--fresh]

Adapts a served model to a new city ("my city is not like yours"): its decoder, starting from
the model's own weights, is fine-tuned on K labelled tiles of the city (drawn as whole ground
groups, seeded), on the city's unlabelled imagery (self-training on the model's confident
predictions), or both; the encoder stays frozen and is run once per tile and augmented copy.
The city's labelled tiles that did not train (whole ground groups only) are its held-out
ground: they score the parent and the adapted model, and keep the parent's threshold and
scales unless they choose better. Writes OUT/model.keras (serve it: python -m app --model
OUT/model.keras), OUT/model.json naming the parent (path, sha256), the city's data
fingerprint, K and the tiles used, and OUT/report.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads: its C++ start-up noise

import numpy as np  # noqa: E402

from data import folders  # noqa: E402
from training import adapt_method, adapt_score, allocator, provenance, report  # noqa: E402
from training.adapt_ground import Draw, draw_tiles  # noqa: E402
from training.adapt_inputs import (  # noqa: E402
    AdaptRequest,
    check_inputs,
    image_samples,
    load_parent,
    read_pool,
    tile_size,
)
from training.adapt_method import AdaptSettings  # noqa: E402
from training.errors import UserFacingError, exit_status  # noqa: E402
from training.features import encode  # noqa: E402
from training.machine import process_memory_gib  # noqa: E402
from zoo import saving  # noqa: E402
from zoo.files import write_text_atomic  # noqa: E402
from zoo.predict import Segmenter  # noqa: E402
from zoo.unet import decoder_of  # noqa: E402

WORSE = (
    "WORSE than the parent on the held-out ground: keep serving the parent (label more tiles, "
    "or tiles of more places)"
)
HELD_OUT_MAX = 320  # held-out tiles scored at most (whole groups in draw order): bounds the cost


def run_adapt(request: AdaptRequest) -> dict:
    started = time.time()
    labelled, pool_paths = check_inputs(request)
    k = len(labelled) if request.tiles is None else request.tiles
    draw = draw_tiles(labelled, k, request.seed) if labelled else Draw([], [], [])
    binding = run_binding(request, labelled, pool_paths, draw)
    out = request.out_folder
    kept = finished_run(out, binding, request.fresh)
    if kept is not None:
        return kept
    if draw.train:  # before the parent loads and the held-out ground is encoded
        check_buildings([folders.read_mask(s.mask_path) for s in draw.train], bool(pool_paths))
    parent, metadata = load_parent(request.model)
    size = tile_size(metadata, labelled, pool_paths)
    parent_serving = adapt_score.serving_of(metadata)
    held = draw.held_out[:HELD_OUT_MAX]
    held_images, held_masks = folders.load_arrays(held, size)
    held_features = held_out_features(parent, held_images, held_masks, parent_serving)
    before = held_out_probabilities(parent, held_images, held_features, parent_serving)
    labelled_set = labelled_features(parent, draw.train, size, request.settings, request.seed)
    pseudo_set = pseudo_features(parent, pool_paths, size, parent_serving, request.settings, request.seed)
    print(f"adapting: {k} labelled tiles, {len(pool_paths)} unlabelled, seed {request.seed}")
    history, seconds = adapt_method.fine_tune(
        parent, labelled_set, pseudo_set, request.settings, request.seed
    )
    del labelled_set, pseudo_set
    after = held_out_probabilities(parent, held_images, held_features, parent_serving)
    del held_features
    judged = judge(before, after, held_masks, parent_serving)
    cost = {"train_seconds": round(seconds, 1), "wall_seconds": round(time.time() - started, 1),
            "peak_rss_gib": round(process_memory_gib()[1], 2)}  # fmt: skip
    meta = adapted_metadata(request, metadata, binding, draw, held, judged, history, cost)
    path = saving.save(parent, out / "model.keras", meta)
    write_text_atomic(out / "report.md", report_text(meta))
    print(summary_line(meta, path))
    return meta


# ---------------------------------------------------------------- the adaptation


def labelled_features(model, samples: list, size: int, settings: AdaptSettings, seed: int):
    if not samples:
        return None
    images, masks = folders.load_arrays(samples, size)
    print(f"encoding {len(samples)} labelled tiles, {settings.copies} copies ('{settings.augmentation}') ...")
    return encode(model, images, masks, copies=settings.copies, augmentation=settings.augmentation, seed=seed)


def check_buildings(masks: list[np.ndarray], pool: bool) -> None:
    """Tiles without buildings teach the decoder to find none: on the adaptation curve, eight or
    sixteen tiles of bare ground (Dar es Salaam, seed 1) took a parent from building IoU 0.58
    to 0 (results/adapt). Refused when no tile holds a building and no unlabelled imagery
    (whose confident pseudo-labels do) comes with them; a warning when few do."""
    with_buildings = sum(bool(mask.any()) for mask in masks)
    if with_buildings == 0 and not pool:
        raise UserFacingError(
            f"--data: none of the {len(masks)} labelled tiles drawn holds a building pixel: adapting on "
            "them would teach the model to find none; label tiles where buildings stand (or add "
            "--unlabeled IMAGES_DIR)"
        )
    if with_buildings < max(1, len(masks) // 4):
        print(
            f"warning: only {with_buildings} of the {len(masks)} labelled tiles hold a building; the "
            "adapted model may find fewer (label tiles where buildings stand)"
        )


def pseudo_features(model, paths: list[Path], size: int, serving, settings: AdaptSettings, seed: int):
    """The student's copies of the unlabelled tiles, labelled where the parent (as served) is confident."""
    if not paths:
        return None
    chosen = adapt_method.unlabelled_choice(len(paths), settings, seed)
    images = read_pool([paths[i] for i in chosen], size)
    print(f"pseudo-labelling {len(images)} unlabelled tiles (teacher: the parent as served) ...")
    segmenter = Segmenter(model, tta=serving.tta, scales=serving.scales)
    probs = np.stack([segmenter.probabilities(image) for image in images])
    masks = adapt_method.pseudo_masks(probs, settings.confident)
    share = float(np.mean(masks != 2))
    print(
        f"  {share:.0%} of pixels confident; encoding {settings.student_copies} strongly augmented copies ..."
    )
    return adapt_method.student_features(model, images, masks, settings, seed)


def held_out_scales(parent) -> list[float]:
    return sorted({*parent.scales, *(s for c in adapt_score.candidate_scales(parent) for s in c)})


def held_out_features(model, images: np.ndarray, masks: np.ndarray, parent):
    """The held-out tiles encoded once at every scale judged, for the parent and the adapted
    decoder alike (the frozen encoder gives both the same features); None with test-time
    views, which the cache does not hold."""
    if not len(images) or parent.tta != "none":
        return None
    return adapt_method.encode_scales(model, images, masks, held_out_scales(parent), progress=lambda _: None)


def held_out_probabilities(model, images: np.ndarray, features, parent) -> dict[float, np.ndarray] | None:
    if not len(images):
        return None
    if features is not None:
        return adapt_method.scale_probabilities(decoder_of(model), features)
    return adapt_score.scale_probabilities(model, images, parent.tta, held_out_scales(parent))


def judge(before, after, masks: np.ndarray, parent) -> dict:
    """How the held-out ground scores the parent and the adapted model, and how the adapted
    one serves (the parent's threshold and scales unless the held-out ground chooses better)."""
    if after is None:
        why = "no held-out labelled ground (every labelled tile trained): the parent's serving kept"
        return {"serving": parent.as_metadata(), "kept": True, "held_out_tiles": 0, "why": why}
    choice = adapt_score.choose_serving(after, masks, parent)
    why = (
        "the parent's threshold and scales kept: the held-out ground chose nothing better by "
        f"{adapt_score.CHOICE_MARGIN} building IoU"
        if choice["kept"]
        else "threshold and scales chosen on the held-out ground (better by "
        f"{choice['best_iou'] - choice['parent_setting_iou']:.3f} building IoU than the parent's)"
    )
    rows = {
        "parent": adapt_score.scored(before, masks, parent),
        "adapted_parent_serving": adapt_score.scored(after, masks, parent),
        # The chosen serving was picked on these tiles: optimistic unless kept.
        "adapted": adapt_score.scored(after, masks, choice["serving"]),
    }
    worse = rows["adapted"]["building_iou"] < rows["parent"]["building_iou"]
    verdict = WORSE if worse else "better than the parent on the held-out ground"
    return {
        "serving": choice["serving"].as_metadata(), "kept": choice["kept"], "why": why,
        "held_out_tiles": len(masks), "best_on_held_out": choice["best"], **rows, "verdict": verdict,
    }  # fmt: skip


# ---------------------------------------------------------------- records


def run_binding(request: AdaptRequest, labelled: list, pool_paths: list[Path], draw: Draw) -> dict:
    """What makes this adaptation this one: a folder holding another is never overwritten."""
    return {
        "parent": {"path": str(request.model), "sha256": saving.sha256_of(request.model)},
        "data": str(request.data) if request.data else None,
        "data_fingerprint": provenance.data_fingerprint(labelled) if labelled else None,
        "tiles": len(draw.train),
        "unlabeled": str(request.unlabeled) if request.unlabeled else None,
        "unlabeled_fingerprint": provenance.data_fingerprint(image_samples(pool_paths))
        if pool_paths
        else None,
        "unlabeled_tiles": len(pool_paths),
        "seed": request.seed,
        "settings": request.settings.to_dict(),
    }


def finished_run(out: Path, binding: dict, fresh: bool) -> dict | None:
    """The metadata of the same adaptation finished earlier in OUT (kept, not redone); None
    when OUT holds none; refuses when OUT holds a different one (unless `fresh`)."""
    meta_file = out / "model.json"
    if not meta_file.is_file() or fresh:
        return None
    metadata = json.loads(meta_file.read_text())
    recorded = (metadata.get("adaptation") or {}).get("binding")
    if recorded == binding and (out / "model.keras").is_file():
        print(f"{out / 'model.keras'}: this adaptation was already made; kept (see {out / 'report.md'})")
        return metadata
    raise UserFacingError(
        f"{out} holds another model (another parent, city, K, seed or settings): choose another --out, "
        "or --fresh to replace it"
    )


def adapted_metadata(
    request, parent_meta: dict, binding: dict, draw: Draw, held, judged, history, cost
) -> dict:
    inherited = {
        k: v for k, v in parent_meta.items() if k not in ("sha256", "model_file", "versions", "metrics")
    }
    name = f"{parent_meta.get('name', 'model')}+adapted/{request.out_folder.name}"
    return {
        **inherited,
        "name": name,
        "threshold": judged["serving"]["threshold"],
        "inference": judged["serving"],
        "parent_metrics": parent_meta.get("metrics"),
        "adaptation": {
            "binding": binding, "parent": binding["parent"], "tiles": len(draw.train),
            "tiles_used": draw.names(), "held_out": [s.name for s in held],
            "set_aside": [s.name for s in draw.set_aside], "history": history, "cost": cost,
            "serving": judged, "command": "python -m training.adapt " + " ".join(adapt_argv(request)),
            "machine": report.machine(), "date": report.now(),
        },
    }  # fmt: skip


def report_text(meta: dict) -> str:
    adaptation = meta["adaptation"]
    judged, cost, binding = adaptation["serving"], adaptation["cost"], adaptation["binding"]
    lines = [
        f"# Adapted model `{meta['name']}`", "",
        f"- **Command:** `{adaptation['command']}`; {adaptation['date']}; {adaptation['machine']}",
        f"- **Parent:** `{binding['parent']['path']}` (sha256 {binding['parent']['sha256'][:12]}...)",
        f"- **City:** {binding['data']} (fingerprint {binding['data_fingerprint']}); "
        f"{binding['tiles']} labelled tiles trained, {binding['unlabeled_tiles']} unlabelled "
        f"({binding['unlabeled']})",
        f"- **Serving:** threshold {judged['serving']['threshold']:.2f}, "
        f"scales {judged['serving']['scales']}, views `{judged['serving']['tta']}`: {judged['why']}",
        f"- **Verdict:** {judged.get('verdict', 'no held-out ground to judge it on')}",
        f"- **Cost:** {cost['train_seconds']:.0f} s of training, {cost['wall_seconds']:.0f} s in all, "
        f"{cost['peak_rss_gib']:.2f} GiB peak memory",
    ]  # fmt: skip
    if judged.get("held_out_tiles"):
        lines += [
            "",
            f"Held-out ground: {judged['held_out_tiles']} tiles of whole ground groups that did not "
            "train (pixel counts summed; building F1 matches outlines at IoU 0.5).",
            "",
            "| model | serving | precision | recall | building IoU | building F1 |",
            "|---|---|---|---|---|---|",
        ]
        chosen = "parent's" if judged["kept"] else "chosen on these tiles"
        rows = (("parent", "parent", "parent's"), ("adapted", "adapted_parent_serving", "parent's"),
                ("adapted", "adapted", chosen))  # fmt: skip
        for label, key, how in rows:
            row = judged[key]
            lines.append(f"| {label} | {how} | {row['precision']:.3f} | {row['recall']:.3f} | "
                         f"{row['building_iou']:.3f} | {row['building_f1']:.3f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def summary_line(meta: dict, path: Path) -> str:
    judged = meta["adaptation"]["serving"]
    scores = ""
    if judged.get("held_out_tiles"):
        scores = (f"; held-out building IoU {judged['parent']['building_iou']:.3f} (parent) -> "
                  f"{judged['adapted']['building_iou']:.3f}: {judged['verdict']}")  # fmt: skip
    cost = meta["adaptation"]["cost"]
    return f"saved {path} ({cost['wall_seconds']:.0f} s, {cost['peak_rss_gib']:.2f} GiB peak){scores}"


def adapt_argv(request: AdaptRequest) -> list[str]:
    parts = ["--model", str(request.model)]
    flags = {
        "--data": request.data,
        "--tiles": request.tiles,
        "--unlabeled": request.unlabeled,
        "--out": request.out,
    }
    for flag, value in flags.items():
        if value is not None:
            parts += [flag, str(value)]
    return parts + (["--seed", str(request.seed)] if request.seed else [])


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.adapt", description=__doc__.split("\n\n")[1])
    parser.add_argument("--model", type=Path, required=True, help="the served model to adapt (zoo.saving)")
    parser.add_argument("--data", type=Path, help="labelled tiles of the city: images/, masks/")
    parser.add_argument(
        "--tiles", type=int, help="K labelled tiles to train on (default: all); the rest score"
    )
    parser.add_argument("--unlabeled", type=Path, help="the city's imagery without labels, for self-training")
    parser.add_argument("--out", type=Path, help="default: results/adapt/models/<city folder name>")
    parser.add_argument("--seed", type=int, default=0, help="which tiles are drawn, and the training's seed")
    parser.add_argument("--fresh", action="store_true", help="replace a different model in OUT")
    return parser.parse_args(argv)


def to_request(args: argparse.Namespace) -> AdaptRequest:
    return AdaptRequest(args.model, args.data, args.tiles, args.unlabeled, args.out, args.seed, args.fresh)


def main(argv=None) -> int:
    args = parse_args(argv)
    allocator.for_training()
    return exit_status(lambda: run_adapt(to_request(args)))


if __name__ == "__main__":
    sys.exit(main())
