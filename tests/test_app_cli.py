"""The app's commands: the client (`python -m app.client`, its notebook), starting a server
(a missing, corrupted or overridden model; gunicorn; test-time views), and `python -m
app.predict` (GeoJSON and mask of any size, part by part above the window).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest
import requests
from PIL import Image
from test_app import REPO, encoded, post_json, prediction_of, rgb
from test_app_geojson import HALF_METRE, UTM_37S, blobby, direct_collection, geotiff_bytes

from app.model import MAKE_ONE, MAKE_ONE_TIME, MAKE_SMOKE, default_model_path
from zoo.metrics import Confusion, iou_distribution, per_image_iou

# -- the client ------------------------------------------------------------------------------------


def write_folder(root: Path) -> Path:
    """Three images of odd sizes, one JPEG; masks as 0/255 and as 0/1."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(7)
    shapes = [(40, 52, "PNG"), (33, 47, "JPEG"), (64, 64, "PNG")]
    for index, (height, width, fmt) in enumerate(shapes):
        image = rgb(height, width, seed=100 + index)
        mask = np.zeros((height, width), np.uint8)
        top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
        mask[top : top + height // 2, left : left + width // 2] = 255 if index % 2 == 0 else 1
        suffix = ".png" if fmt == "PNG" else ".jpg"
        Image.fromarray(image).save(root / "images" / f"tile{index}{suffix}", format=fmt)
        Image.fromarray(mask, mode="L").save(root / "masks" / f"tile{index}.png")
    return root


def test_client_cli_metrics_equal_direct_zoo_metrics(app_server, small_segmenter, run_module, tmp_path):
    data, out = write_folder(tmp_path / "data"), tmp_path / "report"
    done = run_module("app.client", "--url", app_server, "--data", data, "--out", out, "--samples", 2)
    assert done.returncode == 0, done.stderr
    assert "building IoU = TP/(TP+FP+FN)" in done.stdout and "mean IoU" in done.stdout

    confusion, ious = Confusion(), []
    for image_path in sorted((data / "images").iterdir()):
        image = np.asarray(Image.open(image_path).convert("RGB"))
        truth = np.asarray(Image.open(data / "masks" / f"{image_path.stem}.png")) > 0
        prediction = small_segmenter.predict(image)
        confusion.update(truth, prediction)
        ious.append(per_image_iou(truth, prediction))
    report = json.loads((out / "metrics.json").read_text())
    assert report["images"] == 3
    assert report["metrics"] == confusion.scores()
    assert report["per_image_building_iou"] == iou_distribution(ious)
    assert len(list(out.glob("sample_*.png"))) == 2


def test_client_evaluate_respects_limit(app_server, tmp_path):
    from app import client as app_client

    result = app_client.evaluate(app_server, write_folder(tmp_path / "data"), limit=2)
    assert result["images"] == 2 and set(result["metrics"]) >= {"building_iou", "mean_iou"}
    assert "per-image building IoU" in app_client.markdown_table(result)


def test_client_reads_folders_like_the_harness(app_server, small_segmenter, run_module, tmp_path):
    from app import client as app_client

    data = write_folder(tmp_path / "data")
    # A TIFF mask, which the data layer reads and the client used not to.
    mask = np.asarray(Image.open(data / "masks" / "tile2.png"))
    (data / "masks" / "tile2.png").unlink()
    Image.fromarray(mask).save(data / "masks" / "tile2.tif")
    result = app_client.evaluate(app_server, data)
    image = np.asarray(Image.open(data / "images" / "tile2.png").convert("RGB"))
    assert result["images"] == 3
    assert result["per_image"][2]["building_iou"] == per_image_iou(mask > 0, small_segmenter.predict(image))

    # A bad mask stops the run before any request (the URL answers nothing), naming the file.
    Image.fromarray(np.full((64, 64), 7, np.uint8)).save(data / "masks" / "tile2.tif")
    done = run_module("app.client", "--url", "http://127.0.0.1:9", "--data", data)
    assert done.returncode == 1
    assert str(data / "masks" / "tile2.tif") in done.stderr and "Traceback" not in done.stderr


def test_error_overlay_colours():
    from app.client import ERROR_COLOURS, error_overlay

    overlay = error_overlay(np.array([[1, 1, 0, 0]]), np.array([[1, 0, 1, 0]]))
    assert [tuple(p) for p in overlay[0]] == [ERROR_COLOURS[k] for k in ("tp", "fn", "fp", "tn")]


def test_notebook_is_valid_and_uses_the_client():
    import nbformat

    notebook = nbformat.read(REPO / "app" / "client.ipynb", as_version=4)
    nbformat.validate(notebook)
    code = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    assert "from app import client" in code and "client.evaluate(" in code
    assert "client.markdown_table(" in code and "client.draw_side_by_side(" in code


# -- starting, and refusing to start ---------------------------------------------------------------


def test_missing_model_exits_naming_the_command_that_makes_one(run_module, tmp_path):
    done = run_module("app", "--model", tmp_path / "absent.keras", "--port", 0, timeout=30)
    assert done.returncode != 0
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1  # one message
    assert str(tmp_path / "absent.keras") in done.stderr
    assert f"`{MAKE_ONE}` ({MAKE_ONE_TIME}" in done.stderr and f"`{MAKE_SMOKE}`" in done.stderr


def test_the_command_in_the_message_writes_the_served_model(tmp_path):
    """Both commands parse, and MAKE_ONE's --out holds the model that a results folder without
    a MODEL file serves (the fit also points MODEL at it)."""
    import shlex

    from training import fit

    for command in (MAKE_ONE, MAKE_SMOKE):
        words = shlex.split(command)
        assert words[:3] == ["python", "-m", "training.fit"]
        fit.parse_args(words[3:])
    out = fit.parse_args(shlex.split(MAKE_ONE)[3:]).out
    assert default_model_path(tmp_path) == tmp_path / out.relative_to("results") / "model.keras"


def test_default_model_follows_results_pointer(tmp_path):
    assert default_model_path(tmp_path) == tmp_path / "final/model.keras"
    (tmp_path / "MODEL").write_text("other_study/best/model.keras\n")
    assert default_model_path(tmp_path) == tmp_path / "other_study/best/model.keras"


@pytest.mark.slow
def test_corrupted_model_is_refused(small_model_file, run_module, tmp_path):
    copy = tmp_path / "model.keras"
    data = bytearray(small_model_file.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(byte ^ 0xFF for byte in data[middle : middle + 16])
    copy.write_bytes(bytes(data))
    copy.with_suffix(".json").write_text(small_model_file.with_suffix(".json").read_text())
    done = run_module("app", "--model", copy, "--port", 0)
    assert done.returncode != 0
    assert f"refusing to serve {copy}" in done.stderr and "sha256" in done.stderr


def test_gunicorn_with_two_workers_serves_the_views_zoo_tta_names(small_model_file, small_segmenter, serve):
    from zoo.predict import Segmenter

    url = serve(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-w",
            "2",
            "-b",
            "127.0.0.1:{port}",
            "--timeout",
            "120",
            "app.wsgi:app",
        ],
        ZOO_MODEL=str(small_model_file),
        ZOO_TTA="flips",
    )
    image = rgb(37, 61, seed=9)
    flipped = Segmenter(small_segmenter.model, tta="flips").predict(image)
    assert (flipped != small_segmenter.predict(image)).any()  # else the override would go unseen
    for _ in range(2):  # whichever worker answers
        np.testing.assert_array_equal(prediction_of(post_json(url, {"image": image})), flipped)
    serving = requests.get(f"{url}/model", timeout=10).json()["serving"]
    assert serving["tta"] == "flips" and serving["tta_of_model"] == "none"


def test_tta_override_replaces_the_models_views_and_says_so(small_model_file, small_segmenter):
    from app.model import ModelUnavailable, load_segmenter, override_tta
    from zoo.predict import Segmenter

    image = rgb(64, 96, seed=4)  # (load_for_serving would also freeze this worker's heap)
    served = override_tta(load_segmenter(small_model_file, "keras"), "dihedral")
    assert served.tta == "dihedral" and served.metadata["serving"]["tta_of_model"] == "none"
    np.testing.assert_array_equal(
        served.predict(image), Segmenter(small_segmenter.model, tta="dihedral").predict(image)
    )
    kept = override_tta(load_segmenter(small_model_file, "keras"), "model")
    assert kept.tta == "none" and "tta_of_model" not in kept.metadata["serving"]
    choices = "model, none, rot180, transpose, flips, dihedral"
    with pytest.raises(ModelUnavailable, match=f"tta must be one of {choices}"):
        override_tta(kept, "rot90")
    from app.model import load_for_serving

    with pytest.raises(ModelUnavailable, match="tta must be"):  # said before looking for the model
        load_for_serving(small_model_file.parent / "no_such.keras", "keras", "rot90")


# -- python -m app.predict -------------------------------------------------------------------------


@pytest.mark.slow
def test_predict_cli_writes_lon_lat_geojson_and_the_mask(
    small_model_file, small_segmenter, run_module, tmp_path
):
    image = blobby(128, 160, seed=28)
    (tmp_path / "scene.tif").write_bytes(geotiff_bytes(image))
    out, mask_path = tmp_path / "footprints.geojson", tmp_path / "mask.png"
    done = run_module(
        "app.predict",
        tmp_path / "scene.tif",
        "--out",
        out,
        "--mask",
        mask_path,
        "--model",
        small_model_file,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    collection = json.loads(out.read_text())
    expected = direct_collection(small_segmenter, image, HALF_METRE, UTM_37S)
    assert collection["features"] == orjson.loads(orjson.dumps(expected["features"]))
    assert collection["georeferenced"] and collection["image"]["file"] == "scene.tif"
    assert f"{collection['count']} buildings, {collection['total_area_m2']:.1f} m²" in done.stdout
    np.testing.assert_array_equal(np.asarray(Image.open(mask_path)), small_segmenter.predict(image) * 255)


@pytest.mark.slow
def test_predict_cli_on_a_png_says_pixels_applies_its_views_and_names_a_bad_file(
    small_model_file, small_segmenter, run_module, tmp_path
):
    picture = blobby(64, 64, seed=29)
    (tmp_path / "tile.png").write_bytes(encoded(picture))
    done = run_module(
        "app.predict",
        tmp_path / "tile.png",
        "--model",
        small_model_file,
        "--tta",
        "dihedral",
        "--mask",
        tmp_path / "mask.png",
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    collection = json.loads((tmp_path / "tile.geojson").read_text())
    assert collection["crs"] is None and "PNG carries no georeferencing" in collection["why_pixels"]
    # --tta replaces the model's views (none): the mask is the eight views' average, thresholded
    from zoo.predict import Segmenter

    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / "mask.png")),
        Segmenter(small_segmenter.model, tta="dihedral").predict(picture) * 255,
    )
    (tmp_path / "broken.tif").write_bytes(b"II*\x00 not really")
    done = run_module("app.predict", tmp_path / "broken.tif", "--model", small_model_file)
    assert done.returncode == 1 and "broken.tif' is not a readable" in done.stderr


