"""Inference scales chosen per tile (ablations.evaluate.adaptive): the signal, the rule chosen
on the other cities, its cost in passes, and the report."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ablations.evaluate import adaptive


def city_tiles(rng, big: int, small: int) -> dict:
    """option -> (tiles, 3) counts for `big` tiles of large roofs and `small` of small houses:
    on large roofs the half-size pass finds more building, and 'far' (small scales) is right
    where 'near' misses; on small houses 'near' is right and 'far' smears."""
    def tiles(rows):
        return np.asarray(rows, np.int64)

    n = big + small
    roof = np.r_[np.ones(big, bool), np.zeros(small, bool)]
    full = tiles([[100, 10, 400] if r else [300, 20, 20] for r in roof])     # misses large roofs
    half = tiles([[450, 40, 50] if r else [250, 30, 70] for r in roof])      # finds them
    near = tiles([[150, 10, 350] if r else [320, 10, 20] for r in roof])
    far = tiles([[480, 30, 20] if r else [200, 200, 140] for r in roof])
    order = rng.permutation(n)
    return {"none": full[order], "none@0.5": half[order], "transpose": near[order], "none@0.5+0.25": far[order]}


@pytest.fixture
def tiles():
    rng = np.random.default_rng(0)
    cities = {"a": city_tiles(rng, 30, 70), "b": city_tiles(rng, 60, 40), "c": city_tiles(rng, 10, 90)}
    return {option: {city: counts[option] for city, counts in cities.items()} for option in cities["a"]}


def test_the_signal_is_how_much_more_building_the_half_size_pass_finds(tiles):
    r = adaptive.signal(tiles, "a")
    full = tiles["none"]["a"][:, :2].sum(1)
    half = tiles["none@0.5"]["a"][:, :2].sum(1)
    assert np.allclose(r, (half - full) / (half + full + 1))
    assert (r > 0.3).sum() == 30  # the large-roof tiles, and only they


def test_the_rule_sends_large_roofs_to_small_scales_and_beats_every_single_option(tiles):
    rows = adaptive.leave_one_city_out(tiles, max_passes=None)
    single = adaptive.leave_one_city_out(tiles, max_passes=None, single=True)
    for city, row in rows.items():
        assert (row["small"], row["large"]) == ("transpose", "none@0.5+0.25")
        expected = {"a": 0.30, "b": 0.60, "c": 0.10}[city]
        assert row["to_large"] == pytest.approx(expected)  # exactly the large-roof tiles
        assert row["building_iou"] > single[city]["building_iou"]
    assert all(r["small"] == r["large"] for r in single.values())


def test_the_held_out_city_never_chooses_its_own_rule(tiles):
    """Spoil city c's tiles for the rule: its own best would be one option everywhere, but the
    other cities still choose the rule for it."""
    spoiled = {o: dict(by_city) for o, by_city in tiles.items()}
    spoiled["none@0.5+0.25"]["c"] = spoiled["none@0.5+0.25"]["c"] * np.array([0, 1, 1])  # far finds nothing in c
    assert adaptive.leave_one_city_out(spoiled, None)["c"]["large"] == "none@0.5+0.25"
    assert adaptive.choose_rule(spoiled, ["c"], None)[1] != "none@0.5+0.25"


def test_a_rule_costs_every_pass_it_may_run_and_the_budget_holds():
    assert adaptive.passes_of_rule("none", "none@0.5+0.25") == pytest.approx(1.3125)  # the signal's two passes
    assert adaptive.passes_of_rule("transpose@0.5", "transpose@0.5") == pytest.approx(0.5)  # one option: no signal
    assert adaptive.passes_of_rule("none@1+0.5", "none@0.5+0.25") == pytest.approx(1 + 0.25 + 0.0625)
    assert adaptive.passes_of_rule("transpose@1+0.5", "none") == pytest.approx(2.5)
    # A tile runs the signal and one option: the costlier option decides, not both together.
    assert adaptive.passes_of_rule("transpose", "none@0.5+0.25") == pytest.approx(2.25)  # transpose 2 + the half pass


def test_within_a_budget_no_rule_above_it_is_chosen(tiles):
    for row in adaptive.leave_one_city_out(tiles, max_passes=1.5).values():
        assert row["passes"] <= 1.5 and "transpose" not in (row["small"], row["large"])


def test_the_report_reads_curves_and_refuses_one_without_tile_counts(tmp_path, tiles, capsys):
    paths = []
    for seed in (0, 1):
        path = tmp_path / f"v_seed{seed}" / "curve.json"
        path.parent.mkdir()
        path.write_text(json.dumps({"seed": seed, "tile_counts": {
            o: {c: counts.tolist() for c, counts in by_city.items()} for o, by_city in tiles.items()}}))
        paths.append(path)
    out = tmp_path / "adaptive.md"
    assert adaptive.main([a for p in paths for a in ("--curve-from", str(p))] + ["--out", str(out), "--reference", "none"]) == 0
    text = out.read_text()
    assert "| rule, any cost" in text and "| single option, within the budget" in text
    assert "| none for every tile (not chosen here)" in text
    assert adaptive.main(["--curve-from", str(paths[0]), "--out", str(out), "--reference", "transpose"]) == 0
    assert "| transpose for every tile (not chosen here)" in out.read_text()
    assert adaptive.main(["--curve-from", str(paths[0]), "--out", str(out), "--reference", "dihedral"]) == 2
    pooled = adaptive.pooled_tiles([json.loads(p.read_text()) for p in paths])
    assert pooled["none"]["a"].shape == (200, 3)  # two seeds' tiles side by side
    old = tmp_path / "old" / "curve.json"
    old.parent.mkdir()
    old.write_text(json.dumps({"views": {}}))
    assert adaptive.main(["--curve-from", str(old)]) == 2 and str(old) in capsys.readouterr().err
    two_scale = tmp_path / "two_scale" / "curve.json"  # its passes are not the rule's to count
    two_scale.parent.mkdir()
    two_scale.write_text(json.dumps({**json.loads(paths[0].read_text()), "config": {"scale_fusion": "attention"}}))
    assert adaptive.main(["--curve-from", str(two_scale), "--out", str(out)]) == 2
    assert "two-scale decoder" in capsys.readouterr().err
