"""The dashboard in a real browser: headless Chromium driven by Selenium (Debian's chromium and
chromium-driver, installed by scripts/_setup.sh). It opens `/`, sees the agents, sees a task
assigned meanwhile go from assigned to completed without a reload, reads on a phone-sized
screen, saves screenshots, and fails on any JavaScript error."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.support.helpers import wait_for
from tests.support.http import base_url, web_daemon

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
SLOW_CLI = {"slow": {"command": "echo start; sleep 2.5; echo done"}}
CAPTURE_ERRORS = """
window.__jsErrors = [];
window.addEventListener('error', (e) => window.__jsErrors.push(String(e.message || e)));
window.addEventListener('unhandledrejection', (e) => window.__jsErrors.push('rejection: ' + String(e.reason)));
"""


@pytest.fixture
def browser(tmpdir_short):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.fail("chromium and chromedriver are needed (scripts/_setup.sh installs Debian's "
                    "chromium and chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--no-first-run", "--disable-extensions", "--window-size=1280,900",
              f"--user-data-dir={tmpdir_short / 'chromium'}"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    drv.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": CAPTURE_ERRORS})
    try:
        yield drv
    finally:
        drv.quit()


def js_errors(drv) -> list[str]:
    severe = [e["message"] for e in drv.get_log("browser") if e["level"] == "SEVERE"]
    return severe + (drv.execute_script("return window.__jsErrors || []") or [])


def row(drv, name: str) -> dict | None:
    return drv.execute_script("""
        const r = [...document.querySelectorAll('#agents tbody tr')]
            .find((tr) => tr.cells[0].textContent === arguments[0]);
        return r ? {state: r.dataset.state, task: r.dataset.task,
                    done: r.cells[5].textContent} : null;""", name)


def test_dashboard_live_in_chromium(tmpdir_short, browser):
    d = web_daemon(tmpdir_short / "town", agents=2, cli=SLOW_CLI)
    shots = Path(os.environ.get("TT_SCREENSHOTS") or tmpdir_short)
    try:
        d.start()
        drv = browser
        drv.get(base_url(d) + "/")
        drv.execute_script("window.__sameDocument = 'yes'")
        wait_for(lambda: drv.execute_script(
            "return document.querySelectorAll('#agents tbody tr').length") == 2, 20,
            interval=0.2, what="two agents on the page")
        assert row(drv, "w-1")["state"] == "idle"
        assert "ready" in drv.find_element("id", "ready").text
        tid = d.cli("assign", "w-1", "shown in the browser").stdout.strip()
        wait_for(lambda: (row(drv, "w-1") or {}).get("task") == tid, 20, interval=0.1,
                 what="the task as w-1's current task")
        assert row(drv, "w-1")["state"] == "working"
        drv.save_screenshot(str(shots / "dashboard-working.png"))
        wait_for(lambda: (row(drv, "w-1") or {}).get("state") == "idle"
                 and row(drv, "w-1")["done"] == "1", 30, interval=0.2,
                 what="w-1 idle with one task done")
        def feed_types():   # the feed is drawn a few times a second: wait for the draw
            feed = drv.execute_script(
                "return [...document.querySelectorAll('#feed li')].map((li) => "
                "[li.dataset.type, li.textContent])")
            types = [t for t, text in feed if tid in text]
            return types if {"task_assigned", "task_completed"} <= set(types) else None
        wait_for(feed_types, 10, interval=0.1, what="assigned and completed in the live feed")
        wait_for(lambda: drv.execute_script(
            "return document.querySelector('#tasks').textContent").find("completed") >= 0,
            10, interval=0.2, what="completed in tasks by state")
        assert drv.execute_script("return window.__sameDocument") == "yes"   # no reload
        assert drv.find_element("id", "conn").text == "live"
        drv.save_screenshot(str(shots / "dashboard.png"))
        # a phone screen: nothing wider than the viewport (the agents table scrolls inside)
        drv.set_window_size(390, 844)
        wait_for(lambda: drv.execute_script("return window.innerWidth") <= 420, 5,
                 what="narrow window")
        overflow = drv.execute_script(
            "return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, overflow
        drv.save_screenshot(str(shots / "dashboard-phone.png"))
        assert (shots / "dashboard.png").stat().st_size > 10_000
        assert js_errors(drv) == []
        assert d.stop() == 0
    finally:
        d.cleanup()


def test_a_javascript_error_fails_the_check(tmpdir_short, browser):
    """The error capture works: a page that throws is seen (so the test above can fail)."""
    page = tmpdir_short / "bad.html"
    page.write_text("<html><body><script>undefinedFunction()</script></body></html>")
    browser.get(page.as_uri())
    errs = js_errors(browser)
    assert errs and any("undefinedFunction" in e for e in errs)
