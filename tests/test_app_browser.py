"""The page at `/` in a real headless Chromium: upload an image (a PNG, a GeoTIFF, a broken
file) and see RGB, mask and overlay with outlines, the count and area, the downloads named
after the image; a second image chosen while the first is predicted wins; the model's
cross-validated scores, never "n/a".

Skipped only when /usr/bin/chromium or /usr/bin/chromedriver is missing.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# A canvas's size and how many of its pixels have red above 127 (the mask's white pixels).
COUNT_WHITE = """
const canvas = document.getElementById(arguments[0]);
const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
let count = 0;
for (let i = 0; i < data.length; i += 4) if (data[i] > 127) count++;
return [canvas.width, canvas.height, count];
"""


@pytest.fixture
def browser(tmp_path):
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        pytest.skip(f"browser test needs {' and '.join(missing)} (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1200,1000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def open_page(browser, url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{url}/")
    name = browser.find_element(By.ID, "model-name")
    WebDriverWait(browser, 30).until(lambda _: name.text != "loading...")
    return name.text


def upload(browser, path):
    """Choose `path` in the page's file input; the page's status once it is done."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.find_element(By.ID, "file").send_keys(str(path))
    overlay = browser.find_element(By.ID, "overlay")
    WebDriverWait(browser, 90).until(lambda _: overlay.get_attribute("data-done"))
    status = browser.find_element(By.ID, "status").text
    assert overlay.get_attribute("data-done") == "ok", status
    return status


