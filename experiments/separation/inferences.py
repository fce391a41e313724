"""The ways a run's held-out probabilities become buildings, named as the page shows them."""

from __future__ import annotations

from training import heldout
from zoo import separate

# How probabilities become buildings. "threshold": the served mask's 8-connected blobs;
# "split": blobs split by a watershed from cores >= 0.8 (zoo.separate's defaults, the rule's);
# "split-distance": from cores at least 3 px inside the mask (no probability used).
INFERENCES = {
    "threshold": lambda probs: probs >= heldout.FIXED,
    "split": lambda probs: separate.building_mask(probs, heldout.FIXED),
    "split-distance": lambda probs: separate.building_mask(probs, heldout.FIXED, seeds="distance"),
}
# A secondary inference, added after the served seed 0 was scored: "split-chosen" splits each
# held-out city with the setting of GRID (or none) whose mean building F1 (>= 4 m²) is best on
# the *other* two cities, so nothing is chosen on the city it scores.
GRID = {
    **{f"cores>={level:g}": {"seed_threshold": level} for level in (0.6, 0.7, 0.9)},
    **{f"inside>={radius:g}px": {"seeds": "distance", "core_radius": radius} for radius in (2.0, 5.0)},
    # Blobs without a core are no buildings: precision, where the false ones are unsure.
    **{
        f"cores>={level:g}, sure only": {"seed_threshold": level, "unsure": "drop"}
        for level in (0.7, 0.8, 0.9)
    },
}
for _name, _options in GRID.items():
    INFERENCES[_name] = lambda probs, options=_options: separate.building_mask(
        probs, heldout.FIXED, **options
    )
CHOSEN = "split-chosen"
ORACLE = "split-by-truth"  # a bound: each blob split by the true buildings (split_by_truth)
CANDIDATES = ("threshold", "split", "split-distance", *GRID)
SIZES = {"4m2": ">= 4 m²", "0": "all"}
