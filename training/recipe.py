"""THE served recipe, and the two small types it is made of (how a decoder trains; how much).

`SERVED` is the one place the shipped model's decoder, augmentation, schedule and serving
option are written. The fit trains it, the benchmarks load it, the docs describe it and
`tests/test_fit.py` checks it against the cross-validated curve that chose it
(`results/final/curve.json`). Change the served model here, then rerun
`python -m training.fit --curve` to measure it. No TensorFlow import: reports read it cheaply.
"""

from __future__ import annotations

import dataclasses

from data.instances import TARGETS
from zoo.config import DecoderConfig

# How an epoch draws its tiles: "tiles", each tile once; "areas", each area (city) equally
# often, so the largest city of the pool does not decide what the decoder learns.
SAMPLINGS = ("tiles", "areas")
SEED = 0  # every fold and the final model start from the decoder this seed draws


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How a decoder is trained: everything except the architecture."""

    loss: str = "bce_dice"
    dice_weight: float = 1.0
    augmentation: str = "flips"
    learning_rate: float = 1e-3
    batch_size: int = 16
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0  # label-noise remedies (zoo.losses.SegmentationLoss)
    edge_band: int = 0
    # Encoded copies per training tile (copy 0 the original, the rest augmented; each epoch
    # draws one copy per tile). None: the budget's.
    augmented_copies: int | None = None
    sampling: str = "tiles"  # SAMPLINGS
    # What the decoder learns from each tile (data.instances.TARGETS): "mask", the building mask;
    # "separation" ("separation_wide"), touching buildings parted and the loss weighted by the
    # U-Net separation map (large on the thin ground between two buildings; sigma 5 or 12 px),
    # the buildings then split before they are counted (zoo.separate). Issue 33;
    # experiments/separation/README.md.
    target: str = "mask"

    def __post_init__(self):
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"Recipe.sampling must be one of {', '.join(SAMPLINGS)}, got {self.sampling!r}")
        if self.target not in TARGETS:
            raise ValueError(f"Recipe.target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if self.augmented_copies is not None and self.augmented_copies < 2:
            raise ValueError(
                "Recipe.augmented_copies must be at least 2 (the original and one augmented), "
                f"got {self.augmented_copies}"
            )

    def copies(self, budget: Budget) -> int:
        """Copies to encode: one when the augmentation is "none", else the recipe's or the budget's."""
        if self.augmentation == "none":
            return 1
        return self.augmented_copies or budget.augmented_copies

    def to_dict(self) -> dict:
        fields = dataclasses.asdict(self)
        # Recipes recorded before these fields existed compare equal.
        if fields["augmented_copies"] is None:
            del fields["augmented_copies"]
        if fields["sampling"] == "tiles":
            del fields["sampling"]
        if fields["target"] == "mask":
            del fields["target"]
        return fields


@dataclasses.dataclass(frozen=True)
class Budget:
    """How much of everything a run spends: tile size, images, epochs, copies."""

    name: str
    size: int  # tile side the model trains and is scored at
    max_images: int | None  # all images when None
    epochs: int  # a study trial's and the curve's longest run; the fit trains SERVED.epochs
    augmented_copies: int  # encoded copies per training image (copy 0 is the original)
    search_trials: int  # trials of the Bayesian 'hparams' study
    synthetic_images: int  # when no --data is given
    default_seeds: int = 1
    # Eager training skips tracing each trial's train step: faster when a trial is a few
    # tiny steps (the smoke budget), slower for real ones.
    eager: bool = False
    latency_repeats: int = 10


BUDGETS = {
    "smoke": Budget("smoke", size=64, max_images=48, epochs=2, augmented_copies=2,
                    search_trials=3, synthetic_images=48, eager=True, latency_repeats=3),
    "standard": Budget("standard", size=256, max_images=None, epochs=4, augmented_copies=2,
                       search_trials=10, synthetic_images=400),
    "full": Budget("full", size=256, max_images=None, epochs=30, augmented_copies=8,
                   search_trials=40, synthetic_images=2000, default_seeds=3),
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ServedRecipe:
    """A decoder, how it trains, for how long, and how it is served: one shippable model."""

    decoder: DecoderConfig
    training: Recipe
    epochs: int  # epochs trained, of a cosine schedule `schedule_epochs` long
    schedule_epochs: int
    threshold: float  # a pixel at or above this probability is building
    tta: str  # test-time views (zoo.predict.TTA_VIEWS)
    scales: tuple[float, ...]  # the image is also predicted at these sizes, probabilities averaged
    curve: str  # the cross-validated curve it was chosen on, relative to the repository root

    def serving(self) -> dict:
        """What the saved model's metadata records as its inference settings."""
        return {"threshold": self.threshold, "tta": self.tta, "scales": list(self.scales)}


# Why each choice: docs/unet.md. In short, chosen by cross-validation by city (each of the
# three cities held out in turn), three seeds pooled (results/EXPERIMENTS.md, steps 10-34):
# - the decoder: nearest-neighbour upsampling, attention-gated skips, two convs a level at a
#   quarter of the segmentation_models widths, stopping at stride 2 (the last full-resolution
#   level cost 37 % of a step for no held-out gain; the logits are resized bilinearly);
# - `sensor_shrink`: flips and quarter turns, another camera's colour, blur and noise, and 3
#   tiles in 10 seen 2-4x farther away (the cities differ in ground resolution);
# - 3 epochs of a 3-epoch cosine schedule (the curve's first epoch within 0.005 of its best);
# - threshold 0.5 and each image also predicted at half size (the best option within the
#   latency budget of two full-size passes a request).
# Every field is written out, defaults included, so this reads as the whole recipe.
SERVED = ServedRecipe(
    decoder=DecoderConfig(
        upsampler="nearest", skip="attention", conv="double", width=0.25, head="linear", output_stride=2
    ),
    training=Recipe(
        loss="bce_dice",  # binary cross-entropy + Dice
        dice_weight=1.0,
        augmentation="sensor_shrink",
        learning_rate=1e-3,  # AdamW, on the cosine schedule below
        batch_size=16,
        weight_decay=1e-4,
        label_smoothing=0.0,
        edge_band=0,
        augmented_copies=None,  # the budget's: each tile encoded twice (original + one augmented)
        sampling="tiles",
        target="mask",
    ),
    epochs=3,
    schedule_epochs=3,
    threshold=0.5,
    tta="none",
    scales=(1.0, 0.5),
    curve="results/final/curve.json",
)
