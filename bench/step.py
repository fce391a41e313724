"""`python -m bench.step [--size 256] [--batch 16] [--repeats 3] [--output-stride 1] [--out results]`

Where a training step of the served decoder (`training.recipe.SERVED`) goes, stopping at
`--output-stride` (1, full resolution, by default; 2 stops at stride 2 and resizes its
logits, as served): each decoder layer's forward and backward pass timed alone, on the input
shapes it meets in a step (batch `--batch` of `--size` px tiles, random features shaped like
the encoder's taps; no time depends on their values), then summed by decoder level and by
kind of layer, beside the whole step as `fit` runs it (the steady epoch, tracing excluded).
Layers timed alone miss the fusion and the overlap of a whole step, so their sum is a guide
to the shares, not the step's time.
Writes OUT/step_profile.md and OUT/step_profile.json (OUT/step_profile_os2.* at stride 2).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import sys
import time
from pathlib import Path

import numpy as np
from tabulate import tabulate

from training.machine import describe
from training.recipe import SERVED
from zoo.config import OUTPUT_STRIDES
from zoo.files import write_json_atomic, write_text_atomic


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.step", description=__doc__.split("\n\n")[1])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each layer (median)")
    parser.add_argument(
        "--output-stride",
        type=int,
        default=1,
        choices=OUTPUT_STRIDES,
        help="where the decoder stops (zoo.config.OUTPUT_STRIDES)",
    )
    parser.add_argument("--out", type=Path, default=Path("results"))
    return parser.parse_args(argv)


def layer_inputs(decoder, taps: list) -> dict:
    """Every layer's concrete input in one forward pass: {layer name: tensor or list}."""
    import keras  # deferred: TensorFlow loads when profiling starts, not for --help

    layers = [layer for layer in decoder.layers if not isinstance(layer, keras.layers.InputLayer)]
    probe = keras.Model(decoder.inputs, [layer.input for layer in layers])
    return {layer.name: value for layer, value in zip(layers, probe(taps, training=False))}


def time_layer(layer, inputs, repeats: int) -> float:
    """Median ms of the layer's forward pass and its gradients (inputs and weights)."""
    import tensorflow as tf  # deferred: TensorFlow loads when profiling starts, not for --help

    flat = [tf.identity(t) for t in tf.nest.flatten(inputs)]

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch(flat)
            out = layer(tf.nest.pack_sequence_as(inputs, flat), training=True)
            total = tf.add_n([tf.reduce_sum(t) for t in tf.nest.flatten(out)])
        return tape.gradient(total, flat + layer.trainable_variables)

    step()  # trace
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return 1000 * float(np.median(times))


def fit_step_ms(decoder, taps: list, size: int, batch: int) -> float:
    """ms a step as `fit` runs it: the steady epoch over four batches, after a traced one."""
    import keras  # deferred: TensorFlow loads when profiling starts, not for --help

    from zoo.losses import SegmentationLoss
    from zoo.metrics import keras_metrics

    rng = np.random.default_rng(1)
    inputs = [np.concatenate([t] * 4) for t in taps]
    targets = (rng.random((4 * batch, size, size, 1)) > 0.8).astype("float32")
    decoder.compile(
        keras.optimizers.AdamW(1e-3),
        SegmentationLoss("bce_dice"),
        metrics=[m for m in keras_metrics() if m.name in ("building_iou", "f1")],
    )
    decoder.fit(inputs, targets, batch_size=batch, epochs=1, verbose=0)
    started = time.perf_counter()
    decoder.fit(inputs, targets, batch_size=batch, epochs=1, verbose=0)
    return 1000 * (time.perf_counter() - started) / 4


