"""What transfers: per-image standardisation, the label-noise losses, style augmentation from
other cities, and `python -m ablations.evaluate.transfer` run as a real subprocess."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ablations import heldout
from test_ablations import REPO, cache_home, weights_flag  # noqa: F401  (cache_home: a fixture)
from test_cv import run_fit


def _model(preprocess: str):
    import keras

    from zoo import unet
    from zoo.config import DecoderConfig

    keras.utils.set_random_seed(0)
    return unet.build(DecoderConfig(width=0.25, preprocess=preprocess), weights=None)


def _scene(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(40, 200, (1, 64, 64, 3)).astype(np.float32)


def test_a_standardized_model_sees_a_recoloured_city_as_the_same_city():
    image = _scene()
    # Another camera: per-channel gain and offset (colour cast, brightness, contrast).
    recoloured = np.clip(image * np.array([0.7, 0.9, 1.2]) + np.array([30, 10, -20]), 0, 255)
    standardized, scaled = _model("standardize"), _model("scale")
    same = np.abs(np.asarray(standardized(image)) - np.asarray(standardized(recoloured))).max()
    differs = np.abs(np.asarray(scaled(image)) - np.asarray(scaled(recoloured))).max()
    assert same < 1e-3 < differs


def test_a_flat_tile_is_not_blown_up_into_structure():
    from zoo.preprocessing import PerImageStandardization

    flat = np.full((1, 32, 32, 3), 120.0, np.float32)
    flat[0, 0, 0] = 122.0  # two levels of noise on a roof filling the tile
    out = np.asarray(PerImageStandardization()(flat))
    assert np.abs(out).max() < 0.2 and np.abs(out).max() > 0


def test_a_standardized_model_saves_and_loads_with_its_preprocessing(tmp_path):
    from zoo import saving

    model = _model("standardize")
    path = saving.save(model, tmp_path / "m.keras", {"name": "t"})
    loaded, _ = saving.load(path)
    image = _scene(1)
    assert loaded.get_layer("preprocess").__class__.__name__ == "PerImageStandardization"
    np.testing.assert_allclose(np.asarray(loaded(image)), np.asarray(model(image)), atol=1e-5)


def test_legacy_configs_load_with_the_fixed_scaling():
    from zoo.config import DecoderConfig

    legacy = DecoderConfig.from_dict({"upsampler": "nearest", "skip": "add", "conv": "double", "width": 0.25})
    assert legacy.preprocess == "scale" and "standardize" not in legacy.name
    assert DecoderConfig(preprocess="standardize").name.endswith("-standardize")
    with pytest.raises(ValueError, match="preprocess"):
        DecoderConfig(preprocess="whiten")


def _square_label():
    label = np.zeros((1, 16, 16, 1), np.float32)
    label[0, 4:12, 4:12] = 1
    return label


def test_the_edge_band_forgives_an_outline_shifted_within_the_band():
    from zoo.losses import SegmentationLoss

    label = _square_label()
    shifted = np.roll(label, 1, axis=2)  # the roof one pixel right of its outline
    logits = lambda mask: (mask * 2 - 1) * 8.0  # noqa: E731  confident predictions
    plain, banded = SegmentationLoss("bce_dice"), SegmentationLoss("bce_dice", edge_band=1)
    assert float(plain(label, logits(shifted))) > float(plain(label, logits(label))) + 0.05
    assert float(banded(label, logits(shifted))) == pytest.approx(float(banded(label, logits(label))), abs=1e-3)


def test_label_smoothing_makes_a_confidently_wrong_label_cost_less():
    from zoo.losses import SegmentationLoss

    label = _square_label()
    wrong = (1 - label) * 16.0 - 8.0  # confidently the opposite of the label everywhere
    plain, smooth = SegmentationLoss("bce"), SegmentationLoss("bce", label_smoothing=0.2)
    assert float(smooth(label, wrong)) < float(plain(label, wrong)) - 0.5
    config = smooth.get_config()
    assert (config["label_smoothing"], config["edge_band"]) == (0.2, 0)
    with pytest.raises(ValueError):
        SegmentationLoss("bce", label_smoothing=1.0)


def test_a_style_augmentation_borrows_the_reference_look_and_keeps_the_mask():
    from ablations.data import augment

    rng = np.random.default_rng(0)
    image = rng.integers(150, 256, (64, 64, 3), dtype=np.uint8)  # a bright city
    mask = (rng.random((64, 64)) > 0.7).astype(np.uint8)
    dark = rng.integers(0, 60, (64, 64, 3), dtype=np.uint8)  # another city's dark imagery
    pipeline = augment.augmentation("sensor_style", seed=0)
    means = [augment.augment_pair(pipeline, image, mask, style=dark)[0].mean() for _ in range(12)]
    assert np.median(means) < image.mean() - 40  # most copies took on the dark look
    assert "sensor_style" not in augment.AUGMENTATIONS  # studies cannot use it without references


def test_style_references_never_come_from_the_held_out_city():
    from ablations.data.augment import style_source
    from ablations.folds import area_folds

    areas = np.array(["a"] * 6 + ["b"] * 4 + ["c"] * 5, dtype=object)
    for fold in area_folds(list(areas)):
        style_of = style_source(areas, fold.train_index, seed=0)
        for n, tile in enumerate(fold.train_index):
            source = areas[style_of(n)]
            assert source != fold.val_area and source != areas[tile]


def test_each_city_is_scored_at_the_threshold_the_other_cities_chose():
    from ablations.heldout import leave_one_out

    def counts_peaking_at(threshold):  # building IoU 0.9 at one threshold, 0.1 elsewhere
        return _counts_peaking_at(threshold, iou=0.9)

    rows = leave_one_out({"a": counts_peaking_at(0.3), "b": counts_peaking_at(0.6),
                          "c": counts_peaking_at(0.6), "d": counts_peaking_at(0.6)})
    assert rows["a"]["threshold"] == pytest.approx(0.6) and rows["a"]["building_iou"] == pytest.approx(0.1)
    assert rows["b"]["threshold"] == pytest.approx(0.6) and rows["b"]["building_iou"] == pytest.approx(0.9)


def _counts_peaking_at(threshold: float, iou: float = 0.8) -> np.ndarray:
    """(thresholds, 4) counts with building IoU `iou` at one threshold and 0.1 elsewhere."""
    from ablations.heldout import THRESHOLDS

    rows = np.tile([10, 45, 45, 900], (len(THRESHOLDS), 1))
    miss = int(round(100 * (1 - iou) / 2))
    rows[np.isclose(THRESHOLDS, threshold)] = [100 - 2 * miss, miss, miss, 900]
    return rows


def _curve(plain_iou: float, last_epoch_peak: float, flips=None) -> dict:
    cities = ("a", "b", "c")
    last = _counts_peaking_at(last_epoch_peak)
    return {"chosen": {"epochs": 2, "threshold": 0.6}, "curve_epochs": 3,
            "folds": {c: {"counts": [last, last, last]} for c in cities},
            "per_city": {c: {"precision": 0.5, "recall": 0.5, "building_iou": plain_iou, "mean_iou": 0.5}
                         for c in cities},
            "flips": None if flips is None else {c: flips for c in cities}}


def _write_curve(out, name: str, curve: dict) -> None:
    """`curve` as variant `name`'s finished curve.json under `out`, with what the report reads."""
    curve.update(seconds=60.0, why=name, machine="test", recipe={})
    for row in curve["per_city"].values():
        row["threshold"] = 0.6
    (out / name).mkdir()
    (out / name / "curve.json").write_text(json.dumps(curve, default=np.ndarray.tolist))


