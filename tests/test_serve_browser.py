"""The web page of ``autoscale serve`` in a real browser: headless Chromium (Debian's ``chromium``
+ ``chromium-driver``, driven by selenium; nothing downloads a browser) opens the page of a real
``autoscale serve`` process on a free loopback port, uploads two real photos through the file
input, waits for their counts and checks them against the API's answers for the same files, the
overlay pictures, the downloads, keyboard focus and the browser console (no CSP violation, no
script error). A screenshot is saved in the test's tmp dir. Skips only where no browser is found."""
from __future__ import annotations

import json
import os
import shutil
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="autoscale serve needs the [serve] extra (python3 dev.py test installs it)")
selenium = pytest.importorskip("selenium", reason="selenium is not installed (the [dev] extra)")

from test_serve import start_server, stop_server, train_checkpoint  # noqa: E402
from conftest import SHARED_DATA  # noqa: E402

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _find_browser() -> tuple[str, str] | None:
    driver = shutil.which("chromedriver") or next(
        (p for p in ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver") if os.path.isfile(p)), None)
    browser = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    return (browser, driver) if browser and driver else None


@pytest.fixture(scope="module")
def browser():
    found = _find_browser()
    if found is None:
        pytest.skip("no Chromium + chromedriver found (Debian: apt-get install chromium chromium-driver; "
                    ".ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never fetch a browser or driver
    opts = webdriver.ChromeOptions()
    opts.binary_location = found[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1100,1400", "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=found[1]), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server(synth, tmp_path_factory):
    ckpt = train_checkpoint(synth, tmp_path_factory.mktemp("browser_ckpt") / "run", "regression")
    proc, url = start_server(ckpt)
    yield url
    log = stop_server(proc)
    assert "POST /v1/count 200" in log, log[-2000:]


def api_count(url: str, photo: Path) -> float:
    req = urllib.request.Request(url + "/v1/count", data=photo.read_bytes(), method="POST",
                                 headers={"Content-Type": "image/jpeg"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())["count"]


def test_page_counts_uploaded_photos_like_the_api(browser, server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    photos = [SHARED_DATA / "shanghaitech" / p for p in ("part_B/test_data/images/IMG_1.jpg",
                                                         "part_A/train_data/images/IMG_153.jpg")]
    if not all(p.is_file() for p in photos):
        pytest.skip(f"ShanghaiTech photos not found under {SHARED_DATA}; set AUTOSCALE_SHARED_DATA")
    browser.get(server + "/")
    wait = WebDriverWait(browser, 90)
    wait.until(lambda d: "backbone vgg16" in d.find_element(By.ID, "model").text)

    # Keyboard: the first Tab stop is the file chooser (the hidden token form takes none).
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    assert browser.switch_to.active_element.get_attribute("id") == "files"

    browser.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in photos))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card.counted")) == 2
               or d.find_elements(By.CSS_SELECTOR, ".card.failed"))
    assert not browser.find_elements(By.CSS_SELECTOR, ".card.failed"), \
        [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".card.failed")]
    cards = browser.find_elements(By.CSS_SELECTOR, ".card")
    for card, photo in zip(cards, photos):
        assert card.find_element(By.CSS_SELECTOR, ".name").text == photo.name
        shown = float(card.find_element(By.CSS_SELECTOR, ".count").get_attribute("data-count"))
        assert shown == api_count(server, photo)
        assert card.find_element(By.CSS_SELECTOR, ".count").text == f"{shown:.1f}"
        img = card.find_element(By.CSS_SELECTOR, ".picture")
        assert img.get_attribute("src").startswith("data:image/jpeg;base64,")
        assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) > 0
        for link in card.find_elements(By.CSS_SELECTOR, ".downloads a"):
            assert link.get_attribute("href").startswith("blob:") and link.get_attribute("download")
    # The first photo's refined region is listed with its zoom factor.
    rows = cards[0].find_elements(By.CSS_SELECTOR, ".regions tbody tr")
    assert rows and rows[0].find_elements(By.TAG_NAME, "td")[1].text.startswith("×")
    # The downloads work from the keyboard and hold what the API answered.
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    for selector in (".downloads .json", ".downloads .csv"):
        cards[1].find_element(By.CSS_SELECTOR, selector).send_keys(Keys.ENTER)
    wait.until(lambda d: {p.name for p in downloads.iterdir()} >= {"IMG_153.json", "IMG_153_points.csv"})
    saved = json.loads((downloads / "IMG_153.json").read_text())
    assert saved["image"] == photos[1].name and saved["count"] == api_count(server, photos[1])
    assert "overlay" not in saved and saved["model"]["variant"] == "regression"
    assert (downloads / "IMG_153_points.csv").read_text() == "x,y\n"  # regression: no head points
    assert not browser.find_element(By.ID, "all-csv").get_attribute("hidden")

    shot = tmp_path / "serve_page.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors  # no CSP violation, no failed asset, no script error
