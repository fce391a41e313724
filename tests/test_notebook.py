"""app/client.ipynb runs headless against a real server (`app_server`), as a fresh clone runs it:
the URL and the data folder come from its environment variables, nothing else is set."""

from __future__ import annotations

from pathlib import Path

import nbformat
import numpy as np
from nbclient import NotebookClient
from PIL import Image

from app.client import BUILDING_LABELS

NOTEBOOK = Path(__file__).resolve().parent.parent / "app" / "client.ipynb"


def tiles(root: Path, count: int = 3) -> Path:
    """`count` random 32x32 tiles, each mask two separate buildings."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(5)
    for index in range(count):
        mask = np.zeros((32, 32), np.uint8)
        mask[2:12, 3:15] = mask[18:30, 20:28] = 255
        image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "images" / f"tile{index}.png")
        Image.fromarray(mask, mode="L").save(root / "masks" / f"tile{index}.png")
    return root


def outputs(notebook, kind: str) -> list:
    return [
        output for cell in notebook.cells for output in cell.get("outputs", ()) if output.output_type == kind
    ]


def test_notebook_executes_and_shows_building_metrics(app_server, tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_SERVER_URL", app_server)  # the kernel inherits this environment
    monkeypatch.setenv("OAM_DATA", str(tiles(tmp_path / "data")))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # Run where Jupyter runs it, inside app/; a failing cell raises CellExecutionError.
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    ).execute()

    printed = "".join(output.text for output in outputs(notebook, "stream"))
    assert f"3 images from {tmp_path / 'data'}, served by {app_server}" in printed
    shown = outputs(notebook, "display_data")
    tables = "".join(output.data.get("text/markdown", "") for output in shown)
    for column in ("building IoU = TP/(TP+FP+FN)", "true buildings", *BUILDING_LABELS.values()):
        assert column in tables
    assert sum("image/png" in output.data for output in shown) == 2  # SAMPLES figures


def test_notebook_defaults_work_on_a_fresh_clone():
    settings = nbformat.read(NOTEBOOK, as_version=4).cells[1].source
    assert 'os.environ.get("ZOO_SERVER_URL", "http://127.0.0.1:8000")' in settings
    assert 'os.environ.get("OAM_DATA", "../shared/data/oam_buildings")' in settings
    assert "LIMIT = 8" in settings  # a quick run over the shared tiles
