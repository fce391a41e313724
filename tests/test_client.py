"""app.client: building metrics beside the pixel metrics, through a real server (`app_server`),
and one line, not a traceback, when no server answers or the server answers with an error."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app import client
from zoo.metrics import BuildingCounts, Confusion

BUILDING_COLUMNS = ("building precision", "building recall", "building F1", "matched IoU")


def building_folder(root: Path, count: int = 3, size: int = 48) -> Path:
    """`count` random RGB tiles, each mask a few separate rectangles (0/255)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(3)
    for index in range(count):
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        mask = np.zeros((size, size), np.uint8)
        for top, left in ((2, 2), (2, 26), (26, 10)):
            height, width = rng.integers(6, 18, 2)
            mask[top : top + height, left : left + width] = 255
        Image.fromarray(image).save(root / "images" / f"tile{index}.png")
        Image.fromarray(mask, mode="L").save(root / "masks" / f"tile{index}.png")
    return root


def test_cli_reports_building_metrics_equal_to_zoo_metrics(app_server, small_segmenter, run_module, tmp_path):
    data, out = building_folder(tmp_path / "data"), tmp_path / "report"
    done = run_module("app.client", "--url", app_server, "--data", data, "--out", out, "--samples", 0)
    assert done.returncode == 0, done.stderr
    for column in BUILDING_COLUMNS:
        assert column in done.stdout

    confusion, buildings = Confusion(), BuildingCounts()
    for image_path in sorted((data / "images").iterdir()):
        image = np.asarray(Image.open(image_path).convert("RGB"))
        truth = np.asarray(Image.open(data / "masks" / image_path.name)) > 0
        prediction = small_segmenter.predict(image)
        confusion.update(truth, prediction)
        buildings.update(truth, prediction)
    report = json.loads((out / "metrics.json").read_text())
    assert report["metrics"] == confusion.scores()
    assert report["building_metrics"] == buildings.scores()
    assert report["building_counts"]["tp"] == buildings.tp
    assert report["building_counts"]["fn"] == buildings.fn == 9 - buildings.tp  # 3 per tile
    assert sum(row["buildings"]["fp"] for row in report["per_image"]) == buildings.fp


def test_min_pixels_reaches_the_building_counts(app_server, tmp_path):
    data = building_folder(tmp_path / "data", count=1)
    everything = client.evaluate(app_server, data)["building_counts"]
    large_only = client.evaluate(app_server, data, min_pixels=10**6)["building_counts"]
    assert large_only == {"tp": 0, "fp": 0, "fn": 0, "matched_iou_sum": 0.0, "min_pixels": 10**6}
    assert everything["tp"] + everything["fn"] == 3


def test_no_server_is_one_line_and_a_failure(run_module, tmp_path):
    data = building_folder(tmp_path / "data", count=1)
    with socket.socket() as probe:  # a port bound and released: nothing listens there
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    done = run_module("app.client", "--url", url, "--data", data)
    assert done.returncode == 1
    assert done.stderr.strip() == f"error: no server answers at {url} (start one with `python -m app`)"


def test_a_url_without_a_scheme_is_refused_naming_the_option(run_module, tmp_path):
    done = run_module("app.client", "--url", "127.0.0.1:8000", "--data", tmp_path)
    assert done.returncode == 2 and "--url must start with http://" in done.stderr


class Refusing(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (the name http.server calls)
        body = b'{"error": "field image: not an RGB array"}'
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # keep the test output quiet
        pass


def test_a_server_error_is_one_line_naming_the_server_and_its_reason(tmp_path):
    data = building_folder(tmp_path / "data", count=1)
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refusing) as refusing:
        threading.Thread(target=refusing.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{refusing.server_address[1]}"
        with pytest.raises(SystemExit) as stopped:
            client.main(["--url", url, "--data", str(data)])
        refusing.shutdown()
    assert str(stopped.value) == f"error: {url} answered 400: field image: not an RGB array"


def test_building_table_shows_counts_and_scores():
    counts = BuildingCounts(tp=3, fp=1, fn=2, matched_iou_sum=2.4)
    result = {
        "images": 2,
        "building_metrics": counts.scores(),
        "building_counts": {**vars(counts), "min_pixels": 20},
    }
    table = client.building_table(result)
    assert "under 20 pixels ignored" in table and "IoU >= 0.5" in table
    header, _, row = table.splitlines()[-3:]
    assert [cell.strip() for cell in header.strip("|").split("|")] == [
        "true buildings",
        "predicted",
        "matched (TP)",
        *BUILDING_COLUMNS,
    ]
    assert [cell.strip() for cell in row.strip("|").split("|")] == [
        "5",
        "4",
        "3",
        "0.7500",
        "0.6000",
        "0.6667",
        "0.8000",
    ]
