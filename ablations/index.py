"""OUT/README.md, the index of every study under OUT: one row per study (its selected
configuration and test scores), where OUT/MODEL points, and the other pages beside them.

The generated part sits between two HTML comments; text written by hand around it is kept
when `python -m ablations.run` rewrites the index."""

from __future__ import annotations

import json
from pathlib import Path

from tabulate import tabulate

from ablations import report
from zoo.files import write_text_atomic

BEGIN = "<!-- index: written by python -m ablations.run; edit outside these markers -->"
END = "<!-- index: end -->"


def _selected(study_dir: Path, context: dict) -> tuple[str, dict]:
    """The study's selected configuration and its test scores: from best/model.json where the
    study ran here, else from its committed trial records by the same rule (a clone has the
    records, not the model), with the trial's own test scores."""
    meta_file = study_dir / "best" / "model.json"
    if meta_file.is_file():
        best = json.loads(meta_file.read_text())
        return best.get("name", "-"), best.get("metrics", {}).get("test", {})
    records, _ = report.full_schedule_records(report.load_records(study_dir))
    if not records:
        return "-", {}
    best = report.best_record(records, report.select_best(report.summarise(report.trials_frame(records))))
    return f"{context['study']}/{best['variant']}", best["metrics"]


def _served_line(out: Path) -> list[str]:
    """Where OUT/MODEL points (the model the server loads), linked to its folder's report."""
    pointer = out / "MODEL"
    if not pointer.is_file():
        return []
    served = pointer.read_text().strip()
    folder = Path(served).parent
    page = f" ([report]({folder.as_posix()}/README.md))" if (out / folder / "README.md").is_file() else ""
    return ["", f"Served model (`MODEL`): `{served}`{page}."]


def write_index(out: Path) -> None:
    """OUT/README.md: one line per study run so far, from each study's context and table."""
    out = Path(out)
    narrative = next(
        (link for link in ("EXPERIMENTS.md", "../EXPERIMENTS.md") if (out / link).is_file()), None
    )
    lines = [
        "# Results",
        "",
        "Written by `python -m ablations.run`; one row per study."
        + (f" Hand-written narrative: [EXPERIMENTS.md]({narrative})." if narrative else ""),
        "",
    ]
    rows = []
    for context_file in sorted(out.glob("*/context.json")):
        context = json.loads(context_file.read_text())
        if "study" not in context:  # not a study's folder
            continue
        name, test = _selected(context_file.parent, context)
        rows.append(
            {
                "study": f"[{context_file.parent.name}]({context_file.parent.name}/table.md)",
                "budget": context["budget"],
                "date": context["date"],
                "trials": len(list((context_file.parent / "trials").glob("*.json"))),
                "selected": name,
                "test building IoU": f"{test['building_iou']:.3f}" if test else "-",
                "test precision / recall": f"{test['precision']:.3f} / {test['recall']:.3f}" if test else "-",
            }
        )
    lines.append(tabulate(rows, headers="keys", tablefmt="github") if rows else "(no studies yet)")
    lines += _served_line(out)
    pages = [
        p.parent.name for p in sorted(out.glob("*/README.md")) if not (p.parent / "context.json").is_file()
    ]
    if pages:  # evaluation pages beside the studies (inference scales, error analysis, ...)
        lines += ["", "Other pages: " + ", ".join(f"[{name}]({name}/README.md)" for name in pages) + "."]
    write_text_atomic(out / "README.md", with_hand_notes_kept(out / "README.md", "\n".join(lines)))


def with_hand_notes_kept(page: Path, index: str) -> str:
    """The page with its generated part (between the markers) replaced by `index`: whatever
    a person wrote around it stays. A page without markers (an old one) keeps its text below
    the generated index, so nothing written by hand is lost."""
    generated = f"{BEGIN}\n{index}\n{END}"
    if not page.is_file():
        return generated + "\n"
    text = page.read_text()
    if BEGIN in text and END in text:
        before, rest = text.split(BEGIN, 1)
        return before + generated + rest.split(END, 1)[1]
    return generated + "\n\n" + text