def test_the_served_option_is_the_one_the_other_cities_score_best():
    from ablations.final import inference_choice

    # Plain rows (threshold chosen on the other cities) best: keep the curve's choice.
    assert inference_choice(_curve(0.9, last_epoch_peak=0.3)) == (2, 0.6, "none")
    # A fixed 0.5 at the last epoch transfers better than thresholds chosen elsewhere.
    assert inference_choice(_curve(0.5, last_epoch_peak=0.5)) == (3, 0.5, "none")
    # Flips better still: served with the threshold best over every city (0.4 here).
    flips = _counts_peaking_at(0.4, iou=0.9)
    assert inference_choice(_curve(0.5, 0.5, flips)) == (3, pytest.approx(0.4), "flips")
    # Without recorded flips, flips are never served.
    assert inference_choice(_curve(0.2, 0.3))[2] == "none"


def test_each_city_can_be_served_the_option_the_other_cities_chose():
    """best_option chooses on every city, the row's own included; option_left_out never does.
    The flips score 0.9 / 0.6 / 0.2 in cities a / b / c, no views 0.5 each: the flips win the mean
    over all three (0.567), but a, choosing on b and c (0.4), gets no views, while b and c,
    choosing with a, get the flips, so c's 0.2 counts in full."""
    from ablations.final import left_out_lines
    from ablations.heldout import best_option, mean_of, option_left_out

    curve = _curve(0.1, last_epoch_peak=0.5)  # "plain" (epoch chosen too, never left out): 0.1
    for fold in curve["folds"].values():  # "plain, 0.5": 0.5 in every city
        fold["counts"][-1] = _counts_peaking_at(0.5, iou=0.5)
    curve["views"] = {"flips": {city: _counts_peaking_at(0.5, iou=iou) for city, iou in zip("abc", (0.9, 0.6, 0.2))}}
    assert best_option(curve)[0] == "flips"
    rows = option_left_out(curve)
    assert {city: row["rule"] for city, row in rows.items()} == {"a": "plain, 0.5", "b": "flips", "c": "flips"}
    assert [rows[c]["building_iou"] for c in "abc"] == pytest.approx([0.5, 0.6, 0.2])
    assert mean_of(rows)["building_iou"] == pytest.approx(1.3 / 3)
    assert {row["rule"] for row in option_left_out(curve, max_passes=1).values()} == {"plain, 0.5"}  # flips: 4 passes
    table = "\n".join(left_out_lines(rows))
    assert "`plain, 0.5`" in table and "`flips`" in table and "**0.433**" in table


def test_an_option_left_out_ranks_thresholds_chosen_without_the_held_out_city_too():
    """Nested: ranking options for city c, b's row under 'flips' takes the threshold a alone
    prefers (0.3, where b scores 0.1), not the one a and c together prefer (0.6, b's 0.95). With
    c's say, flips would win for c; without it, the fixed 0.5 does."""
    from ablations.heldout import option_left_out, serving_options

    curve = _curve(0.1, last_epoch_peak=0.5)
    for fold in curve["folds"].values():
        fold["counts"][-1] = _counts_peaking_at(0.5, iou=0.5)
    peak = {"a": _counts_peaking_at(0.3, iou=0.95), "b": _counts_peaking_at(0.6, iou=0.95),
            "c": _counts_peaking_at(0.6, iou=0.99)}
    curve["views"] = {"flips": peak}
    with_c = serving_options(curve)["flips"]["per_city"]  # thresholds chosen with c among the others
    assert (with_c["a"]["building_iou"] + with_c["b"]["building_iou"]) / 2 > 0.5  # would choose flips for c
    assert option_left_out(curve)["c"]["rule"] == "plain, 0.5"


