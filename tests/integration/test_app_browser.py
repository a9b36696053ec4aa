"""The ``clipq app`` page in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``).

Selenium drives the system driver (/usr/bin/chromedriver) against the real app on a loopback port,
over the shared ``tiny_artifacts`` and an index of the synthetic world's test images, with an API
key on the app: load the page, enter the key it asks for (once: the tab keeps it), type a query, see results with thumbnails, filter, upload an image, search by it, ask about it,
pick a result, ask and describe, reload the shared URL and find the same state. The screenshot is
saved under the test's tmp dir, and copied to docs/img/app.png when CLIPQ_UPDATE_SCREENSHOT=1.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from _require import CHROMEDRIVER, chromium, require_browser, require_module

require_module("fastapi")
require_module("selenium")

pytestmark = pytest.mark.timeout(300)

DRIVER = CHROMEDRIVER  # $CLIPQ_CHROMEDRIVER, default /usr/bin/chromedriver
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1000",
         "--disable-dev-shm-usage")
ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-clipq-browser-test"
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")


@pytest.fixture(scope="module")
def app_url(tiny_artifacts, small_world, tmp_path_factory):
    import clipq.runtime as rt
    from clipq.app.cliutil import caption_metadata
    from clipq.app.web.server import create_app, open_services, serve_in_thread
    from clipq.app.web.settings import AppSettings
    from clipq.runtime.index import ImageIndex

    require_browser()
    meta = caption_metadata(small_world / "captions" / "test.csv")
    for m in meta.values():
        m["colour"] = next((w for w in m["caption"].split() if w in COLOURS), "none")
    backend = rt.connect(tiny_artifacts)
    try:
        index = ImageIndex.from_images(small_world / "images" / "test", rt.ClipEncoder(backend), metadata=meta,
                                       progress=False)
        index_dir = index.save(tmp_path_factory.mktemp("browser") / "index").parent
    finally:
        backend.close()
    svc = open_services(AppSettings(timeout_s=60, api_keys=(KEY,)), artifacts=str(tiny_artifacts), index=str(index_dir))
    with serve_in_thread(create_app(svc)) as url:
        yield url


@pytest.fixture
def driver(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium()
    for f in (*FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(f)
    d = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
    d.set_page_load_timeout(60)
    yield d
    d.quit()


def _wait(driver, cond, timeout=30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(cond)


def _status_ok(driver) -> None:
    status = driver.find_element("id", "status")
    assert "error" not in (status.get_attribute("class") or ""), status.text


def test_page_search_upload_ask_describe_and_share(driver, app_url, small_world, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    driver.get(app_url + "/")
    # the API answers 401: the page asks for the key; a wrong one is refused and asked again
    _wait(driver, lambda d: d.find_element(By.ID, "key-form").is_displayed())
    driver.find_element(By.ID, "api-key").send_keys("sk-wrong", Keys.ENTER)
    _wait(driver, lambda d: "refused" in d.find_element(By.ID, "key-note").text
          and d.find_element(By.ID, "key-form").is_displayed())
    driver.find_element(By.ID, "api-key").send_keys(KEY, Keys.ENTER)
    _wait(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    assert not driver.find_element(By.ID, "key-form").is_displayed()
    assert driver.execute_script("return sessionStorage.getItem('clipq.apiKey')") == KEY
    assert "50 images indexed" in driver.find_element(By.ID, "index-info").text

    # type a query: results with thumbnails, scores and captions; the query goes into the URL
    q = driver.find_element(By.ID, "q")
    q.send_keys("two red rings", Keys.ENTER)
    cards = _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#results .card") or False)
    assert len(cards) == 10
    _status_ok(driver)
    first = cards[0]
    assert first.find_element(By.CSS_SELECTOR, ".score").text.startswith("#1 · ")
    assert first.find_element(By.CSS_SELECTOR, ".caption").text
    _wait(driver, lambda d: d.execute_script(
        "return [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)"))
    assert "q=two+red+rings" in driver.current_url

    # a metadata filter: every result is red
    Select(driver.find_element(By.CSS_SELECTOR, "[data-filter='colour']")).select_by_value("red")
    Select(driver.find_element(By.ID, "k")).select_by_value("5")
    driver.find_element(By.ID, "search-btn").click()
    _wait(driver, lambda d: "f.colour=red" in d.current_url and len(d.find_elements(By.CSS_SELECTOR, "#results .card")) <= 5)
    captions = [c.text for c in driver.find_elements(By.CSS_SELECTOR, "#results .card .caption")]
    assert captions and all("red" in c for c in captions), captions

    # upload an image: search by it (it finds itself first), then ask about it
    image = small_world / "images" / "test" / "test_000003.png"
    driver.find_element(By.ID, "image-file").send_keys(str(image))
    _wait(driver, lambda d: d.find_element(By.ID, "search-image-btn").is_enabled())
    Select(driver.find_element(By.CSS_SELECTOR, "[data-filter='colour']")).select_by_value("")
    driver.find_element(By.ID, "search-image-btn").click()
    _wait(driver, lambda d: "uploaded image" in d.find_element(By.ID, "results-title").text)
    top = driver.find_element(By.CSS_SELECTOR, "#results .card")
    assert top.get_attribute("data-id") == "test_000003"
    assert float(top.find_element(By.CSS_SELECTOR, ".score").text.split("· ")[1]) > 0.99
    driver.find_element(By.ID, "question").send_keys("what color are the shapes ?")
    driver.find_element(By.ID, "ask-btn").click()
    answer = _wait(driver, lambda d: d.find_element(By.ID, "answer-text").text or False)
    _status_ok(driver)
    rows = driver.find_elements(By.CSS_SELECTOR, ".answer-bars .bar-row")
    assert len(rows) == 5 and rows[0].find_element(By.CSS_SELECTOR, ".label").text == answer
    widths = [r.find_element(By.CSS_SELECTOR, ".fill").get_attribute("style") for r in rows]
    assert all("width:" in w.replace(" ", "") for w in widths)

    # pick an indexed result, ask and describe it: the image, question and describe go into the URL
    driver.find_element(By.ID, "q").clear()
    driver.find_element(By.ID, "q").send_keys("two red rings along the top", Keys.ENTER)
    _wait(driver, lambda d: "two+red+rings+along" in d.current_url)
    card = _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#results .card") or False)[0]
    picked = card.get_attribute("data-id")
    card.find_element(By.XPATH, ".//button[text()='ask']").click()
    _wait(driver, lambda d: picked in d.find_element(By.ID, "subject").text)
    question = driver.find_element(By.ID, "question")
    question.clear()
    question.send_keys("how many shapes are along the top ?", Keys.ENTER)
    _wait(driver, lambda d: "ask=how+many" in d.current_url and d.find_element(By.ID, "answer-text").text)
    driver.find_element(By.ID, "describe-btn").click()
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#description .prompt-bars .bar-row"))
    _status_ok(driver)
    shared = driver.current_url
    assert f"img={picked}" in shared and "desc=1" in shared

    # the shared link restores the whole state in a fresh page load
    driver.get("about:blank")
    driver.get(shared)
    _wait(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#description .prompt-bars .bar-row"))
    assert driver.find_element(By.ID, "q").get_attribute("value") == "two red rings along the top"
    assert not driver.find_element(By.ID, "key-form").is_displayed()  # the tab kept the key
    assert driver.find_elements(By.CSS_SELECTOR, "#results .card") and driver.find_element(By.ID, "answer-text").text
    _wait(driver, lambda d: d.execute_script(
        "return [...document.querySelectorAll('img')].every(i => i.complete && i.naturalWidth > 0)"))
    shot = tmp_path / "app.png"
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if os.environ.get("CLIPQ_UPDATE_SCREENSHOT") == "1":
        (ROOT / "docs" / "img").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, ROOT / "docs" / "img" / "app.png")

    # an API error shows on the page, naming the problem
    Select(driver.find_element(By.ID, "templates")).select_by_value("custom")
    driver.find_element(By.ID, "templates-custom").send_keys("no placeholder here")
    driver.find_element(By.ID, "search-btn").click()
    _wait(driver, lambda d: "error" in (d.find_element(By.ID, "status").get_attribute("class") or ""))
    assert "templates" in driver.find_element(By.ID, "status").text
