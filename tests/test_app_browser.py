"""The page at `/` in a real headless Chromium: upload an image, see its mask drawn.

Skipped only when /usr/bin/chromium or /usr/bin/chromedriver is missing.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Count the overlay canvas's non-transparent pixels, i.e. the building pixels drawn.
COUNT_OPAQUE = """
const canvas = document.getElementById("overlay");
const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
let count = 0;
for (let i = 3; i < data.length; i += 4) if (data[i] > 0) count++;
return [canvas.width, canvas.height, count];
"""


@pytest.fixture
def browser(tmp_path):
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        pytest.skip(f"browser test needs {' and '.join(missing)} (apt-get install chromium "
                    "chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--no-first-run", "--window-size=1200,1000",
                     f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_upload_draws_the_mask_overlay(browser, app_server, small_segmenter, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    image = np.random.default_rng(11).integers(0, 256, (96, 80, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "tile.png")
    expected = small_segmenter.predict(image)
    assert expected.any(), "the fixture model should find some building pixels"

    browser.get(f"{app_server}/")
    name = browser.find_element(By.ID, "model-name")
    WebDriverWait(browser, 30).until(lambda _: name.text != "loading...")
    assert name.text.startswith("unet_")

    browser.find_element(By.ID, "file").send_keys(str(tmp_path / "tile.png"))
    overlay = browser.find_element(By.ID, "overlay")
    WebDriverWait(browser, 60).until(lambda _: overlay.get_attribute("data-done"))
    status = browser.find_element(By.ID, "status").text
    assert overlay.get_attribute("data-done") == "ok", status
    assert status.startswith("mask 96 x 80 (H x W)")
    assert int(overlay.get_attribute("data-positive")) == int(expected.sum())
    assert browser.execute_script(COUNT_OPAQUE) == [80, 96, int(expected.sum())]

    assert "0.123" in browser.find_element(By.ID, "metrics").text  # metrics from /model
    browser.save_screenshot(str(tmp_path / "page.png"))
    assert (tmp_path / "page.png").stat().st_size > 0