def test_an_ensemble_found_on_disk_is_reported_at_both_thresholds_against_selected(tmp_path):
    from ablations.evaluate.transfer import _variants
    from ablations.evaluate.transfer_report import render

    flips = _counts_peaking_at(0.4, iou=0.6)
    _write_curve(tmp_path, "selected", _curve(0.5, last_epoch_peak=0.5, flips=flips))
    better = _counts_peaking_at(0.5, iou=0.8)  # the ensemble peaks at 0.5, selected's flips at 0.4
    (tmp_path / "ensembles").mkdir()
    (tmp_path / "ensembles" / "selected+style.json").write_text(json.dumps(
        {"members": ["selected", "style"], "counts": {c: better.tolist() for c in ("a", "b", "c")}}))

    text = render(tmp_path, _variants(), ensembles=[])  # not asked for this time: found on disk
    rows = [line for line in text.splitlines() if line.startswith("| selected+style")]
    assert len(rows) == 2
    borrowed, fixed = ([cell.strip() for cell in row.strip("|").split("|")] for row in rows)
    assert borrowed[1] == "flips" and borrowed[-3:] == ["0.800", "+0.200", "selected"]  # selected's flips: 0.6 at 0.4
    assert fixed[1] == "flips, 0.5" and fixed[-3:] == ["0.800", "+0.700", "selected"]  # selected's flips at 0.5: 0.1
    # A newer ensemble names its view sets: each is a row pair, against selected served alike.
    (tmp_path / "ensembles" / "selected+style.json").write_text(json.dumps(
        {"members": ["selected", "style"], "views": {"flips": {c: better.tolist() for c in ("a", "b", "c")},
                                                     "dihedral": {c: flips.tolist() for c in ("a", "b", "c")}}}))
    rows = [line for line in render(tmp_path, _variants(), ensembles=[]).splitlines() if line.startswith("| selected+style")]
    assert [row.split("|")[2].strip() for row in rows] == ["flips", "flips, 0.5", "dihedral", "dihedral, 0.5"]
    assert rows[2].split("|")[-3].strip() == ""  # selected recorded no dihedral: nothing to set it against


def test_a_stride_2_variant_is_compared_with_the_served_stride_not_with_selected(tmp_path):
    from ablations.evaluate.transfer import _variants
    from ablations.evaluate.transfer_report import render

    variants = _variants()
    assert variants["os2_bce"].config.output_stride == 2 and variants["os2_bce"].recipe.loss == "bce"
    assert variants["os2_bce"].config == variants["os2"].config  # only the recipe differs from its base
    for name, plain_iou in (("selected", 0.2), ("os2", 0.4), ("os2_bce", 0.5)):
        _write_curve(tmp_path, name, _curve(plain_iou, last_epoch_peak=0.3))

    text = render(tmp_path, variants, ensembles=[])
    summary = text.split("## Summary")[1].split("## Every row")[0]
    plain = {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")] for line in summary.splitlines()
                                           if line.startswith("| ")) if cells[1] == "plain"}
    assert plain["os2_bce"][-3:] == ["0.500", "+0.100", "os2"]
    assert plain["os2"][-3:] == ["0.400", "+0.200", "selected"]


def test_a_recipe_over_its_seeds_is_pooled_and_set_against_its_base_over_the_same_seeds(tmp_path):
    from ablations.evaluate.transfer import _variants
    from ablations.evaluate.transfer_report import render

    # flips at 0.5: building IoU per seed (0.1 where a curve peaks elsewhere)
    for name, seed, iou, peak in (("os2", 0, 0.8, 0.5), ("os2_seed1", 1, 0.4, 0.5), ("os2_bce", 0, 0.9, 0.5),
                                  ("os2_bce_seed1", 1, 0.7, 0.5), ("os2_bce_seed2", 2, 0.9, 0.3)):
        curve = _curve(0.3, last_epoch_peak=0.3, flips=_counts_peaking_at(peak, iou=iou))
        _write_curve(tmp_path, name, {**curve, "seed": seed})

    section = render(tmp_path, _variants(), ensembles=[]).split("## Over seeds")[1].split("\n## ")[0]
    rows = {(cells[0], cells[2]): cells for cells in ([c.strip() for c in line.strip("|").split("|")]
                                                      for line in section.splitlines() if line.startswith("| "))}
    os2, bce = rows["os2", "flips, 0.5"], rows["os2_bce", "flips, 0.5"]
    assert os2[1] == "0, 1" and os2[-4:] == ["0.600", "", "0.800 / 0.400", ""]  # counts summed: (80+40)/200
    # seeds 0-2 pooled: (90+70+10)/300; against os2 over seeds 0 and 1 only: 0.800 - 0.600
    assert bce[1] == "0, 1, 2" and bce[-4:] == ["0.567", "+0.200", "0.900 / 0.700 / 0.100", "os2 (0, 1)"]
    assert ("os2_bce_seed1", "flips, 0.5") not in rows  # a seed is a member of its recipe, not a recipe


def test_seeds_come_from_the_name_and_a_base_without_flips_is_compared_only_without_them(tmp_path):
    from ablations.evaluate.transfer import _variants
    from ablations.evaluate.transfer_report import render

    _write_curve(tmp_path, "os2", _curve(0.3, last_epoch_peak=0.5))
    _write_curve(tmp_path, "os2_seed1", _curve(0.3, last_epoch_peak=0.5))  # an old curve: no "seed" field
    for name, seed in (("os2_bce", 0), ("os2_bce_seed1", 1)):
        flips = _counts_peaking_at(0.5, iou=0.9)
        _write_curve(tmp_path, name, {**_curve(0.3, last_epoch_peak=0.5, flips=flips), "seed": seed})

    section = render(tmp_path, _variants(), ensembles=[]).split("## Over seeds")[1].split("\n## ")[0]
    rows = {(cells[0], cells[2]): cells for cells in ([c.strip() for c in line.strip("|").split("|")]
                                                      for line in section.splitlines() if line.startswith("| "))}
    assert rows["os2", "plain, 0.5"][1] == "0, 1"  # seed 1 read from the name, not lost to seed 0
    assert rows["os2_bce", "plain, 0.5"][-3] == "+0.000"  # compared where both have the option
    assert rows["os2_bce", "flips, 0.5"][-3] == ""  # its base recorded no flips: nothing to compare


def run_transfer(*args, env_extra=None):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "ablations.evaluate.transfer", "--budget", "smoke",
                           *weights_flag(), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)


