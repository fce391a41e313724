"""Cleaning the predicted mask (ablations.evaluate.cleanup): what it drops and fills, how the
strict row chooses, and the command on kept probabilities."""
import numpy as np

from ablations import heldout
from ablations.evaluate import cleanup
from ablations.evaluate.transfer import held_out_masks


def _square(mask, top, left, side, value=True):
    mask[top:top + side, left:left + side] = value
    return mask


def test_small_blobs_go_small_holes_fill_and_large_ones_stay():
    predicted = np.zeros((40, 40), bool)
    _square(predicted, 2, 2, 3)  # a 9-pixel speck
    _square(predicted, 10, 10, 20)  # a 400-pixel roof ...
    _square(predicted, 12, 12, 2, False)  # ... with a 4-pixel pocket
    _square(predicted, 18, 18, 6, False)  # ... and a 36-pixel courtyard
    out = cleanup.cleaned(predicted, min_blob=10, min_hole=10)
    assert not out[2:5, 2:5].any()
    assert out[12:14, 12:14].all()
    assert not out[18:24, 18:24].any()
    assert out.sum() == 400 - 36
    assert (cleanup.cleaned(predicted, 0, 0) == predicted).all()
    assert cleanup.cleaned(predicted, min_blob=10, min_hole=0)[12:14, 12:14].sum() == 0


def test_a_diagonal_neighbour_keeps_a_blob_together_and_does_not_open_a_hole():
    predicted = np.zeros((10, 10), bool)
    predicted[[2, 3, 4, 5], [2, 3, 4, 5]] = True  # one 8-connected blob of 4
    assert cleanup.cleaned(predicted, min_blob=4, min_hole=0).sum() == 4
    assert cleanup.cleaned(predicted, min_blob=5, min_hole=0).sum() == 0


def test_each_city_is_cleaned_as_the_other_cities_chose():
    good, bad = np.array([8, 1, 1, 90]), np.array([2, 4, 4, 90])
    pooled = {(0, 0): {"a": bad, "b": good, "c": good},
              (16, 0): {"a": good, "b": bad, "c": bad}}
    counts, chosen = cleanup.strict_counts(pooled)
    assert chosen == {"a": (0, 0), "b": (0, 0), "c": (0, 0)}  # a's own preference does not count
    assert counts["a"] is bad


def test_the_command_pools_the_variants_and_names_what_is_missing(tmp_path, capsys):
    masks, areas = held_out_masks(None, "smoke")
    speckled = masks.astype(np.float32)
    speckled[:, 1::16, 1::16] = 1.0  # one-pixel false buildings a clean-up should drop
    for variant in ("a", "b"):
        (tmp_path / "cache" / variant).mkdir(parents=True)
        for city in set(areas):
            np.save(tmp_path / "cache" / variant / f"{city}-transpose.npy", speckled[areas == city].astype(np.float16))
    assert cleanup.main(["--out", str(tmp_path), "--variants", "a,b", "--budget", "smoke", "--settings", "0:0,2:0"]) == 0
    table = (tmp_path / "cleanup.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    mean_iou = lambda row: float(rows[row].split("|")[-3])
    # A speck touching a true roof joins it and stays; the isolated ones go.
    assert mean_iou("as thresholded") < 0.98 < 0.995 < mean_iou("blobs < 2 dropped")
    assert mean_iou("each city cleaned as the other cities chose") == mean_iou("blobs < 2 dropped")
    pooled = cleanup.pooled_counts(tmp_path, ["a", "b"], "transpose", masks, areas, [(0, 0)])
    one = cleanup.pooled_counts(tmp_path, ["a"], "transpose", masks, areas, [(0, 0)])
    assert all((pooled[(0, 0)][c] == 2 * one[(0, 0)][c]).all() for c in set(areas))
    assert heldout.building_iou(one[(0, 0)][areas[0]]) < 1.0

    assert cleanup.main(["--out", str(tmp_path), "--variants", "a,missing", "--budget", "smoke"]) == 2
    said = capsys.readouterr()
    assert "cache/missing/" in said.err + said.out and "no kept probabilities" in said.err + said.out
