"""Choosing how to serve a recipe over several seeds' learning curves (`ablations.fit
--curve-from A --curve-from B`): the counts are pooled, and the choice follows them."""

from __future__ import annotations

import numpy as np
import pytest

from training import heldout
from training.crossval import curve_record, pooled_curve
from training.errors import UserFacingError
from training.folds import FoldResult

CITIES = ("dar", "kathmandu", "nairobi")
RECIPE = {"augmentation": "sensor", "loss": "bce_dice"}


def _counts(peak: int, slope: float, bonus: float = 0.0) -> np.ndarray:
    """(thresholds, 4) counts whose building IoU is 0.6 + bonus at THRESHOLDS[peak] and falls
    by `slope` per threshold step away from it (tp / (tp + fp + fn) = tp / 1000)."""
    steps = np.abs(np.arange(len(heldout.THRESHOLDS)) - peak)
    iou = np.clip(0.6 + bonus - slope * steps, 0.05, 1.0)
    return np.stack([iou * 1000, (1 - iou) * 500, (1 - iou) * 500, np.full_like(iou, 5000)], axis=-1).round()


def inference_choice(curve: dict, max_passes: float | None = None) -> tuple[int, float, str]:
    """(epochs, threshold, test-time views) of the serving option the curve chooses."""
    _, option = heldout.best_option(curve, max_passes)
    return option["epochs"], option["threshold"], option["tta"]


def _curve(peak: int, slope: float, seed: int, recipe=RECIPE) -> dict:
    results = [
        FoldResult(
            city,
            10,
            np.stack([_counts(peak, slope, bonus) for bonus in (-0.1, -0.05, 0.0)]),
            {"building_iou": [0.3, 0.4, 0.5]},
            5.0,
            model=None,
        )
        for city in CITIES
    ]
    curve = curve_record(results, 3, 15.0)
    curve.update(
        config={"width": 0.25},
        recipe=dict(recipe),
        relabel=None,
        fingerprint="data",
        seed=seed,
        variant=f"v_seed{seed}",
        flips={city: _counts(peak, slope, 0.02).tolist() for city in CITIES},
    )
    return curve


def test_pooled_seeds_serve_what_their_summed_counts_choose_not_the_first_seeds_luck():
    lucky = _curve(peak=3, slope=0.01, seed=0)  # best at 0.35, and gentle either side
    unlucky = _curve(peak=6, slope=0.05, seed=1)  # best at 0.50, and poor at 0.35
    assert inference_choice(lucky) == (3, 0.35, "flips")
    pooled = pooled_curve([lucky, unlucky], ["a.json", "b.json"])
    assert inference_choice(pooled) == (3, 0.5, "flips")
    city = CITIES[0]
    assert np.array_equal(
        np.asarray(pooled["folds"][city]["counts"]),
        np.asarray(lucky["folds"][city]["counts"]) + np.asarray(unlucky["folds"][city]["counts"]),
    )
    assert (
        pooled["views"]["flips"][city]
        == (np.asarray(lucky["flips"][city]) + np.asarray(unlucky["flips"][city])).tolist()
    )
    assert pooled["pooled"] == {"seeds": [0, 1], "from": ["a.json", "b.json"]}
    assert pooled["recipe"] == RECIPE and "seeds 0, 1" in pooled["chosen"]["rule"]


def test_only_one_recipes_curves_under_different_seeds_pool():
    with pytest.raises(UserFacingError, match="b.json.*'recipe'"):
        pooled_curve(
            [_curve(3, 0.01, 0), _curve(3, 0.01, 1, recipe={**RECIPE, "loss": "bce"})], ["a.json", "b.json"]
        )
    with pytest.raises(UserFacingError, match="different seeds"):
        pooled_curve([_curve(3, 0.01, 0), _curve(6, 0.05, 0)], ["a.json", "b.json"])
    without_flips = {**_curve(6, 0.05, 1), "flips": None}
    with pytest.raises(UserFacingError, match="b.json recorded other serving options than a.json"):
        pooled_curve([_curve(3, 0.01, 0), without_flips], ["a.json", "b.json"])
    more_views = {**_curve(6, 0.05, 1), "views": {"flips": [], "dihedral": []}}
    with pytest.raises(UserFacingError, match="b.json recorded other serving options"):
        pooled_curve([_curve(3, 0.01, 0), more_views], ["a.json", "b.json"])


def test_curves_named_views_pool_with_curves_that_kept_the_flips_alone():
    """Curves written before view sets had names kept "flips" only; a newer curve of another
    seed names its sets. Pooled, the flips of both are summed and the newer sets are chosen from."""
    old = _curve(peak=3, slope=0.01, seed=0)
    new = _curve(peak=6, slope=0.05, seed=1)
    new["views"] = {"flips": new.pop("flips")}
    pooled = pooled_curve([old, new], ["old.json", "new.json"])
    city = CITIES[0]
    assert (
        pooled["views"]["flips"][city]
        == (np.asarray(old["flips"][city]) + np.asarray(new["views"]["flips"][city])).tolist()
    )
    assert inference_choice(pooled) == (3, 0.5, "flips")
    dihedral = {city: _counts(6, 0.05, 0.1).tolist() for city in CITIES}  # better than the flips
    chosen = pooled_curve(
        [
            {**old, "views": {"flips": old["flips"], "dihedral": dihedral}},
            {**new, "views": {**new["views"], "dihedral": dihedral}},
        ],
        ["a.json", "b.json"],
    )
    assert inference_choice(chosen) == (3, 0.5, "dihedral")


def test_a_latency_budget_serves_the_best_view_set_that_fits_it():
    curve = _curve(peak=6, slope=0.05, seed=0)
    curve["views"] = {
        "flips": curve.pop("flips"),  # 0.62 at 0.5
        "rot180": {city: _counts(6, 0.05, 0.01).tolist() for city in CITIES},  # 0.61
        "dihedral": {city: _counts(6, 0.05, 0.05).tolist() for city in CITIES},
    }  # 0.65
    assert inference_choice(curve) == (3, 0.5, "dihedral")
    assert inference_choice(curve, max_passes=4) == (3, 0.5, "flips")
    assert inference_choice(curve, max_passes=2) == (3, 0.5, "rot180")
    assert inference_choice(curve, max_passes=1) == (3, 0.5, "none")
    # Scales count by their pixels: the transpose views at scales 1 and 0.5 cost 2 x 1.25 passes.
    curve["views"]["transpose@1+0.5"] = {city: _counts(6, 0.05, 0.04).tolist() for city in CITIES}
    curve["views"]["none@1+0.5+0.25"] = {city: _counts(6, 0.05, 0.03).tolist() for city in CITIES}
    _, option = heldout.best_option(curve, 2.5)
    assert (option["tta"], option["scales"]) == ("transpose", [1.0, 0.5])
    _, option = heldout.best_option(curve, 2)
    assert (option["tta"], option["scales"]) == ("none", [1.0, 0.5, 0.25])


def test_the_per_city_page_says_its_rows_are_pooled_over_seeds():
    from experiments.tutorial_baseline.cities import _pooled

    single = _curve(3, 0.01, 0)
    assert _pooled(single) == ""
    assert "seeds 0, 1" in _pooled(pooled_curve([single, _curve(6, 0.05, 1)], ["a.json", "b.json"]))