@pytest.mark.slow
def test_the_transfer_harness_compares_variants_resumes_and_scores_ensembles(tmp_path, cache_home, monkeypatch,
                                                                             in_process):
    out = tmp_path / "transfer"
    views = ("--views", "flips,rot180", "--scales", "1+0.5")
    first = run_transfer("--variants", "selected,style", "--epochs", "1", "--out", str(out), *views,
                         env_extra=cache_home)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    curves = {name: json.loads((out / name / "curve.json").read_text()) for name in ("selected", "style")}
    for curve in curves.values():
        assert sorted(curve["views"]) == ["flips", "flips@1+0.5", "none@1+0.5", "rot180", "rot180@1+0.5"]
        assert len(curve["per_city"]) == 3
        assert all(sorted(counts) == sorted(curve["per_city"]) for counts in curve["views"].values())
        for name, by_city in curve["views_by_zoom"].items():  # the synthetic scenes are all zoom 21
            assert {city: list(zooms) for city, zooms in by_city.items()} == {city: ["21"] for city in curve["per_city"]}
            assert all(by_city[city]["21"] == curve["views"][name][city] for city in by_city)
        # Per tile at 0.5 (ablations.evaluate.adaptive), "none" too: the tiles add up to the option's counts.
        assert sorted(curve["tile_counts"]) == sorted([*curve["views"], "none"])
        at_half = heldout.threshold_index(0.5)
        for name, by_city in curve["views"].items():
            for city, counts in by_city.items():
                assert np.sum(curve["tile_counts"][name][city], axis=0).tolist() == counts[at_half][:3]
    assert curves["style"]["recipe"]["augmentation"] == "sensor_style"
    assert "styles from" in first.stdout  # the per-fold restyled copies were encoded

    # A variant killed between folds resumes at its first unfinished fold: the others are kept.
    (out / "style" / "curve.json").unlink()
    kept = sorted((out / "cache" / "style").glob("*-fold.json"))
    assert len(kept) == 3
    kept[-1].unlink()
    untouched = {path: path.stat().st_mtime_ns for path in kept[:-1]}
    resumed = run_transfer("--variants", "selected,style", "--epochs", "1", "--out", str(out), *views,
                           "--ensembles", "selected+style", "--drop-encodings", env_extra=cache_home)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    # --drop-encodings deleted the encoded views (GiBs on real data), not the folds or ensembles.
    assert (out / "cache").is_dir() and not (out / "cache" / "flipped").exists()
    assert "variant selected: finished earlier" in resumed.stdout  # its curve is kept, not re-run
    assert resumed.stdout.count("not re-run") == 2 and kept[-1].is_file()
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in untouched.items())
    resumed_curve = json.loads((out / "style" / "curve.json").read_text())
    assert sorted(resumed_curve["per_city"]) == sorted(curves["style"]["per_city"])
    assert resumed_curve["views_by_zoom"] == curves["style"]["views_by_zoom"]  # kept folds keep theirs
    assert resumed_curve["tile_counts"] == curves["style"]["tile_counts"]
    ensemble = json.loads((out / "ensembles" / "selected+style.json").read_text())
    assert ensemble["members"] == ["selected", "style"] and len(ensemble["counts"]) == 3
    assert sorted(ensemble["views"]) == ["flips", "rot180"] and ensemble["views"]["flips"] == ensemble["counts"]
    assert ensemble["views"]["rot180"] != ensemble["views"]["flips"]
    readme = (out / "README.md").read_text()
    assert "| selected " in readme and "flips, 0.5" in readme and "rot180, 0.5" in readme and "selected+style" in readme

    # Everything finished: nothing is encoded; another epoch count is refused. Both stop before
    # any training, so they run in this process (a subprocess adds ~10 s of imports each).
    from ablations.evaluate.transfer import main

    smoke = ["--budget", "smoke", *weights_flag(), "--out", out]
    status, again, _ = in_process(main, "--variants", "selected,style", "--epochs", "1", *smoke)
    assert status == 0 and "every variant asked for has finished" in again and "encoding" not in again
    status, _, stderr = in_process(main, "--variants", "selected", "--epochs", "2", *smoke)
    assert status == 2 and "other data, epochs, budget or encoder" in stderr
    # An ensemble scored again under fewer views keeps what it recorded before.
    status, again, _ = in_process(main, "--variants", "selected,style", "--epochs", "1", "--views", "flips",
                                  "--ensembles", "selected+style", *smoke)
    assert status == 0 and "recorded: flips, rot180" in again
    assert json.loads((out / "ensembles" / "selected+style.json").read_text())["views"]["rot180"] == ensemble["views"]["rot180"]
    # Views a finished curve never scored would retrain and overwrite it: refused, by name.
    status, _, stderr = in_process(main, "--variants", "selected", "--epochs", "1", "--views", "dihedral", *smoke)
    assert status == 2 and "without the test-time views dihedral" in stderr

    # The winner is served through the final fit, with what its cross-validation chose.
    from ablations.final import inference_choice

    final = tmp_path / "results" / "final"
    fitted = run_fit("--budget", "smoke", "--curve-from", str(out / "style" / "curve.json"), "--out", str(final),
                     *weights_flag(), env_extra=cache_home)
    assert fitted.returncode == 0, fitted.stdout[-3000:] + fitted.stderr[-3000:]
    metadata = json.loads((final / "model.json").read_text())
    epochs, threshold, tta = inference_choice(curves["style"], max_passes=2)  # the fit's default budget
    _, served = heldout.best_option(curves["style"], 2)
    assert metadata["inference"]["scales"] == served["scales"]  # the option's scales reach the saved model
    assert metadata["recipe"]["augmentation"] == "sensor_style"
    assert (metadata["epochs"], metadata["inference"]["tta"]) == (epochs, tta)
    assert metadata["inference"]["threshold"] == pytest.approx(threshold)
    # A later plain `ablations.fit` in that folder fits the kept curve's recipe, not the
    # default one: run_fit in process, stopped where it starts loading data.
    from ablations import final as final_module

    chosen = []

    def recorded(*args):
        chosen.append(selected_recipe(*args))
        return chosen[-1]

    class Stop(Exception):
        pass

    def stop(*_):
        raise Stop

    selected_recipe = final_module.selected_recipe
    monkeypatch.setattr(final_module, "selected_recipe", recorded)
    monkeypatch.setattr(final_module, "load_samples", stop)
    with pytest.raises(Stop):
        final_module.run_fit(final_module.FitRequest(out=final, budget="smoke"))
    assert chosen[0][1].augmentation == "sensor_style"