def download(browser, link_id: str) -> bytes:
    """The bytes behind a download link (a blob: URL), fetched inside the page."""
    import base64

    encoded = browser.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        fetch(document.getElementById(arguments[0]).href).then((r) => r.arrayBuffer()).then((b) => {
          let text = ""; for (const byte of new Uint8Array(b)) text += String.fromCharCode(byte);
          done(btoa(text));
        });""",
        link_id,
    )
    return base64.b64decode(encoded)


def test_upload_draws_image_mask_overlay_and_outlines(browser, app_server, small_segmenter, tmp_path):
    import io
    import json

    from selenium.webdriver.common.by import By

    from app.options import OutlineOptions
    from zoo.polygons import footprints_geojson

    image = smooth_image(96, 80, seed=11)
    Image.fromarray(image).save(tmp_path / "tile.png")
    probabilities = small_segmenter.probabilities(image)
    expected = small_segmenter.predict(image)
    outlines = footprints_geojson(expected, probabilities, **OutlineOptions().as_dict())  # as served
    assert expected.any() and outlines["count"], "the fixture model should find buildings"

    assert open_page(browser, app_server).startswith("unet_")
    # The drop zone comes first, right under the title.
    first = browser.execute_script("return document.querySelector('h1').nextElementSibling.id")
    assert first == "drop"
    # A compact one-line summary of the model, not a table of raw metrics, and what it saved
    # of its scores (this fixture: no cross-validation), never a placeholder.
    summary = browser.find_element(By.ID, "summary").text
    for part in ("threshold 0.50", "scales 1"):
        assert part in summary, summary
    scores = browser.find_element(By.ID, "scores").text
    assert scores == "scores saved with the model: building IoU 0.123 · mean IoU 0.456", scores
    assert "n/a" not in browser.find_element(By.TAG_NAME, "body").text
    assert not browser.find_elements(By.CSS_SELECTOR, "#model table")

    status = upload(browser, tmp_path / "tile.png")
    assert status.startswith("tile.png: mask 96 x 80 (H x W)")
    overlay = browser.find_element(By.ID, "overlay")
    assert int(overlay.get_attribute("data-positive")) == int(expected.sum())
    assert browser.execute_script(COUNT_WHITE, "mask") == [80, 96, int(expected.sum())]
    assert int(overlay.get_attribute("data-outlines")) == outlines["count"]
    for canvas in ("image", "mask", "overlay"):  # side by side: one row, three columns
        assert browser.find_element(By.ID, canvas).is_displayed()
    tops = {browser.find_element(By.ID, canvas).location["y"] for canvas in ("image", "mask", "overlay")}
    assert len(tops) == 1
    found = browser.find_element(By.ID, "found").text
    count, area = outlines["count"], math.floor(outlines["total_area_px"] + 0.5)  # JavaScript's Math.round
    assert found == f"{count} building{'' if count == 1 else 's'}, total area {area} px²"
    assert "PNG carries no georeferencing" in browser.find_element(By.ID, "coordinates").text
    # Progress was shown while the request ran.
    phases = browser.execute_script("return document.body.dataset.phases").split()
    assert "predicting" in phases and phases[-1] == "done"

    # Downloads named after the image.
    assert browser.find_element(By.ID, "download-geojson").get_attribute("download") == "tile.geojson"
    assert browser.find_element(By.ID, "download-mask").get_attribute("download") == "tile-mask.png"
    mask_png = np.asarray(Image.open(io.BytesIO(download(browser, "download-mask"))))
    np.testing.assert_array_equal(mask_png, expected * 255)
    geojson = json.loads(download(browser, "download-geojson"))
    assert geojson["type"] == "FeatureCollection" and "mask_png" not in geojson
    assert [f["geometry"] for f in geojson["features"]] == json.loads(
        json.dumps([f["geometry"] for f in outlines["features"]])
    )
    browser.save_screenshot(str(tmp_path / "page.png"))
    assert (tmp_path / "page.png").stat().st_size > 0


def test_geotiff_upload_shows_square_metres_and_lon_lat(browser, app_server, small_segmenter, tmp_path):
    import rasterio
    from affine import Affine
    from selenium.webdriver.common.by import By

    image = smooth_image(64, 96, seed=12)
    with rasterio.open(
        tmp_path / "scene.tif",
        "w",
        driver="GTiff",
        height=64,
        width=96,
        count=3,
        dtype="uint8",
        crs="EPSG:32737",
        transform=Affine(0.5, 0, 530_000, 0, -0.5, 9_250_000),
    ) as dataset:
        dataset.write(np.moveaxis(image, -1, 0))
    expected = small_segmenter.predict(image)

    open_page(browser, app_server)
    upload(browser, tmp_path / "scene.tif")  # the browser cannot decode a TIFF: the server's RGB
    assert browser.execute_script(COUNT_WHITE, "mask") == [96, 64, int(expected.sum())]
    assert browser.find_element(By.ID, "found").text.endswith(" m²")
    coordinates = browser.find_element(By.ID, "coordinates").text
    assert "longitude/latitude" in coordinates and "areas in m², in the image's own CRS" in coordinates
    assert "+proj" not in coordinates
    painted = browser.execute_script(COUNT_WHITE, "image")[2]
    assert painted == int((image[..., 0] > 127).sum())  # the RGB panel is the TIFF's pixels


def test_a_refused_upload_shows_the_error(browser, app_server, tmp_path):
    from selenium.webdriver.common.by import By

    (tmp_path / "broken.png").write_bytes(b"not an image")
    open_page(browser, app_server)
    browser.find_element(By.ID, "file").send_keys(str(tmp_path / "broken.png"))
    overlay = browser.find_element(By.ID, "overlay")
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 60).until(lambda _: overlay.get_attribute("data-done"))
    assert overlay.get_attribute("data-done") == "error"
    assert "not a readable PNG, JPEG or TIFF" in browser.find_element(By.ID, "status").text


def test_a_newer_image_wins_over_one_still_being_predicted(browser, app_server, small_segmenter, tmp_path):
    import requests
    from selenium.webdriver.common.by import By

    Image.fromarray(smooth_image(1536, 1536, seed=13)).save(tmp_path / "first.png")
    second = smooth_image(96, 80, seed=14)
    Image.fromarray(second).save(tmp_path / "second.png")

    open_page(browser, app_server)
    chooser = browser.find_element(By.ID, "file")
    chooser.send_keys(str(tmp_path / "first.png"))  # seconds of work for the server
    chooser.send_keys(str(tmp_path / "second.png"))  # chosen while the first is on its way
    status = upload_done(browser)
    assert status.startswith("second.png: mask 96 x 80"), status
    assert browser.execute_script("return document.body.dataset.shown") == "second.png"
    assert browser.execute_script(COUNT_WHITE, "mask") == [80, 96, int(small_segmenter.predict(second).sum())]
    # Once the server has surely answered the first request (its model calls are serial, so a
    # request sent now ends after it), the page still shows the second image.
    with open(tmp_path / "first.png", "rb") as handle:
        requests.post(f"{app_server}/inference?format=png", files={"file": handle}, timeout=300)
    assert browser.execute_script("return document.body.dataset.shown") == "second.png"
    assert browser.execute_script(COUNT_WHITE, "mask")[:2] == [80, 96]
    assert browser.find_element(By.ID, "status").text == status
    assert browser.find_element(By.ID, "download-mask").get_attribute("download") == "second-mask.png"


CROSS_VALIDATED = {  # the shape training.report.cross_validated writes (results/final/model.json)
    "option": "none@1+0.5, 0.5",
    "cities": ["dar_es_salaam_TZ", "kathmandu_NP", "nairobi_KE"],
    "mean": {"building_iou": 0.4697, "mean_iou": 0.6404, "precision": 0.6403, "recall": 0.6343},
    "per_city": {},
    "buildings": {
        "0": {
            city: {"building_precision": 0.1, "building_recall": 0.2, "building_f1": 0.13} for city in "abc"
        },
        "4m2": {
            "a": {"building_precision": 0.5, "building_recall": 0.4, "building_f1": 0.44},
            "b": {"building_precision": 0.7, "building_recall": 0.6, "building_f1": 0.64},
            "c": {"building_precision": 0.6, "building_recall": 0.5, "building_f1": 0.54},
        },
    },
    "pooled_seeds": [0, 1, 2],
}


def test_the_page_shows_the_cross_validated_scores_and_on_which_cities(
    browser, serve, small_segmenter, tmp_path
):
    from selenium.webdriver.common.by import By

    from bench import server
    from zoo import saving

    metadata = {**small_segmenter.metadata, "metrics": {"test": None, "cross_validated": CROSS_VALIDATED}}
    metadata = {
        key: value for key, value in metadata.items() if key not in ("sha256", "model_file", "versions")
    }
    path = saving.save(small_segmenter.model, tmp_path / "model.keras", metadata)
    open_page(browser, serve([*server.APP_COMMAND, "--model", str(path)]))
    scores = browser.find_element(By.ID, "scores").text
    assert scores == (
        "held out: dar_es_salaam_TZ, kathmandu_NP, nairobi_KE (each city predicted by a model trained "
        "without it), mean over the cities: building IoU 0.470 · precision 0.640 · recall 0.634 · "
        "buildings of at least 4 m²: precision 0.600 · recall 0.500 · F1 0.540"
    ), scores
    assert "n/a" not in browser.find_element(By.TAG_NAME, "body").text


def upload_done(browser) -> str:
    """The page's status once the image it is working on is done."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    overlay = browser.find_element(By.ID, "overlay")
    WebDriverWait(browser, 120).until(lambda _: overlay.get_attribute("data-done"))
    status = browser.find_element(By.ID, "status").text
    assert overlay.get_attribute("data-done") == "ok", status
    return status


def smooth_image(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth colour blobs, so the fixture model's mask has outlines rather than speckle."""
    small = np.random.default_rng(seed).integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((width, height), Image.BILINEAR))
