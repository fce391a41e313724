"""A probe, not a served option: the frozen encoder's shallow BatchNormalization layers
normalising each image by its own statistics, run through the transfer harness unchanged.

    python -m ablations.evaluate.image_statistics [--depth shallow] -- --data ../shared/data/oam_buildings --variants os2_shrink --views transpose --scales 1+0.5 --out results/image_statistics

ImageNet's BatchNormalization statistics are one fixed mean and variance per channel. Each city's
look (sensor, light, haze) shifts what the first layers see, and the shifted activations carry
through the frozen encoder. Here the chosen layers use each image's own per-channel mean and
variance over its pixels (instance normalisation, with ImageNet's learned scale and offset), so a
city's look is taken out where it enters, as style-normalising networks (IBN-Net) do. `--depth
shallow`: the stem and blocks 0-2, everything that feeds the stride-2 and stride-4 taps; `all`:
every layer. Everything after `--` is ablations.evaluate.transfer's arguments (`--out` defaults
to results/image_statistics, not the harness's results/transfer). The encoder's name
goes into the run's fingerprint, so the harness refuses to mix its curves with the served
encoder's in one `--out`, and its encodings are cached apart; OUT/PROBE.md says which were used.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import keras
from keras import ops

from zoo.files import write_text_atomic

# Layer-name prefixes of MobileNetV2's stem and first three blocks (up to the stride-4 tap).
SHALLOW_PREFIXES = ("bn_Conv1", "expanded_conv_", "block_1_", "block_2_")
DEPTHS = ("shallow", "all")
DEFAULT_OUT = Path("results/image_statistics")


class PerImageNormalization(keras.layers.Layer):
    """BatchNormalization's scale and offset over each image's own per-channel statistics."""

    def __init__(self, epsilon: float = 1e-3, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def build(self, input_shape):
        channels = (input_shape[-1],)
        self.gamma = self.add_weight(shape=channels, initializer="ones", trainable=False, name="gamma")
        self.beta = self.add_weight(shape=channels, initializer="zeros", trainable=False, name="beta")

    def call(self, inputs, training=None, mask=None):  # BatchNormalization's call signature
        mean, variance = ops.moments(inputs, axes=[1, 2], keepdims=True)
        return self.gamma * (inputs - mean) * ops.rsqrt(variance + self.epsilon) + self.beta


def per_image_statistics(encoder: keras.Model, depth: str = "shallow") -> keras.Model:
    """A copy of the frozen `encoder` whose BatchNormalization layers at `depth` (DEPTHS) use
    each image's statistics; every weight copied, the rest unchanged."""
    if depth not in DEPTHS:
        raise ValueError(f"depth must be one of {DEPTHS}, got {depth!r}")

    def chosen(layer) -> bool:
        return isinstance(layer, keras.layers.BatchNormalization) and (
            depth == "all" or layer.name.startswith(SHALLOW_PREFIXES))

    copy = keras.models.clone_model(encoder, clone_function=lambda layer: (
        PerImageNormalization(layer.epsilon, name=layer.name) if chosen(layer)
        else layer.__class__.from_config(layer.get_config())))
    for layer in copy.layers:
        if not layer.weights:
            continue  # the input layer, renamed by the clone, and layers without weights
        source = encoder.get_layer(layer.name)
        if isinstance(layer, PerImageNormalization):
            layer.gamma.assign(source.gamma)
            layer.beta.assign(source.beta)
        else:
            layer.set_weights(source.get_weights())
    copy.trainable = False
    return copy


def parse_args(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    ours, harness = argv[:split], argv[split + 1:]
    parser = argparse.ArgumentParser(prog="python -m ablations.evaluate.image_statistics", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", default="shallow", choices=DEPTHS)
    args = parser.parse_args(ours)
    from ablations.evaluate import transfer

    harness_args = transfer.parse_args(harness)
    if not any(arg == "--out" or arg.startswith("--out=") for arg in harness):
        harness_args.out = DEFAULT_OUT  # never the served encoder's default folder
    return args, harness_args


def main(argv=None) -> int:
    from ablations.errors import exit_status
    from ablations.evaluate import transfer
    from ablations.pipeline import load_encoder

    args, harness = parse_args(argv)

    def run() -> None:
        harness.out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(harness.out / "PROBE.md", (
            f"# A probe: encoder BatchNormalization at depth `{args.depth}` on each image's statistics\n\n"
            "Every curve in this folder was trained and scored on features from "
            "`ablations.evaluate.image_statistics.per_image_statistics(encoder, "
            f"{args.depth!r})`, not the served encoder; the variant names are the harness's.\n"))
        transfer.run(harness, transfer.EncoderProbe(
            f"image-statistics-{args.depth}",
            lambda taps: per_image_statistics(load_encoder(harness.weights, taps), args.depth)))

    return exit_status(run)


if __name__ == "__main__":
    sys.exit(main())