@pytest.mark.slow
def test_a_two_scale_variant_runs_cross_validated_and_the_fit_serves_it_within_its_passes(tmp_path, cache_home):
    """The two-scale decoder end to end: its pool and the held-out views encoded at half size
    too, its curve, and a fit from that curve whose model halves the image itself. Its views
    cost 1.25 passes each, so two of them (2.5) no longer fit the default budget of 2."""
    from zoo import saving, unet
    from zoo.predict import Segmenter

    out = tmp_path / "transfer"
    ran = run_transfer("--variants", "os2_rescale_scaleatt", "--epochs", "1", "--views", "transpose",
                       "--out", str(out), env_extra=cache_home)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert "'sensor_rescale' augmentation, at full and half size" in ran.stdout
    curve = json.loads((out / "os2_rescale_scaleatt" / "curve.json").read_text())
    assert curve["config"]["scale_fusion"] == "attention" and sorted(curve["views"]) == ["transpose"]
    assert sorted(p.name for p in (out / "cache" / "flipped").iterdir())[0].endswith("-view4-half")
    final = tmp_path / "final"
    fitted = run_fit("--budget", "smoke", "--curve-from", str(out / "os2_rescale_scaleatt" / "curve.json"),
                     "--out", str(final), "--no-serve", *weights_flag(), env_extra=cache_home)
    assert fitted.returncode == 0, fitted.stdout[-3000:] + fitted.stderr[-3000:]
    metadata = json.loads((final / "model.json").read_text())
    assert metadata["config"]["scale_fusion"] == "attention"
    assert metadata["inference"]["tta"] == "none"  # transpose: 2 x 1.25 passes
    assert heldout.passes_of(heldout.serving_options(curve)["transpose"]) == 2.5
    model, _ = saving.load(final / "model.keras")
    assert unet.has_half_scale(model)
    image = np.random.default_rng(0).integers(0, 256, (80, 48, 3), dtype=np.uint8)
    assert Segmenter(model).predict(image).shape == (80, 48)


def test_confident_learning_sets_aside_only_what_the_judge_confidently_disputes():
    from ablations.evaluate.label_noise import confident_disagreement

    labels = np.zeros((1, 8, 8), np.uint8)
    labels[0, :4] = 1                        # a labelled roof in the top half
    probs = np.where(labels == 1, 0.9, 0.1)  # the judge agrees everywhere ...
    probs[0, 6, 6] = 0.95                    # ... except an unlabelled roof pixel
    probs[0, 0, 0] = 0.02                    # and a labelled pixel that is plainly ground
    probs[0, 7, 0] = 0.4                     # a doubt, below the building self-confidence: kept
    disputed = confident_disagreement(labels, probs)
    assert np.argwhere(disputed).tolist() == [[0, 0, 0], [0, 6, 6]]


def test_a_fold_judges_each_training_city_by_the_other_never_the_held_out():
    from ablations.evaluate.label_noise import filtered_masks, judge_of
    from zoo.losses import IGNORE

    areas = np.array(["a"] * 2 + ["b"] * 2 + ["c"] * 2, dtype=object)
    masks = np.zeros((2, 6, 4, 4), np.uint8)
    masks[:, :, :2] = 1
    agree = np.where(masks == 1, 0.9, 0.1)
    disputes = np.where(masks == 1, 0.05, 0.95)  # disputes every pixel
    judged = {"a": agree, "b": agree, "c": disputes}  # only c's model disputes anything
    train = np.array([0, 1, 2, 3])  # the fold without c
    assert judge_of("a", ["a", "b"]) == "b" and judge_of("b", ["a", "b"]) == "a"
    out, fractions = filtered_masks(masks, areas, train, judged)
    assert fractions == {"a": 0.0, "b": 0.0} and not (out == IGNORE).any()  # c never judged
    out, fractions = filtered_masks(masks, areas, np.array([0, 1, 4, 5]), judged)  # without b
    assert fractions["a"] == 1.0 and (out[:, :2] == IGNORE).all() and (out[:, 4:] != IGNORE).all()


def test_ignored_label_pixels_train_nothing():
    from zoo.losses import IGNORE, SegmentationLoss

    label = _square_label()
    logits = (label * 2 - 1) * 8.0
    wrong_where_ignored = logits.copy()
    wrong_where_ignored[0, :3] = 8.0  # confidently building where the label is set aside
    ignored = label.copy()
    ignored[0, :3] = IGNORE
    loss = SegmentationLoss("bce_dice")
    assert float(loss(ignored, wrong_where_ignored)) == pytest.approx(float(loss(ignored, logits)), abs=1e-4)
    assert float(loss(label, wrong_where_ignored)) > float(loss(label, logits)) + 0.05


def test_wide_taps_feed_the_decoder_the_tutorials_expanded_activations():
    from zoo import unet
    from zoo.config import DecoderConfig
    from zoo.encoder import taps_of

    wide = unet.build(DecoderConfig(width=0.25, taps="wide"), weights=None)
    channels = {t.name: t.shape[-1] for t in unet.decoder_of(wide).inputs}
    assert (channels["tap_s2"], channels["tap_s4"]) == (96, 144)
    assert taps_of(unet.encoder_of(wide)) == "wide"
    narrow = _model("scale")
    assert taps_of(unet.encoder_of(narrow)) == "narrow"
    with pytest.raises(ValueError, match="other taps"):
        unet.build(DecoderConfig(width=0.25, taps="wide"), encoder=unet.encoder_of(narrow))
    assert DecoderConfig.from_dict({"upsampler": "nearest"}).taps == "narrow"


