"""results/int8/README.md from a `python -m bench.quantize` run: held-out building IoU and F1
of the float LiteRT model and each integer variant, their speed, and the rule's verdict."""

from __future__ import annotations

import numpy as np

MAX_IOU_LOSS = 0.005  # issue 35: an integer model is served only if it loses less than this ...
MIN_SPEEDUP = 1.5  # ... and runs at least this many times faster


def spread(pairs) -> dict:
    walls, cpus = np.array(pairs).T
    return {
        "wall_median": float(np.median(walls)),
        "wall_min": float(walls.min()),
        "wall_max": float(walls.max()),
        "cpu_median": float(np.median(cpus)),
    }


def verdicts(run: dict) -> dict[str, dict]:
    """Per integer variant: mean building IoU lost over the held-out cities, speed-up on the
    scene (wall and CPU), and whether the rule would serve it."""
    scene = {name: spread(pairs) for name, pairs in run["speed"]["scene_2048"].items()}
    found = {}
    for name in run["variants"]:
        losses = [row["float"]["building_iou"] - row[name]["building_iou"] for row in run["folds"]]
        loss = float(np.mean(losses)) if losses else None
        wall = scene["float"]["wall_median"] / scene[name]["wall_median"]
        cpu = scene["float"]["cpu_median"] / scene[name]["cpu_median"]
        serve = loss is not None and loss < MAX_IOU_LOSS and min(wall, cpu) >= MIN_SPEEDUP
        found[name] = {"loss": loss, "wall_speedup": wall, "cpu_speedup": cpu, "serve": serve}
    return found


def report(run: dict) -> str:
    variants, served = run["variants"], run["served"]
    lines = [
        "# int8 LiteRT: held-out building IoU and speed",
        "",
        f"`{run['command']}` on {run['machine']}, {run['date']}. {run['other_work']}",
        "",
        "Float: the LiteRT file `python -m zoo.export` writes. Integer (`zoo.export.quantized_tflite`, "
        "int8 weights and activations, float32 in and out, activation ranges measured on "
        f"{run['calibration_tiles']} training tiles drawn at random, seed 0, from the fold's training "
        "cities; for the served model, from every city): `int8`, every operation; `int8-decoder`, the "
        "decoder's operations only, the frozen MobileNetV2 encoder and the input scaling kept in float. "
        f"All run as served: scales {', '.join(f'{s:g}' for s in served['scales'])}, views "
        f"`{served['tta']}`, threshold {served['threshold']:g}.",
        "",
        f"## Held-out cities ({run['folds_dir']}: each fold's decoder never saw its city)",
        "",
        "Building IoU = TP / (TP + FP + FN), pixel counts summed over the city's tiles. Building F1: a "
        f"predicted building matches a true one at IoU >= 0.5, buildings under {run['min_m2']:g} m² on "
        "the ground ignored on both sides (as cross-validation counts them). *Keras* is the building IoU "
        "of the probabilities cross-validation itself kept (float16), which the float column must match.",
        "",
        "| held-out city | tiles | building IoU: Keras | float | "
        + " | ".join(f"{name} (difference)" for name in variants)
        + " | building F1: float | "
        + " | ".join(variants)
        + " | pixels changed: "
        + " | ".join(variants)
        + " |",
        "|---|---:|" + "---:|" * (2 + 3 * len(variants) + 1),
    ]
    for row in run["folds"]:
        f = row["float"]
        lines.append(
            f"| {row['city']} | {row['tiles']} | {_number(row['keras_building_iou'])} "
            f"| {f['building_iou']:.4f} | "
            + " | ".join(
                f"{row[name]['building_iou']:.4f} ({row[name]['building_iou'] - f['building_iou']:+.4f})"
                for name in variants
            )
            + f" | {f['building_f1']:.4f} | "
            + " | ".join(f"{row[name]['building_f1']:.4f}" for name in variants)
            + " | "
            + " | ".join(f"{row[name]['pixels_changed']:.2%}" for name in variants)
            + " |"
        )
    judged = verdicts(run)
    if run["folds"]:
        lines += [
            "",
            "Mean building IoU lost over the held-out cities: "
            + ", ".join(f"{name} **{judged[name]['loss']:+.4f}**" for name in variants)
            + ".",
        ]
    lines += _speed_lines(run)
    lines += [
        "",
        f"Rule: an integer model is served by default only if it loses under {MAX_IOU_LOSS} "
        f"building IoU and is at least {MIN_SPEEDUP}x faster on the scene, in wall and CPU time.",
    ]
    for name in variants:
        v = judged[name]
        lines.append(
            f"- `{name}`: loses {_number(v['loss'], '+.4f')}, {v['wall_speedup']:.2f}x (wall) / "
            f"{v['cpu_speedup']:.2f}x (CPU): **{'served by default' if v['serve'] else 'not served'}**."
        )
    if not any(v["serve"] for v in judged.values()):
        lines.append("- The float LiteRT model stays the default (`zoo.runtimes.RUNTIMES`).")
    return "\n".join(lines + [""])


def _speed_lines(run: dict) -> list[str]:
    times = run["speed"]
    names = ["float", *run["variants"]]
    lines = [
        "",
        f"## Speed: the served model (`{run['model']}`) through each, in turns",
        "",
        f"One 512 x 512 tile through the network ({len(times['tile_512']['float'])} rounds) and the whole "
        f"served prediction of a 2048 x 2048 scene ({times['scene']}; `Segmenter.probabilities`, "
        f"{len(times['scene_2048']['float'])} rounds), after a warm-up, the order rotating each round; wall "
        "seconds median [min-max] and CPU seconds (user + system, all threads) median, and the speed-up "
        "over float (wall / CPU).",
        "",
        "| what | " + " | ".join(names) + " | " + " | ".join(f"{name} speed-up" for name in names[1:]) + " |",
        "|---|" + "---:|" * (2 * len(names) - 1),
    ]
    for label, key in (("512 px tile", "tile_512"), ("2048 px scene", "scene_2048")):
        measured = {name: spread(times[key][name]) for name in names}
        cells = [
            f"{m['wall_median']:.3f} [{m['wall_min']:.3f}-{m['wall_max']:.3f}] (CPU {m['cpu_median']:.3f})"
            for m in measured.values()
        ]
        gains = [
            f"{measured['float']['wall_median'] / measured[name]['wall_median']:.2f}x / "
            f"{measured['float']['cpu_median'] / measured[name]['cpu_median']:.2f}x"
            for name in names[1:]
        ]
        lines.append(f"| {label} | " + " | ".join(cells + gains) + " |")
    return lines


def _number(value, style: str = ".4f") -> str:
    return "-" if value is None else format(value, style)
