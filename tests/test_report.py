"""ablations.report's selection rule: best validation score, near-ties to the faster architecture."""

from __future__ import annotations

import pandas as pd

from ablations import report
from ablations.index import write_index


def _row(variant, upsampler, val, latency, loss="bce_dice"):
    return {
        "variant": variant,
        "upsampler": upsampler,
        "skip": "concat",
        "conv": "double",
        "width": 0.25,
        "recipe_loss": loss,
        "val_building_iou": val,
        "latency_ms": latency,
        "trial_ids": variant + loss,
    }


def test_a_clear_winner_wins_whatever_its_latency():
    summary = pd.DataFrame([_row("a", "bilinear", 0.80, 50), _row("b", "transpose", 0.70, 10)])
    assert report.select_best(summary)["variant"] == "a"


def test_a_near_tie_between_architectures_goes_to_the_faster_one():
    summary = pd.DataFrame([_row("a", "bilinear", 0.800, 50), _row("b", "transpose", 0.797, 10)])
    assert report.select_best(summary)["variant"] == "b"


def test_a_near_tie_within_one_architecture_goes_to_the_better_score_not_to_latency_noise():
    summary = pd.DataFrame(
        [
            _row("a", "bilinear", 0.805, 63, loss="bce_dice"),
            _row("a", "bilinear", 0.804, 29, loss="dice"),
            _row("a", "bilinear", 0.802, 31, loss="bce"),
        ]
    )
    best = report.select_best(summary)
    assert best["recipe_loss"] == "bce_dice"
    assert "_architecture_ms" not in best.index


def test_index_links_the_narrative_above_it_and_lists_pages_that_are_not_studies(tmp_path):
    import json

    (tmp_path / "EXPERIMENTS.md").write_text("story")
    out = tmp_path / "cross_city"
    study = out / "decoder_variants"
    study.mkdir(parents=True)
    (study / "context.json").write_text(
        json.dumps({"study": "decoder_variants", "budget": "smoke", "date": "today"})
    )
    (out / "inference").mkdir()
    (out / "inference" / "README.md").write_text("scales")
    (out / "inference" / "inference.json").write_text("{}")
    write_index(out)
    index = (out / "README.md").read_text()
    assert "[EXPERIMENTS.md](../EXPERIMENTS.md)" in index
    assert "[decoder_variants](decoder_variants/table.md)" in index
    assert "Other pages: [inference](inference/README.md)." in index
    assert "Served model" not in index  # nothing served from this folder yet
    (out / "final").mkdir()
    (out / "final" / "README.md").write_text("per-city quality")
    (out / "MODEL").write_text("final/model.keras\n")
    write_index(out)
    index = (out / "README.md").read_text()
    assert "Served model (`MODEL`): `final/model.keras` ([report](final/README.md))." in index
    assert "[final](final/README.md)" in index  # and among the other pages


def test_a_clone_indexes_a_study_from_its_committed_records_without_the_model(tmp_path):
    import shutil
    from pathlib import Path

    committed = Path(__file__).resolve().parent.parent / "results" / "decoder_variants"
    study = tmp_path / "decoder_variants"
    (study / "trials").mkdir(parents=True)
    shutil.copy(committed / "context.json", study)
    for record in (committed / "trials").glob("*.json"):  # the records git keeps; best/ is not kept
        shutil.copy(record, study / "trials")
    write_index(tmp_path)
    row = next(
        line for line in (tmp_path / "README.md").read_text().splitlines() if "[decoder_variants]" in line
    )
    selected = (committed / "table.md").read_text().split("**Selected:** `")[1].split("`")[0]
    assert f"decoder_variants/{selected}" in row  # the table's own selection, by the same rule
    assert "| -" not in row


def test_rewriting_the_index_keeps_what_a_person_wrote_around_it(tmp_path):
    import json

    study = tmp_path / "loss"
    study.mkdir()
    (study / "context.json").write_text(json.dumps({"study": "loss", "budget": "smoke", "date": "d1"}))
    (tmp_path / "README.md").write_text("# Results\n\nA note written by hand.\n")
    write_index(tmp_path)  # an old page without markers: the note is kept below the index
    page = (tmp_path / "README.md").read_text()
    assert "[loss](loss/table.md)" in page and "A note written by hand." in page
    page = page.replace("<!-- index: end -->", "<!-- index: end -->\n\nA second note.")
    (tmp_path / "README.md").write_text("Above the index.\n" + page)
    (study / "context.json").write_text(json.dumps({"study": "loss", "budget": "smoke", "date": "d2"}))
    write_index(tmp_path)
    page = (tmp_path / "README.md").read_text()
    assert page.startswith("Above the index.\n")
    assert "A second note." in page and "A note written by hand." in page
    assert "d2" in page and "d1" not in page  # the generated part is replaced, not appended
    assert page.count("<!-- index: end -->") == 1