def test_restyled_copies_read_like_the_stacked_pool_without_copying_it():
    from ablations.evaluate.transfer import RestyledCopies
    from ablations.features import TAP_INPUTS, FeatureSet

    rng = np.random.default_rng(0)

    def features(count):
        taps = [rng.random((1, count, 2, 2, 3)).astype(np.float16) for _ in TAP_INPUTS]
        return FeatureSet(taps, rng.integers(0, 2, (1, count, 4, 4)).astype(np.uint8), np.zeros((count, 4, 4, 3), np.uint8))

    originals, index = features(6), np.array([1, 3, 4])
    restyled = features(len(index))
    stacked_taps = [np.concatenate([t, t]) for t in originals.taps]
    stacked_masks = np.concatenate([originals.masks, originals.masks])
    for tap, part in zip(stacked_taps, restyled.taps):
        tap[1, index] = part[0]
    stacked_masks[1, index] = restyled.masks[0]
    stacked = FeatureSet(stacked_taps, stacked_masks, originals.images)
    mixed = RestyledCopies(originals, restyled, index)
    copies, images = rng.integers(0, 2, 20), rng.integers(0, 6, 20)
    (want, want_masks), (got, got_masks) = stacked.batch(copies, images), mixed.batch(copies, images)
    assert all(np.array_equal(want[name], got[name]) for name in want)
    assert np.array_equal(want_masks, got_masks) and np.array_equal(mixed.masks, stacked.masks)


def test_a_reseeded_or_longer_variant_trains_from_its_own_seed_and_schedule(monkeypatch, tmp_path):
    """os2_seed1 is os2 with another seed: its decoder starts from other weights and trains
    with that seed, the same each time it is built. os2_twice trains twice the epochs."""
    from types import SimpleNamespace

    from ablations import folds
    from ablations.evaluate import transfer
    from zoo.encoder import TAP_SETS, build_encoder

    variants = transfer._variants()
    reseeded, served = variants["os2_seed1"], variants["os2"]
    assert dataclasses_differ(reseeded, served) == {"name", "why", "seed", "base"} and reseeded.seed == 1

    class Stop(Exception):
        pass

    def caught(variant):
        trained = {}

        def cross_validate(build, recipe, pool, fold_list, epochs, seed, schedule_epochs, areas=None, **_):
            trained.update(seed=seed, areas=areas, epochs=(epochs, schedule_epochs), weights=[w.copy() for w in build().get_weights()[-4:]],
                           again=[w.copy() for w in build().get_weights()[-4:]])
            raise Stop

        monkeypatch.setattr(folds, "cross_validate", cross_validate)
        monkeypatch.setattr(transfer, "training_pool", lambda *_: None)
        encodings = SimpleNamespace(encoder={"narrow": build_encoder(None, TAP_SETS["narrow"])}.__getitem__,
                                    areas=np.array(["a", "b"], dtype=object))
        fold = SimpleNamespace(val_area="a")
        with pytest.raises(Stop):
            transfer.cross_validate_variant(variant, encodings, [fold], 3, SimpleNamespace(eager=True),
                                            cache=tmp_path, fingerprint={})
        return trained

    seed0, seed1 = caught(served), caught(reseeded)
    assert (seed0["seed"], seed1["seed"]) == (0, 1)
    assert list(seed0["areas"]) == ["a", "b"]  # every tile's area, for a recipe sampling by area
    assert seed0["epochs"] == seed1["epochs"] == (3, 3)
    assert variants["os2_standardize_seed1"].seed == 1 and variants["os2_standardize_seed1"].base == "os2_standardize"
    assert dataclasses_differ(variants["os2_standardize_seed1"], variants["os2_standardize"]) == {"name", "why", "seed", "base"}
    twice = variants["os2_twice"]
    assert dataclasses_differ(twice, served) == {"name", "why", "epoch_factor", "base"}
    assert caught(twice)["epochs"] == (6, 6)  # one decoder at the training CPU of two
    for run in (seed0, seed1):
        assert all(np.array_equal(a, b) for a, b in zip(run["weights"], run["again"]))
    assert not all(np.array_equal(a, b) for a, b in zip(seed0["weights"], seed1["weights"]))


def test_a_variant_with_more_copies_encodes_them_and_old_recipes_read_back_unchanged(tmp_path):
    """shrink_copies4 trains on 4 encoded copies per tile (3 augmented) where the budget gives
    2; each epoch draws one copy per tile, so its tiles are seen augmented 3 times in 4. A
    recipe recorded before the field existed must read back and compare as it was written,
    or pooling and the fit would refuse or re-fit committed curves."""
    from ablations import studies
    from ablations.evaluate.transfer import Encodings, Form, _variants
    from zoo.encoder import TAP_SETS, build_encoder

    variants = _variants()
    more, served = variants["os2_shrink_copies4"], variants["os2_shrink"]
    assert dataclasses_differ(more.recipe, served.recipe) == {"augmented_copies"}
    assert variants["os2_shrink_copies4_seed2"].recipe.augmented_copies == 4
    recorded = json.loads((REPO / "results" / "views" / "os2_shrink" / "curve.json").read_text())["recipe"]
    assert studies.Recipe(**recorded).to_dict() == recorded and "augmented_copies" not in recorded
    assert more.recipe.to_dict()["augmented_copies"] == 4
    for wrong in ({"augmented_copies": 1}, {"augmented_copies": 4, "augmentation": "sensor_style"}):
        with pytest.raises(ValueError, match="augmented_copies"):
            studies.Recipe(**wrong)  # one copy is no augmentation; a style copy is made per fold

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    masks = rng.integers(0, 2, (3, 64, 64)).astype(np.uint8)
    encodings = Encodings(lambda taps: build_encoder(None, TAP_SETS[taps]), images, masks,
                          np.array(["a", "a", "b"], dtype=object), studies.BUDGETS["smoke"], tmp_path / "views", "data")
    four, two = encodings.pool(*more.encoding), encodings.pool(*served.encoding)
    assert (four.copies, two.copies, encodings.pool(Form(), "none").copies) == (4, 2, 1)
    assert np.array_equal(four.masks[0], masks) and not np.array_equal(four.masks[3], masks)  # copy 0 as given


