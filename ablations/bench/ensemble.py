"""python -m ablations.bench.ensemble [--heads 1,2,3] [--sides 256,1024] [--tta none,flips] [--repeats 30] [--config-from MODEL.json] [--out results]

What an ensemble of decoders on one encoder pass (zoo.ensemble) costs at inference, against
a single U-Net of the served architecture, and what test-time views cost: median and 95th
percentile of one image through `zoo.predict.Segmenter` (Keras, in process), per number of
heads, image side and views. Weights are
the real encoder's and untrained decoders' (latency does not depend on decoder weights).
Writes OUT/ensemble.md and OUT/ensemble.json.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m ablations.bench.ensemble", description=__doc__.split("\n\n")[1])
    parser.add_argument("--heads", default="1,2,3", help="numbers of decoder heads (1: the single U-Net)")
    parser.add_argument("--sides", default="256,1024", help="square image sides in pixels")
    parser.add_argument("--tta", default="none", help="test-time views to time: none, flips, dihedral (comma-separated)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--config-from", type=Path, help="a model.json whose decoder each head is "
                        "(default: the served model's, else the selected decoder)")
    parser.add_argument("--out", type=Path, default=Path("results"))
    return parser.parse_args(argv)


def head_config(config_from: Path | None = None):
    """The decoder each head is: `config_from`'s, else the served model's, else the selected one."""
    import json

    from ablations.errors import UserFacingError
    from ablations.final import SELECTED_DECODER
    from zoo.config import DecoderConfig
    from zoo.saving import metadata_path
    from zoo.served import resolve_model_path

    path = Path(config_from or metadata_path(resolve_model_path()))
    if config_from is None and not path.is_file():
        return SELECTED_DECODER
    if not path.is_file():
        raise UserFacingError(f"--config-from {path} is not a file")
    fields = json.loads(path.read_text())
    if "config" not in fields:
        raise UserFacingError(f"{path} names no decoder config: pass a model.json beside a .keras file")
    return DecoderConfig.from_dict(fields["config"])


def measure(config, heads: list[int], sides: list[int], repeats: int, weights: str, views=("none",)) -> list[dict]:
    import numpy as np

    from ablations.machine import median_ms
    from zoo import ensemble, unet
    from zoo.encoder import build_encoder
    from zoo.predict import Segmenter

    encoder = build_encoder(None if weights == "none" else weights)
    rows = []
    for count in heads:
        model = (unet.build(config, encoder=encoder) if count == 1
                 else ensemble.build_ensemble([config] * count, encoder=encoder))
        decoder_params = int(sum(unet.trainable_params(d) for d in unet.decoders_of(model)))
        for tta in views:
            segmenter = Segmenter(model, tta=tta)
            for side in sides:
                image = np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8)
                segmenter.predict(image)  # trace once
                p50, p95 = median_ms(lambda: segmenter.predict(image), repeats)
                rows.append({"heads": count, "tta": tta, "side": side, "p50_ms": round(p50, 1), "p95_ms": round(p95, 1),
                             "decoder_params": decoder_params})
                print(f"{count} head(s), views {tta}, {side} px: p50 {p50:.1f} ms, p95 {p95:.1f} ms", flush=True)
    return rows


def render(rows: list[dict], command: str, machine: str, date: str, name: str, other_work: str = "") -> str:
    from tabulate import tabulate

    single = {r["side"]: r["p50_ms"] for r in rows if r["heads"] == 1 and r["tta"] == "none"}
    table = [{"heads": r["heads"], "test-time views": r["tta"], "side (px)": r["side"], "p50 (ms)": r["p50_ms"],
              "p95 (ms)": r["p95_ms"],
              "p50 vs one head, no views": f"{r['p50_ms'] / single[r['side']]:.2f}x" if r["side"] in single else "",
              "decoder parameters": r["decoder_params"]} for r in rows]
    return "\n".join([
        "# Ensembles on one encoder pass: inference cost", "",
        f"- **Command:** `{command}`", f"- **Machine:** {machine}; {date}. {other_work}".rstrip(),
        "- One image through `zoo.predict.Segmenter` (Keras, one scale; `flips` = four views averaged), "
        f"architecture `{name}` per head; the encoder runs once whatever the number of heads.", "",
        tabulate(table, headers="keys", tablefmt="github", disable_numparse=True), ""])


def main(argv=None) -> int:
    from ablations.errors import exit_status

    args = parse_args(argv)
    return exit_status(lambda: run(args, argv))


def run(args, argv=None) -> None:
    import datetime

    from ablations.machine import OtherWork, describe
    from zoo.files import write_json_atomic, write_text_atomic

    heads = [int(v) for v in args.heads.split(",")]
    sides = [int(v) for v in args.sides.split(",")]
    config = head_config(args.config_from)
    other_work = OtherWork()
    rows = measure(config, heads, sides, args.repeats, args.weights, [v for v in args.tta.split(",") if v])
    other_note = other_work.note()
    command = "python -m ablations.bench.ensemble " + " ".join(argv if argv is not None else sys.argv[1:])
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    write_json_atomic(args.out / "ensemble.json", {"rows": rows, "command": command, "machine": describe(),
                                                   "date": date, "head": config.name, "other_work": other_note})
    write_text_atomic(args.out / "ensemble.md", render(rows, command, describe(), date, config.name, other_note))
    print(f"wrote {args.out / 'ensemble.md'}")


if __name__ == "__main__":
    sys.exit(main())
