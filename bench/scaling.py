"""python -m bench.scaling [--data DIR] [--out results] [--points 250x256,500x256,...]
                                   [--check-against results/.../context.json]

How the cost of a study grows with the number of images and with the tile size, measured.

Each point NxS runs in its own process, so its peak memory is its own: load N tiles (each
area keeps its share) at S px, encode validation, test and the training copies, train the
default decoder for two epochs at the standard budget (the first epoch includes tracing the
step, the second is the steady cost), score it. A study's cost is composed from those
measured parts, never extrapolated from another point:

    load + encode + trials x (first epoch + (epochs - 1) x steady epoch + scoring)

`--check-against` names a real study's context.json (its measured wall time and peak
memory) to set beside the composed number at the same size. Writes OUT/scaling.md,
OUT/scaling.json and OUT/scaling.png; finished points are kept, so a rerun after an
interruption measures only the missing ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tabulate import tabulate  # noqa: E402

from ablations import studies  # noqa: E402
from ablations.report import recorded_runs  # noqa: E402
from training.machine import describe, process_memory_gib  # noqa: E402
from training.recipe import BUDGETS, Recipe  # noqa: E402
from zoo.files import save_figure_atomic, write_json_atomic, write_text_atomic  # noqa: E402

DEFAULT_POINTS = "250x256,500x256,1000x256,1638x256,250x512,500x512"
STUDY_TRIALS = 16  # decoder_variants: 4 upsamplers x 4 skip merges
POINT_PREFIX = "POINT "


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__.split("\n\n")[1])
    parser.add_argument("--data", type=Path, help="images/ + masks/ folder (default: SYNTHETIC)")
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--points", default=DEFAULT_POINTS, help="comma-separated IMAGESxSIZE")
    parser.add_argument("--budget", default="standard", help="budget whose epochs and copies are composed")
    parser.add_argument("--check-against", type=Path, help="a real study's context.json")
    parser.add_argument("--fresh", action="store_true", help="measure every point again")
    parser.add_argument("--point", help=argparse.SUPPRESS)  # the child process: one point
    return parser.parse_args(argv)


def parse_point(text: str) -> tuple[int, int]:
    try:
        images, size = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"error: a point is IMAGESxSIZE, e.g. 500x256; got {text!r}") from None
    if images < 20 or size < 32 or size % 32:
        raise SystemExit(f"error: {text!r}: need at least 20 images and a size that is a multiple of 32")
    return images, size


def measure_point(data_root: Path | None, images: int, size: int, budget_name: str) -> dict:
    """One point, in this process: the parts a study is made of."""
    from ablations import pipeline  # deferred: TensorFlow loads in the child that measures a point
    from training import train
    from zoo import unet

    budget = dataclasses.replace(BUDGETS[budget_name], size=size, max_images=images)
    started = time.perf_counter()
    encoder = pipeline.load_encoder("imagenet")
    split, arrays, _ = pipeline.load_data(budget, data_root)
    loaded = time.perf_counter()
    shared = pipeline.shared_trial_data(encoder, arrays, budget)
    train_features = shared.train_features(Recipe().augmentation)
    encoded = time.perf_counter()
    timer = train.EpochProgress(progress=lambda line: None)
    model = unet.build(studies.DEFAULT_DECODER, encoder=encoder)
    result = train.run_trial(
        model, Recipe(), train_features, shared.val, shared.test, epochs=2, seed=0, callbacks=[timer]
    )
    scored = time.perf_counter()
    return {
        "images": sum(split.counts().values()),
        "size": size,
        "counts": split.counts(),
        "load_s": loaded - started,
        "encode_s": encoded - loaded,
        "first_epoch_s": timer.seconds[0],
        "steady_epoch_s": timer.seconds[1],
        "score_s": (scored - encoded) - result.train_seconds,
        "cache_gib": (train_features.nbytes() + shared.val.nbytes() + shared.test.nbytes()) / 2**30,
        "peak_rss_gib": process_memory_gib()[1],
        "epochs": budget.epochs,
        "trials": STUDY_TRIALS,
    }


def composed_study_minutes(point: dict) -> float:
    trial = point["first_epoch_s"] + (point["epochs"] - 1) * point["steady_epoch_s"] + point["score_s"]
    return (point["load_s"] + point["encode_s"] + point["trials"] * trial) / 60


def run_point_process(data_root: Path | None, text: str, budget: str) -> dict:
    command = [sys.executable, "-m", "bench.scaling", "--point", text, "--budget", budget]
    if data_root is not None:
        command += ["--data", str(data_root)]
    finished = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in finished.stdout.splitlines() if line.startswith(POINT_PREFIX)]
    if finished.returncode != 0 or not lines:
        tail = (finished.stderr or finished.stdout)[-2000:]
        raise RuntimeError(f"point {text} failed (exit {finished.returncode}):\n{tail}")
    return json.loads(lines[-1][len(POINT_PREFIX) :])


def load_finished(path: Path, fresh: bool) -> dict:
    if fresh or not path.is_file():
        return {}
    return {p["key"]: p for p in json.loads(path.read_text())["points"]}


def study_check(context_path: Path | None) -> dict | None:
    if context_path is None:
        return None
    context = json.loads(context_path.read_text())
    run = (recorded_runs(context) or [{}])[-1]
    return {
        "study": context["study"],
        "path": str(context_path),
        "images": sum(context["counts"].values()),
        "size": context["budget_detail"]["size"],
        "wall_minutes": run.get("wall_minutes"),
        "peak_rss_gib": run.get("peak_rss_gib"),
        "date": context.get("date"),
    }


def plot(out: Path, points: list[dict], check: dict | None) -> None:
    import matplotlib  # deferred: training.plots loads TensorFlow (through training.folds)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for size in sorted({p["size"] for p in points}):
        row = sorted((p for p in points if p["size"] == size), key=lambda p: p["images"])
        counts = [p["images"] for p in row]
        axes[0].plot(
            counts, [composed_study_minutes(p) for p in row], marker="o", label=f"{size} px, composed"
        )
        axes[1].plot(
            counts, [p["peak_rss_gib"] for p in row], marker="o", label=f"{size} px, one-trial process"
        )
    if check and check["wall_minutes"]:
        axes[0].scatter(
            [check["images"]],
            [check["wall_minutes"]],
            marker="*",
            s=160,
            color="black",
            label=f"real {check['study']} run",
            zorder=3,
        )
        axes[1].scatter(
            [check["images"]],
            [check["peak_rss_gib"]],
            marker="*",
            s=160,
            color="black",
            label=f"real {check['study']} run",
            zorder=3,
        )
    axes[0].axhline(60, color="grey", linestyle="--", linewidth=1, label="60 min target")
    axes[1].axhline(12, color="grey", linestyle="--", linewidth=1, label="12 GiB target")
    axes[0].set_ylabel(f"{STUDY_TRIALS}-trial study wall time, min")
    axes[1].set_ylabel("peak resident memory, GiB")
    for ax in axes:
        ax.set_xlabel("images in the data set")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    figure.suptitle(
        "How a decoder_variants study's cost grows (measured parts per point, composed)", fontsize=10
    )
    save_figure_atomic(figure, out / "scaling.png")


def write_report(out: Path, points: list[dict], check: dict | None, header: dict) -> None:
    rows = [
        {
            "images": p["images"],
            "size": p["size"],
            "load s": f"{p['load_s']:.0f}",
            "encode s": f"{p['encode_s']:.0f}",
            "first epoch s": f"{p['first_epoch_s']:.0f}",
            "steady epoch s": f"{p['steady_epoch_s']:.0f}",
            "scoring s": f"{p['score_s']:.0f}",
            "feature cache GiB": f"{p['cache_gib']:.2f}",
            "peak RSS GiB": f"{p['peak_rss_gib']:.1f}",
            "study min (composed)": f"{composed_study_minutes(p):.1f}",
        }
        for p in sorted(points, key=lambda p: (p["size"], p["images"]))
    ]
    lines = [
        "# How cost grows",
        "",
        f"`{header['command']}` on {header['machine']}, {header['date']}.",
        f"Data: {header['data']}. Each point ran in its own process, one after another, "
        f"load average (1 min) {header['load_start']:.1f} at the start and "
        f"{header['load_end']:.1f} at the end.",
        "",
        "Per point: load and check the tiles, encode validation + test + the training copies "
        "(2 per training tile), train the default decoder for two epochs (the first includes "
        "tracing), score. The study column composes those measured parts into a "
        f"{STUDY_TRIALS}-trial, {points[0]['epochs']}-epoch decoder_variants study: "
        f"load + encode + trials x (first epoch + {points[0]['epochs'] - 1} x steady epoch + scoring). "
        "Every variant is costed as the default decoder; the subpixel ones are a little slower.",
        "",
        tabulate(rows, headers="keys", tablefmt="github"),
        "",
        "Peak RSS is that of a process holding the cache and one trial; a real study holds more "
        "(each finished trial leaves traced graphs behind), see the check below.",
        "",
    ]
    if check:
        lines += [
            "## Check against a real study",
            "",
            f"`{check['path']}` ({check['date']}): {check['images']} images at {check['size']} px took "
            f"**{check['wall_minutes']} min** with **{check['peak_rss_gib']} GiB** peak RSS, "
            "measured by the run itself.",
            "",
        ]
    lines += ["![study cost against images and tile size](scaling.png)", ""]
    out.mkdir(parents=True, exist_ok=True)
    plot(out, points, check)
    write_text_atomic(out / "scaling.md", "\n".join(lines))
    write_json_atomic(out / "scaling.json", {**header, "points": points, "check": check})


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.point:
        images, size = parse_point(args.point)
        print(POINT_PREFIX + json.dumps(measure_point(args.data, images, size, args.budget)), flush=True)
        return 0
    wanted = [p.strip() for p in args.points.split(",") if p.strip()]
    for text in wanted:
        parse_point(text)
    finished = load_finished(args.out / "scaling.json", args.fresh)
    header = {
        "command": "python -m bench.scaling " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": describe(),
        "data": str(args.data or "SYNTHETIC scenes"),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_start": os.getloadavg()[0],
    }
    check = study_check(args.check_against)
    for text in wanted:
        if text in finished:
            print(f"{text}: measured before, kept")
            continue
        print(f"{text}: measuring ...", flush=True)
        finished[text] = {"key": text, **run_point_process(args.data, text, args.budget)}
        header["load_end"] = os.getloadavg()[0]
        write_report(args.out, [finished[t] for t in wanted if t in finished], check, header)
    header["load_end"] = os.getloadavg()[0]
    write_report(args.out, [finished[t] for t in wanted], check, header)
    print((args.out / "scaling.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