def test_a_two_scale_variant_encodes_its_pool_at_half_size_too_and_keeps_one_pool(tmp_path):
    """The two-scale variants train on each copy's full- and half-size taps (10 decoder
    inputs); the pool without them is dropped when the other is encoded (GiBs each)."""
    from ablations import studies
    from ablations.evaluate.transfer import Encodings, Form, _variants
    from ablations.features import TWO_SCALE_INPUTS
    from zoo.encoder import TAP_SETS, build_encoder

    variants = _variants()
    for name in ("os2_shrink_scaleatt", "os2_rescale_scaleatt_seed2"):
        assert variants[name].config.scale_fusion == "attention" and variants[name].encoding[0].half is True
    assert dataclasses_differ(variants["os2_shrink_scaleatt"].config, variants["os2_shrink"].config) == {"scale_fusion"}
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    masks = rng.integers(0, 2, (3, 64, 64)).astype(np.uint8)
    encodings = Encodings(lambda taps: build_encoder(None, TAP_SETS[taps]), images, masks,
                          np.array(["a", "a", "b"], dtype=object), studies.BUDGETS["smoke"], tmp_path / "views", "data")
    one = encodings.pool(*variants["os2_shrink"].encoding)
    two = encodings.pool(*variants["os2_rescale_scaleatt"].encoding)
    assert len(one.taps) == 5 and len(two.taps) == 10 and two.copies == 2
    assert list(two.batch(np.array([1]), np.array([0]))[0]) == TWO_SCALE_INPUTS
    assert [t.shape[2] for t in two.taps] == [32, 16, 8, 4, 2, 16, 8, 4, 2, 1]
    assert list(encodings.cache) == [(Form(half=True), "sensor_rescale", 2)]  # the one-scale pool went
    assert encodings.originals(Form(half=True)) is two
    encodings.pool(*variants["os2_rescale"].encoding)
    encodings.pool(*variants["os2_shrink"].encoding)  # same preprocessing and size: still one pool kept
    assert list(encodings.cache) == [(Form(), "sensor_shrink", 2)]


def test_a_pool_too_large_for_memory_is_encoded_into_files_and_reused_by_the_next_run(tmp_path, monkeypatch):
    """The wide taps' pool (17 GiB for the shared data) cannot stay in a 24 GiB machine's
    memory beside training: over POOL_IN_MEMORY_LIMIT it is written to memory-mapped files,
    with the same features as in memory, and a resumed run reads them instead of encoding again."""
    from ablations import features, studies
    from ablations.evaluate import transfer
    from ablations.evaluate.transfer import Encodings, _variants
    from zoo.encoder import TAP_SETS, build_encoder

    wide = _variants()["os2_shrink_widetaps_seed1"]
    assert dataclasses_differ(wide.config, _variants()["os2_shrink"].config) == {"taps"} and wide.seed == 1
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    masks = rng.integers(0, 2, (3, 64, 64)).astype(np.uint8)

    encoder = build_encoder(None, TAP_SETS["wide"])  # random weights: one encoder for every run

    def encodings():
        return Encodings({"wide": encoder}.__getitem__, images, masks,
                         np.array(["a", "a", "b"], dtype=object), studies.BUDGETS["smoke"], tmp_path / "views", "data")

    in_memory = encodings().pool(*wide.encoding)
    assert [t.shape[-1] for t in in_memory.taps] == [96, 144, 192, 576, 1280]  # the expansions at strides 2, 4
    assert encodings().pool_bytes(wide.encoding[0], 2) == sum(t.nbytes for t in in_memory.taps)
    monkeypatch.setattr(transfer, "POOL_IN_MEMORY_LIMIT", 1000)
    on_disk = encodings().pool(*wide.encoding)
    assert all(isinstance(t, np.memmap) for t in on_disk.taps) and not (tmp_path / "views").exists()
    for ours, theirs in zip(on_disk.taps, in_memory.taps):
        np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(on_disk.masks, in_memory.masks)  # the augmented copy's masks too
    monkeypatch.setattr(features, "encode", lambda *a, **k: pytest.fail("encoded again"))
    again = encodings().pool(*wide.encoding)
    np.testing.assert_array_equal(again.taps[1], in_memory.taps[1])
    assert [p.name for p in (tmp_path / "pools").iterdir()] == ["data-scale-sensor_shrink-copies2-widetaps"]


def test_closer_or_farther_views_make_roofs_both_larger_and_smaller():
    """sensor_rescale: a tile in 4 shrunk 2-4x, a tile in 4 enlarged 1.5-4x, the rest at their
    size; a two-scale decoder must see roofs too large for its full-size pass to learn when
    to trust the half-size one."""
    import cv2

    from ablations.data import augment

    mask = np.zeros((256, 256), np.uint8)
    mask[104:152, 104:152] = 1  # one 48 px roof
    image = np.where(mask[..., None] == 1, np.uint8(220), np.uint8(90)).repeat(3, axis=2)
    pipeline = augment.augmentation("sensor_rescale", seed=0)
    sizes = []
    for _ in range(60):
        out = augment.augment_pair(pipeline, image, mask)[1].astype(np.uint8)
        _, _, stats, _ = cv2.connectedComponentsWithStats(out)
        sizes.append(stats[1:, cv2.CC_STAT_AREA].max() if len(stats) > 1 else 0)
    sizes = np.asarray(sizes) / 48 ** 2
    shrunk, enlarged = (sizes < 0.3).mean(), (sizes > 2.0).mean()
    assert 0.1 < shrunk < 0.45 and 0.1 < enlarged < 0.45 and ((sizes > 0.7) & (sizes < 1.4)).mean() > 0.3
    assert "sensor_rescale" not in augment.AUGMENTATIONS


