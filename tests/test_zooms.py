"""Serving options scored per zoom level (ground resolution), and the zoom-aware rule."""
from __future__ import annotations

import json

import numpy as np

from ablations import heldout
from ablations.evaluate import zooms as zooms_report
from ablations.evaluate.transfer import counts_by_zoom
from ablations.folds import threshold_counts

T = len(heldout.THRESHOLDS)


def counts(tp, fp, fn, tn=1000):
    """Counts that are the same at every threshold."""
    return np.tile([tp, fp, fn, tn], (T, 1))


def test_counts_by_zoom_split_the_tiles_and_add_up_to_the_whole():
    rng = np.random.default_rng(0)
    probs, masks = rng.random((6, 8, 8)), rng.integers(0, 2, (6, 8, 8))
    zooms = np.array([21, 19, 21, 20, 19, 21])
    split = counts_by_zoom(probs, masks, zooms)
    assert list(split) == ["19", "20", "21"]  # JSON keys
    assert np.array_equal(split["21"], threshold_counts(probs[[0, 2, 5]], masks[[0, 2, 5]]))
    assert np.array_equal(np.sum([np.asarray(c) for c in split.values()], axis=0), threshold_counts(probs, masks))


def by_zoom_where_small_scales_suit_fine_tiles():
    """At zoom 21 'half' is better in every city, at zoom 19 'whole' is; city c alone disagrees
    at zoom 19, which must not decide its own choice."""
    good, bad = counts(80, 10, 10), counts(40, 30, 30)
    return {
        "whole": {"a": {"19": good, "21": bad}, "b": {"19": good, "21": bad}, "c": {"19": bad, "21": bad}},
        "half": {"a": {"19": bad, "21": good}, "b": {"19": bad, "21": good}, "c": {"19": good, "21": good}},
    }


def test_each_zoom_is_served_the_option_the_other_cities_score_best_at_it():
    by_zoom = by_zoom_where_small_scales_suit_fine_tiles()
    served, chosen = heldout.zoom_aware(by_zoom)
    assert chosen["a"] == {"19": "whole", "21": "half"}
    assert chosen["c"] == {"19": "whole", "21": "half"}  # its own preference at 19 (half) is not asked
    assert np.array_equal(served["a"], counts(160, 20, 20, 2000))
    assert np.array_equal(served["c"], counts(120, 40, 40, 2000))  # the other cities' choice costs it at 19


def test_the_zoom_report_sets_the_rule_against_the_best_single_option(tmp_path):
    by_zoom = by_zoom_where_small_scales_suit_fine_tiles()
    curves = []
    for seed in (0, 1):
        curve = {"variant": "v", "seed": seed,
                 "views_by_zoom": {o: {c: {z: np.asarray(n).tolist() for z, n in zs.items()} for c, zs in cs.items()}
                                   for o, cs in by_zoom.items()}}
        path = tmp_path / f"v_seed{seed}" / "curve.json"
        path.parent.mkdir()
        path.write_text(json.dumps(curve))
        curves.append(path)
    out = tmp_path / "zooms.md"
    assert zooms_report.main([a for p in curves for a in ("--curve-from", str(p))] + ["--out", str(out)]) == 0
    text = out.read_text()
    aware, _ = heldout.zoom_aware(zooms_report.pooled_by_zoom([json.loads(p.read_text()) for p in curves]))
    mean = heldout.mean_of(heldout.at_threshold(aware))["building_iou"]
    rule = next(line for line in text.splitlines() if line.startswith("| each zoom its option"))
    everywhere = next(line for line in text.splitlines() if line.startswith("| one option for every city"))
    left_out = next(line for line in text.splitlines() if line.startswith("| one option per city, chosen on the other"))
    assert f" {mean:.3f} " in rule and " 0.733 " in rule  # zoom by zoom beats any one option
    assert "(half)" in everywhere and " 0.667 " in everywhere
    # a and b tie for c (each option is 0.6 there), so c gets the first, 'whole' (0.4); b and c choose half for a.
    assert " 0.533 " in left_out
    assert "seeds 0, 1" in text


def test_a_curve_without_counts_per_zoom_is_refused_by_name(tmp_path, capsys):
    path = tmp_path / "old" / "curve.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"views": {"flips": {}}}))
    assert zooms_report.main(["--curve-from", str(path)]) == 2
    assert str(path) in capsys.readouterr().err
