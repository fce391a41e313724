"""`python -m bench.request [--model PATH] [--runtime R] [--tta V] [--size PX] [--out DIR]`

Where one single-image request's time goes, in the server's own process: reading the JSON
body (`app.inputs.json_request`), the model (`Segmenter.probabilities`: padding, the
runtime's forward pass, the test-time views, the sigmoid), the answer (threshold and orjson),
and the whole request through the Flask app without the network (`app.test_client`). Each is
timed alone, interleaved round by round so that other work on the machine meets them alike;
medians and interquartile ranges. The end-to-end latency over HTTP is
`bench.runtimes`'; this says which part of it to work on.

Writes OUT/request_profile-RUNTIME-tta-VIEWS.md and .json (VIEWS@1+0.5 where the model serves
scales 1 and 0.5: one file per runtime, views and scales,
so runs of other settings never overwrite each other).
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import numpy as np
import orjson

from app import create_app
from app.inputs import json_request
from app.model import ModelUnavailable, load_for_serving, runtime_of
from bench.runtimes import spread_ms
from training.heldout import option_name
from training.machine import OtherWork, describe
from zoo.files import write_json_atomic, write_text_atomic
from zoo.predict import TTA_CHOICES, TTA_FROM_MODEL
from zoo.served import resolve_model_path

PARTS = ("read body", "model", "answer", "whole request, in process")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.request", description=__doc__.split("\n\n")[1])
    parser.add_argument("--model", type=Path, help="default: the served model, as `python -m app` finds it")
    parser.add_argument("--runtime", default="auto", help="as `python -m app --runtime` (default auto)")
    parser.add_argument("--tta", choices=TTA_CHOICES, default=TTA_FROM_MODEL)
    parser.add_argument("--size", type=int, default=256, help="side of the square request image")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--out", type=Path, default=Path("results"))
    return parser.parse_args(argv)


def timed_parts(segmenter, body: bytes, rounds: int) -> dict[str, list[float]]:
    """Seconds of each part, round by round (after two warm-up rounds)."""
    client = create_app(segmenter=segmenter).test_client()
    image = json_request(body, 1 << 16).image
    probabilities = segmenter.probabilities(image)
    steps = {
        "read body": lambda: json_request(body, 1 << 16),
        "model": lambda: segmenter.probabilities(image),
        "answer": lambda: orjson.dumps(
            {"prediction": (probabilities >= segmenter.threshold).astype(np.uint8)},
            option=orjson.OPT_SERIALIZE_NUMPY,
        ),
        "whole request, in process": lambda: client.post(
            "/inference", data=body, content_type="application/json"
        ),
    }
    seconds = {part: [] for part in PARTS}
    for round_number in range(rounds + 2):
        for part, step in steps.items():
            started = time.perf_counter()
            step()
            if round_number >= 2:
                seconds[part].append(time.perf_counter() - started)
    answer = client.post("/inference", data=body, content_type="application/json")
    served = np.asarray(orjson.loads(answer.data)["prediction"], np.uint8)
    if not np.array_equal(served, segmenter.predict(image)):
        raise AssertionError("the app's answer differs from the segmenter's mask")
    return seconds


def option_label(run: dict) -> str:
    """The views, and the scales where they are not 1 alone: one file per served option."""
    return option_name(run["tta"], run.get("scales", (1.0,)))


def _at_scales(run: dict) -> str:
    scales = run.get("scales", [1.0])
    return "" if list(scales) == [1.0] else f" at scales {', '.join(f'{s:g}' for s in scales)}"


def report(run: dict) -> str:
    whole = run["parts"]["whole request, in process"]["p50_ms"]
    rows = [
        f"| {part} | {r['p50_ms']:.1f} [{r['iqr_ms'][0]:.1f}-{r['iqr_ms'][1]:.1f}] | "
        f"{100 * r['p50_ms'] / whole:.0f}% |"
        for part, r in ((p, run["parts"][p]) for p in PARTS)
    ]
    return "\n".join(
        [
            f"# Where a {run['size']} px request's time goes: {run['runtime']}, "
            f"test-time views `{run['tta']}`"
            f"{_at_scales(run)}",
            "",
            f"`{run['command']}` on {run['machine']}, {run['date']}, CPU only. Model: `{run['model']}`. "
            f"Each part timed alone in one process, {run['rounds']} interleaved rounds after two warm-ups; "
            "p50 [p25-p75] ms, and the share of the whole request's p50. The whole request goes "
            "through the Flask app (`app.test_client`), without the network and the WSGI server "
            f"that `bench.runtimes` adds. {run.get('other_work', '')}",
            "",
            "| part | ms | share |",
            "|---|---:|---:|",
            *rows,
            "",
        ]
    )


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    model = resolve_model_path(args.model)
    try:
        segmenter = load_for_serving(model, args.runtime, args.tta)
    except ModelUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    image = np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    body = orjson.dumps({"image": image}, option=orjson.OPT_SERIALIZE_NUMPY)
    run = {
        "command": "python -m bench.request " + " ".join(argv),
        "machine": describe(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "model": str(model),
        "runtime": runtime_of(segmenter),
        "tta": segmenter.tta,
        "scales": list(segmenter.scales),
        "size": args.size,
        "rounds": args.rounds,
    }
    other_work = OtherWork()
    parts = timed_parts(segmenter, body, args.rounds)
    run["parts"] = {part: spread_ms(values) for part, values in parts.items()}
    run["other_work"] = other_work.note()
    stem = f"request_profile-{run['runtime']}-tta-{option_label(run)}"  # "none@1+0.5": no with_suffix
    write_json_atomic(args.out / f"{stem}.json", run)
    write_text_atomic(args.out / f"{stem}.md", report(run))
    print(report(run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