def dataclasses_differ(a, b) -> set[str]:
    import dataclasses

    return {f.name for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)}


@pytest.mark.parametrize("scale_fusion, taps", [("none", "narrow"), ("attention", "narrow"), ("none", "wide")])
def test_the_harness_scores_each_view_set_as_the_server_serves_it(tmp_path, scale_fusion, taps):
    """Cross-validation scores a view set from encoded copies of the tiles seen through each
    view; the server runs each view through the whole model (zoo.predict). Both must give the
    same probabilities, or the views chosen would be scored on something never served. A
    two-scale model's copies are encoded at half size too, as the model halves each view; a
    wide-tap model's at its own taps."""
    import dataclasses

    import keras

    from ablations import studies
    from ablations.evaluate.transfer import Encodings, Form, view_averaged_probabilities
    from ablations.final import SELECTED_DECODER
    from ablations.heldout import option_of
    from zoo import unet
    from zoo.encoder import TAP_SETS, build_encoder
    from zoo.predict import Segmenter

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    masks = rng.integers(0, 2, (3, 64, 64)).astype(np.uint8)
    encoder = build_encoder(None, TAP_SETS[taps])
    keras.utils.set_random_seed(0)
    config = dataclasses.replace(SELECTED_DECODER, scale_fusion=scale_fusion, taps=taps)
    model = unet.build(config, encoder=encoder)
    decoder = unet.decoder_of(model)
    # A random decoder says ~0.5 everywhere: spread its logits (the 1x1 head's kernel).
    head = decoder.get_layer("decoder_branch") if scale_fusion == "attention" else decoder
    weights = head.get_weights()
    head.set_weights([*weights[:-2], weights[-2] * 300, weights[-1]])
    if scale_fusion == "attention":  # and let the mix of the two scales vary from pixel to pixel
        kernel, bias = decoder.get_layer("scale_weight").get_weights()
        decoder.get_layer("scale_weight").set_weights([rng.normal(0, 3, kernel.shape).astype("float32"), bias])
    encodings = Encodings({taps: encoder}.__getitem__, images, masks, np.array(["a", "a", "b"], dtype=object),
                          studies.BUDGETS["smoke"], tmp_path / "views", "data")
    index = np.array([0, 2])
    # At 0.25 the 64 px tiles shrink to 16 px, which the server pads to 32 and crops back.
    names = ["rot180", "transpose", "flips", "dihedral", "none@1+0.5", "transpose@1+0.5+0.25"]
    scored = view_averaged_probabilities(model, encodings, Form.of(config), index, names)
    plain = Segmenter(model).probabilities(images[0])
    for name in names:
        tta, scales = option_of(name)
        served = np.stack([Segmenter(model, tta=tta, scales=scales).probabilities(images[i]) for i in index])
        np.testing.assert_allclose(scored[name], served, atol=1e-3)  # features are kept in float16
        assert np.abs(served[0] - plain).max() > 0.05  # the options change the prediction: a real check
    suffix = ("-half" if scale_fusion == "attention" else "") + ("-widetaps" if taps == "wide" else "")
    assert sorted(p.name for p in (tmp_path / "views").iterdir()) == sorted(
        f"{name}{suffix}" for name in [f"data-scale-view{v}" for v in range(1, 8)]
        + ["data-scale-view0-scale0.5", "data-scale-view0-scale0.25", "data-scale-view4-scale0.5",
           "data-scale-view4-scale0.25"])


def test_a_farther_view_shrinks_buildings_and_keeps_the_mask_on_them():
    """sensor_shrink: a tile shrunk 2-4x with its border reflected, so a large roof takes the
    size it has at half-scale inference; the mask must shrink with it, pixel for pixel."""
    import cv2

    from ablations.data import augment

    image = np.full((256, 256, 3), 90, np.uint8)
    mask = np.zeros((256, 256), np.uint8)
    image[80:176, 80:176] = (220, 40, 40)  # one 96 px roof
    mask[80:176, 80:176] = 1
    pipeline = augment._albumentations().Compose(augment._farther_view(augment._albumentations(), p=1.0), seed=3)
    for _ in range(5):
        out = pipeline(image=image, mask=mask)
        shrunk_image, shrunk_mask = out["image"], out["mask"]
        _, _, stats, _ = cv2.connectedComponentsWithStats(shrunk_mask.astype(np.uint8))
        largest = stats[1:, cv2.CC_STAT_AREA].max()
        assert 96 * 96 / 16 * 0.8 < largest < 96 * 96 / 4 * 1.2  # shrunk 2-4x a side
        red = (shrunk_image[..., 0] > 155) & (shrunk_image[..., 1] < 105)
        overlap = (red & (shrunk_mask == 1)).sum() / (red | (shrunk_mask == 1)).sum()
        assert overlap > 0.85  # the mask moved with the roof (edges blur by a pixel)
    assert "sensor_shrink" not in augment.AUGMENTATIONS  # the augmentation study's grid is unchanged
    described = repr(augment.augmentation("sensor_shrink", seed=0))
    assert "(0.25, 0.5)" in described and repr(augment.augmentation("sensor", seed=0)) != described


def test_the_balanced_variant_changes_only_how_an_epoch_draws_its_tiles():
    from ablations.evaluate.transfer import _variants

    variants = _variants()
    for name in ("os2_shrink_balanced", "os2_shrink_balanced_seed2"):
        assert dataclasses_differ(variants[name].recipe, variants["os2_shrink"].recipe) == {"sampling"}
        assert variants[name].config == variants["os2_shrink"].config
