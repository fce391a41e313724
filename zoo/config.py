"""The one description of a decoder variant.

Tuners map hyperparameters onto it, tables print its fields and the saved model's
metadata stores it, so adding a field here makes it visible everywhere at once.
This module imports no deep-learning code, so reports and the CLI can use it cheaply.
"""

from __future__ import annotations

import dataclasses

UPSAMPLERS = ("transpose", "bilinear", "nearest", "subpixel")
SKIP_MERGES = ("concat", "add", "attention", "none")
CONV_BLOCKS = ("double", "separable")
# How the last decoder level ends before the 1x1 logit. "relu": conv + BN + ReLU like every
# other level; with few channels all of them can be zero at once over most of an image,
# leaving only the logit's bias (a constant probability floor that no threshold below it can
# cross). "linear": the last conv + BN without ReLU, so the logit always depends on the pixels.
HEADS = ("linear", "relu")
# Where the decoder stops: 1 = a last level at full resolution (the U-Net as drawn); 2 = the
# logits at stride 2, resized bilinearly to full size. The full-resolution level holds a few
# channels over 4x the pixels of any other: 37% of a training step (results/step_profile.md),
# for outlines that the stride-2 taps already place. (At inference it costs little: about 1 ms
# of a 256 px LiteRT forward pass.)
OUTPUT_STRIDES = (1, 2)
# Fields that named research options (per-image standardisation, the wide taps, two-scale
# fusion, MixStyle; results/EXPERIMENTS.md steps 19-35) with the value every served model had:
# a config recorded with that value still reads, any other is refused by name.
RETIRED_FIELDS = {"preprocess": "scale", "taps": "narrow", "scale_fusion": "none", "feature_mixing": "none"}

# Filters per decoder level, coarse to fine, at width 1.0 (the segmentation_models U-Net).
BASE_FILTERS = (256, 128, 64, 32, 16)
# The TensorFlow segmentation tutorial's pix2pix decoder, used as the reference recipe.
TUTORIAL_FILTERS = (512, 256, 128, 64)


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    upsampler: str = "bilinear"
    skip: str = "concat"
    conv: str = "double"
    width: float = 0.5
    head: str = "linear"
    output_stride: int = 1

    def __post_init__(self):
        _check_choice("upsampler", self.upsampler, UPSAMPLERS)
        _check_choice("skip", self.skip, SKIP_MERGES)
        _check_choice("conv", self.conv, CONV_BLOCKS)
        _check_choice("head", self.head, HEADS)
        if type(self.output_stride) is not int:  # 2.0 would pass the choice and break `filters`
            raise ValueError(f"DecoderConfig.output_stride must be an int, got {self.output_stride!r}")
        _check_choice("output_stride", self.output_stride, OUTPUT_STRIDES)
        if not 0.05 <= float(self.width) <= 4.0:
            raise ValueError(f"DecoderConfig.width must be in [0.05, 4], got {self.width!r}")

    @property
    def filters(self) -> tuple[int, ...]:
        """Filters of each decoder level, coarse to fine (strides 16 .. output_stride)."""
        levels = BASE_FILTERS[: len(BASE_FILTERS) - (self.output_stride.bit_length() - 1)]
        # At least 4 filters a level, and a multiple of 4 so separable convs stay aligned.
        return tuple(max(4, int(round(f * self.width / 4)) * 4) for f in levels)

    @property
    def name(self) -> str:
        suffix = "" if self.head == "linear" else f"-{self.head}"
        suffix += "" if self.output_stride == 1 else f"-os{self.output_stride}"
        return f"{self.upsampler}-{self.skip}-{self.conv}-w{self.width:g}{suffix}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, fields: dict) -> DecoderConfig:
        fields = dict(fields)
        for field, only_value in RETIRED_FIELDS.items():
            value = fields.pop(field, only_value)
            if value != only_value:
                raise ValueError(
                    f"DecoderConfig.{field}={value!r} was a research option, retired "
                    "(git tag research-2026-12 has it)"
                )
        unknown = set(fields) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown DecoderConfig fields: {sorted(unknown)}")
        # Configs recorded before `head` existed were all built with a ReLU head.
        return cls(**{"head": "relu", **fields})


def _check_choice(field: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"DecoderConfig.{field} must be one of {choices}, got {value!r}")