def profile(size: int, batch: int, repeats: int, output_stride: int = 1) -> dict:
    """Every layer of the served decoder stopping at `output_stride`, timed alone, and a whole step."""
    from zoo import unet  # deferred: TensorFlow loads when profiling starts, not for --help
    from zoo.encoder import build_encoder

    config = dataclasses.replace(SERVED.decoder, output_stride=output_stride)
    decoder = unet.decoder_of(unet.build(config, encoder=build_encoder(None)))
    rng = np.random.default_rng(0)
    taps = [
        rng.standard_normal((batch, size // s, size // s, t.shape[-1])).astype("float32")
        for s, t in zip(unet.STRIDES, decoder.inputs)
    ]
    rows = []
    for name, inputs in layer_inputs(decoder, taps).items():
        layer = decoder.get_layer(name)
        shape = tuple(np.shape(inputs[0] if isinstance(inputs, (list, tuple)) else inputs))
        rows.append(
            {
                "layer": name,
                "kind": type(layer).__name__,
                "input": list(shape),
                "ms": time_layer(layer, inputs, repeats),
            }
        )
    return {
        "config": config.name,
        "size": size,
        "batch": batch,
        "repeats": repeats,
        "layers": rows,
        "fit_step_ms": fit_step_ms(decoder, taps, size, batch),
    }


def level_of(layer_name: str) -> str:
    """ "dec3_s2_block_a_conv" -> "dec3_s2"; the head and anything else keep their own name."""
    parts = layer_name.split("_")
    return "_".join(parts[:2]) if parts[0].startswith("dec") and len(parts) > 2 else layer_name


def _finest_level(run: dict) -> str:
    """ "dec4_s1" at full resolution, "dec3_s2" for a decoder that stops at stride 2."""
    levels = {level_of(r["layer"]) for r in run["layers"] if r["layer"].startswith("dec")}
    return max(levels, key=lambda level: int(level.split("_")[0][3:]))


def report(run: dict) -> str:
    total = sum(r["ms"] for r in run["layers"])
    by_level, by_kind = collections.Counter(), collections.Counter()
    for r in run["layers"]:
        by_level[level_of(r["layer"])] += r["ms"]
        by_kind[r["kind"]] += r["ms"]
    share = lambda ms: f"{ms:.0f} ({100 * ms / total:.0f}%)"  # noqa: E731
    top = sorted(run["layers"], key=lambda r: -r["ms"])[:12]
    return "\n".join(
        [
            "# Where a decoder training step goes",
            "",
            f"`{run['command']}` on {run['machine']}, {run['date']}, CPU only. Decoder "
            f"`{run['config']}`, batch {run['batch']} of {run['size']} px tiles; each "
            f"layer's forward and backward pass timed alone (median of {run['repeats']}), ms.",
            "",
            f"- **A whole step as `fit` runs it: {run['fit_step_ms']:.0f} ms** "
            f"({1000 * run['batch'] / run['fit_step_ms']:.1f} tiles/s).",
            f"- Sum of the layers timed alone: {total:.0f} ms (no fusion or overlap, so a guide to "
            "the shares, not the step's time).",
            "",
            f"## By decoder level (dec0 is the deepest, at stride 16; {_finest_level(run)} the finest)",
            "",
            tabulate(
                [(k, share(v)) for k, v in sorted(by_level.items(), key=lambda kv: -kv[1])],
                headers=["level", "ms (share)"],
                tablefmt="github",
            ),
            "",
            "## By kind of layer",
            "",
            tabulate(
                [(k, share(v)) for k, v in by_kind.most_common()],
                headers=["kind", "ms (share)"],
                tablefmt="github",
            ),
            "",
            "## The slowest layers",
            "",
            tabulate(
                [(r["layer"], r["kind"], "x".join(map(str, r["input"][1:])), f"{r['ms']:.1f}") for r in top],
                headers=["layer", "kind", "input (H x W x C)", "ms"],
                tablefmt="github",
            ),
            "",
        ]
    )


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    run = {
        **profile(args.size, args.batch, args.repeats, args.output_stride),
        "machine": describe(),
        "command": " ".join(["python -m bench.step", *argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "step_profile" if args.output_stride == 1 else f"step_profile_os{args.output_stride}"
    write_json_atomic(args.out / f"{stem}.json", run)
    write_text_atomic(args.out / f"{stem}.md", report(run))
    print(report(run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
