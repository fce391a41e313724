"""What the README and docs/ promise holds: the commands they name run, their links lead somewhere,
the README's results table says what the file it cites says, and its statement of the served
recipe is `training.recipe.SERVED`. Fast: files and module specs only, no TensorFlow."""

from __future__ import annotations

import importlib.machinery
import json
import re
from pathlib import Path

import pytest

from training.recipe import SERVED

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
EXPERIMENTS = ROOT / "results" / "EXPERIMENTS.md"
LINKED = [*PAGES, ROOT / "results" / "README.md", EXPERIMENTS]  # pages whose links are checked
TAG = "research-2026-12"  # where the deleted probes live
NOT_OURS = {"pytest", "venv", "pip"}  # `python -m` of tools, not of this repository
PACKAGES = ("zoo", "data", "training", "ablations", "app", "bench")  # where runnable modules live
MAIN = re.compile(r"^if __name__ == [\"']__main__[\"']:", re.MULTILINE)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
SETUP = [
    "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt && mkdir -p ~/.keras/models && "
    "cp ../shared/weights/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5 ~/.keras/models/",
    ".venv/bin/python -m training.fit --data ../shared/data/oam_buildings",
    ".venv/bin/python -m pytest -q",
]
# README results table: column header -> metric key of the cited file's per-city rows.
COLUMNS = {
    "precision": "precision",
    "recall": "recall",
    "building IoU": "building_iou",
    "mean IoU": "mean_iou",
}


def spec_of(name: str):
    """The spec of module `name` in this repository, found without importing its parents (their
    imports may load TensorFlow)."""
    spec, path = None, [str(ROOT)]
    for part in name.split("."):
        spec = importlib.machinery.PathFinder.find_spec(part, path)
        if spec is None:
            return None
        path = list(spec.submodule_search_locations or [])
    return spec


def runnable(name: str) -> str | None:
    """Why `python -m name` would not run, or None when it would."""
    spec = spec_of(name)
    if spec is None:
        return "no such module"
    if spec.submodule_search_locations is not None:  # a package runs its __main__.py
        folders = [Path(p) for p in spec.submodule_search_locations]
        has_main = any((f / "__main__.py").is_file() for f in folders)
        return None if has_main else "a package without __main__.py"
    return None if MAIN.search(Path(spec.origin).read_text()) else "a module without a __main__ entry"


def modules_named(text: str) -> set[str]:
    return set(re.findall(r"python3? -m ([A-Za-z_][\w.]*)", text)) - NOT_OURS


def runnable_modules() -> set[str]:
    """Every module of ours that `python -m` runs."""
    found = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if path.name == "__main__.py":
                found.add(".".join(parts[:-1]))
            elif path.name != "__init__.py" and MAIN.search(path.read_text()):
                found.add(".".join(parts))
    return found


def outside_code(text: str) -> list[str]:
    """The lines of a markdown page outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def anchor(heading: str) -> str:
    """GitHub's anchor for a markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lstrip("#").strip().lower())
    return text.replace(" ", "-")


def table_after(lines: list[str], start: int) -> list[list[str]]:
    """The cells of the first markdown table at or after line `start`, header first, without the
    separator row, each cell stripped of bold and code marks."""
    rows, seen = [], False
    for line in lines[start:]:
        if line.startswith("|"):
            seen = True
            cells = [c.strip().strip("*`").strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):
                rows.append(cells)
        elif seen:
            break
    return rows


def served_paragraph(text: str) -> str | None:
    match = re.search(r"^Served: (.+?)(?:\n\n|\Z)", text, re.MULTILINE | re.DOTALL)
    return " ".join(match.group(1).split()) if match else None


# ---- commands -------------------------------------------------------------------------------


def test_the_runnable_check_tells_a_script_from_a_library():
    assert runnable("app") is None and runnable("training.fit") is None
    assert runnable("training.no_such_module") == "no such module"
    assert runnable("training.heldout") == "a module without a __main__ entry"
    assert runnable("training") == "a package without __main__.py"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_module_a_page_runs_exists_and_runs_as_a_script(page):
    broken = {name: why for name in sorted(modules_named(page.read_text())) if (why := runnable(name))}
    assert not broken, f"{page.relative_to(ROOT)} runs modules that cannot run: {broken}"


def test_the_readme_names_the_product_commands():
    product = {"training.fit", "app", "app.predict", "app.client", "zoo.export"}
    assert product <= modules_named(README.read_text())


def test_every_runnable_module_is_documented():
    documented = set().union(*(modules_named(page.read_text()) for page in PAGES))
    missing = runnable_modules() - documented
    assert not missing, f"runnable with `python -m` but in neither README.md nor docs/: {sorted(missing)}"


def test_the_readme_sets_up_trains_and_tests_in_three_commands():
    block = re.search(r"```bash\n(.*?)```", README.read_text(), re.DOTALL).group(1)
    assert block.splitlines() == SETUP


# ---- shape and links -------------------------------------------------------------------------


def test_the_readme_is_a_front_door():
    text = README.read_text()
    lines = len(text.splitlines())
    assert lines <= 150, f"README.md has {lines} lines; move detail to docs/"
    long = [line for line in outside_code(text) if len(line) > 110 and not line.startswith("|")]
    assert not long, f"README prose lines over 110 characters: {long}"