def test_a_large_tiff_predicted_in_parts_equals_the_whole(tmp_path):
    # A model that looks at each pixel alone predicts the same in parts as whole, so here the
    # parts, their offsets and the joined buildings must give exactly the whole scene's outlines.
    from shapely.geometry import shape

    from app.predict import scene_footprints
    from zoo.polygons import footprints_geojson

    class PerPixel:
        threshold, metadata, model = 0.5, {"name": "per-pixel stub"}, None

        def probabilities(self, image):
            return image[..., 0].astype(np.float32) / 255

    image = blobby(150, 170, seed=30).copy()
    image[..., 0] = np.where(image[..., 0] > 128, 230, 20)  # buildings of every shape
    (tmp_path / "big.tif").write_bytes(geotiff_bytes(image))
    probabilities = PerPixel().probabilities(image)
    mask = (probabilities >= 0.5).astype(np.uint8)
    from affine import Affine

    whole = footprints_geojson(mask, probabilities, Affine(*HALF_METRE), UTM_37S, tolerance=0)
    parts, joined_mask = scene_footprints(
        PerPixel(), tmp_path / "big.tif", window=64, tolerance=0, keep_mask=True
    )
    np.testing.assert_array_equal(joined_mask, mask)
    assert parts["parts"] == {"count": 12, "window": 64, "margin": 4}  # 3 x 4 parts of 56 px
    assert parts["count"] == whole["count"] >= 3 and parts["source_crs"] == UTM_37S
    for joined, alone in zip(parts["features"], whole["features"]):
        a, b = shape(joined["geometry"]), shape(alone["geometry"])
        # In lon/lat a vertex a join adds on a straight edge bends it by ~1e-8 of the area.
        assert a.symmetric_difference(b).area < 1e-6 * b.area
        assert joined["properties"]["mask_pixels"] == alone["properties"]["mask_pixels"]
        assert joined["properties"]["area_m2"] == pytest.approx(alone["properties"]["area_m2"])
        assert joined["properties"]["mean_probability"] == pytest.approx(
            alone["properties"]["mean_probability"], abs=1e-4
        )


def test_predict_cli_goes_in_parts_above_the_window(small_model_file, small_segmenter, run_module, tmp_path):
    image = blobby(200, 120, seed=31)
    (tmp_path / "scene.tif").write_bytes(geotiff_bytes(image))
    done = run_module(
        "app.predict",
        tmp_path / "scene.tif",
        "--window",
        128,
        "--model",
        small_model_file,
        "--mask",
        tmp_path / "mask.png",
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    collection = json.loads((tmp_path / "scene.geojson").read_text())
    assert collection["parts"]["count"] == 4 and " in 4 parts " in done.stdout
    assert collection["georeferenced"] and collection["count"] > 0
    # Context differs near the joins, so the mask may differ there, but barely.
    whole = small_segmenter.predict(image)
    assert (np.asarray(Image.open(tmp_path / "mask.png")) > 0).mean() == pytest.approx(whole.mean(), abs=0.02)
