"""Regenerate docs/img/app.png: the `clipq app` page on the demo's artifacts, in headless Chromium.

    .venv/bin/python docs/screenshot.py runs/demo      # after `make demo`

Starts the app in process on ``<demo>/artifacts`` and ``<demo>/test.index``, opens a shared URL (a
text query, an indexed image asked about and described) and saves the page. Needs clipq[app] and
Debian's chromium + chromium-driver (`make browser`).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--window-size=1400,1100", "--disable-dev-shm-usage")


def main(demo: str, query: str = "three blue squares at the bottom") -> int:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    from clipq.app.web.server import create_app, open_services, serve_in_thread
    from clipq.app.web.settings import AppSettings
    from clipq.runtime.index import ImageIndex

    d = Path(demo)
    index = ImageIndex.load(d / "test.index")
    first = sorted(index.ids())[3]
    svc = open_services(AppSettings(timeout_s=60), artifacts=str(d / "artifacts"), index=str(d / "test.index"))
    with serve_in_thread(create_app(svc)) as url, tempfile.TemporaryDirectory() as profile:
        opts = webdriver.ChromeOptions()
        for f in (*FLAGS, f"--user-data-dir={profile}"):
            opts.add_argument(f)
        driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=opts)
        try:
            state = {"q": query, "k": "10", "img": first, "ask": "what color are the shapes ?", "desc": "1"}
            driver.get(f"{url}/?{urlencode(state)}")
            wait = WebDriverWait(driver, 60, poll_frequency=0.2)
            wait.until(lambda dr: dr.find_elements("css selector", "#description .prompt-bars .bar-row"))
            wait.until(lambda dr: dr.execute_script(
                "return [...document.querySelectorAll('img')].every(i => i.complete && i.naturalWidth > 0)"))
            time.sleep(0.5)
            out = ROOT / "docs" / "img" / "app.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(out))
            print(f"wrote {out}")
        finally:
            driver.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