@pytest.mark.parametrize("page", LINKED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file(page):
    broken = []
    for target in LINK.findall("\n".join(outside_code(page.read_text()))):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path, _, fragment = target.partition("#")
        file = (page.parent / path).resolve()
        if not file.exists():
            broken.append(target)
        elif fragment and file.suffix == ".md":
            headings = [anchor(line) for line in file.read_text().splitlines() if line.startswith("#")]
            if fragment not in headings:
                broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)} links to what does not exist: {broken}"


def test_experiments_open_with_one_row_for_every_step_and_name_the_tag():
    text = EXPERIMENTS.read_text()
    lines = text.splitlines()
    steps = [int(n) for n in re.findall(r"^## (\d+)\. ", text, re.MULTILINE)]
    summary = lines.index(next(line for line in lines if line.startswith("## Summary")))
    assert summary < lines.index(next(line for line in lines if re.match(r"## \d+\. ", line)))
    rows = table_after(lines, summary)
    assert rows[0][:4] == ["step", "question", "answer", "decision"]
    assert [int(row[0]) for row in rows[1:]] == steps
    assert TAG in "\n".join(lines[: summary + len(rows) + 20])
    assert any(TAG in page.read_text() for page in DOCS)


# ---- numbers and the served recipe -----------------------------------------------------------


def cited_rows() -> tuple[list[list[str]], dict, dict]:
    """The README's results table, the per-city rows of the file it cites, and the dict that holds
    them (the cited key path: `LINK-to-a-json`, `dotted.key.path`)."""
    lines = README.read_text().splitlines()
    for number, line in enumerate(lines):
        match = re.search(r"\]\(([^)]+\.json)\),\s*`([\w.]+)`", line)
        if match:
            break
    else:
        raise AssertionError("the README cites no JSON file and key path for its results table")
    document = json.loads((ROOT / match.group(1)).read_text())
    *parents, last = match.group(2).split(".")
    holder = document
    for key in parents:
        holder = holder[key]
    return table_after(lines, number), holder[last], holder


def test_each_number_of_the_readme_results_table_is_the_cited_files():
    table, per_city, _ = cited_rows()
    header, rows = table[0], table[1:]
    assert set(COLUMNS) <= set(header), f"results table columns {header}"
    mean = {key: sum(row[key] for row in per_city.values()) / len(per_city) for key in COLUMNS.values()}
    shown = set()
    for row in rows:
        name = row[0]
        expected = mean if name == "mean" else per_city[name]
        shown.add(name)
        for column, key in COLUMNS.items():
            cell = row[header.index(column)]
            file = f"{expected[key]:.4f}"
            assert float(cell) == round(expected[key], 3), f"{name}, {column}: README {cell}, file {file}"
    assert shown == {*per_city, "mean"}, f"the table shows {sorted(shown)}; the file holds {sorted(per_city)}"


def test_the_readme_strict_estimate_is_the_cited_files():
    _, _, validated = cited_rows()
    rows = validated["per_city_option_left_out"]
    stated = re.search(
        r"\(`per_city_option_left_out`\), the mean building IoU is (\d+\.\d+)",
        " ".join(README.read_text().split()),
    )
    assert stated, "the README states no mean building IoU for `per_city_option_left_out`"
    assert float(stated.group(1)) == round(sum(r["building_iou"] for r in rows.values()) / len(rows), 3)


def test_the_readme_building_f1_is_the_cited_files():
    _, _, validated = cited_rows()
    rows = validated["buildings"]["4m2"]
    stated = re.search(r"the mean building F1 is (\d+\.\d+)", " ".join(README.read_text().split()))
    assert stated, "the README states no mean building F1"
    assert float(stated.group(1)) == round(sum(r["building_f1"] for r in rows.values()) / len(rows), 3)


def test_the_readme_tutorial_number_is_the_per_city_tables():
    text = " ".join(README.read_text().split())
    stated = re.search(
        r"tutorial's recipe, trained the same way, scores a mean building IoU of ([\d.]+) "
        r"\(\[[^\]]*\]\(([^)]+)\)\)",
        text,
    )
    assert stated, "the README states no tutorial-recipe number with its source"
    lines = (ROOT / stated.group(2)).read_text().splitlines()
    table = table_after(lines, 0)
    column = table[0].index("tutorial building IoU")
    mean = next(row for row in table[1:] if row[0].startswith("mean"))
    assert float(stated.group(1)) == float(mean[column])


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_a_pages_statement_of_the_served_recipe_is_served(page):
    served = served_paragraph(page.read_text())
    if served is None:
        assert page != README, "the README states the served recipe in a paragraph opening 'Served: '"
        return
    decoder = SERVED.decoder

    def stated(pattern: str) -> str:
        match = re.search(pattern, served)
        assert match, f"{page.name}: 'Served:' does not state {pattern!r}: {served}"
        return match.group(1)

    assert float(stated(r"threshold ([\d.]+)")) == SERVED.threshold
    scales = re.findall(r"[\d.]+", stated(r"scales ([\d.]+(?:(?:, | and )[\d.]+)*)"))
    assert tuple(map(float, scales)) == tuple(SERVED.scales)
    assert stated(r"augmentation `(\w+)`") == SERVED.training.augmentation
    assert stated(r"test-time views `(\w+)`") == SERVED.tta
    assert int(stated(r"(\d+) epochs")) == SERVED.epochs
    assert stated(r"(\w+) upsampling") == decoder.upsampler
    assert stated(r"(\w+) skips") == decoder.skip
    assert float(stated(r"width ([\d.]+)")) == decoder.width
    assert int(stated(r"output stride (\d+)")) == decoder.output_stride
