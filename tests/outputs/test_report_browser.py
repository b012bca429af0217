"""eic report's page in a real browser: Debian's Chromium, headless, driven by Selenium through Debian's chromedriver.

The page loads from file:// with no console error and no request leaving the machine, a confusion-matrix cell shows
its images, the lightbox opens from the keyboard and Escape closes it, a hostile run's page runs nothing, and a
screenshot is taken. CI installs the browser (.ci/run): there a missing browser fails the test; elsewhere it skips.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from europeana_imgcls.core.config import ReportConfig
from europeana_imgcls.outputs.report import report

from ..support import copy_of
from .test_report import hostile_run

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        reason = f"{CHROMIUM} or {CHROMEDRIVER} is missing: apt-get install chromium chromium-driver"
        if os.environ.get("CI"):  # CI installs them (.ci/run): their absence there is a failure, not a skip
            pytest.fail(reason)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        "--no-first-run",
        "--window-size=1280,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def open_page(driver: Any, page: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Load ``page`` from file://; the console's errors and every URL the page requested."""
    driver.get_log("browser")  # what an earlier page left
    driver.get_log("performance")
    driver.get(page.resolve().as_uri())
    driver.execute_script("return document.readyState")
    errors = [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
    urls, page_url = [], page.resolve().as_uri()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            url = message["params"]["request"]["url"]
            # Nothing leaves the machine, whoever asks (the browser's own chrome:// pages stay inside it)...
            assert not url.startswith(("http:", "https:", "ws:", "wss:", "ftp:")), url
            if message["params"].get("documentURL") == page_url:  # ... and the page asks for itself alone
                urls.append(url)
    return errors, urls


def test_the_report_in_chromium(browser: Any, trained_run: Path, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    page = report(ReportConfig(run=trained_run, output=tmp_path / "report.html")).output
    errors, urls = open_page(browser, page)
    assert errors == []
    assert urls and all(u.startswith(("file://", "data:")) for u in urls), urls
    assert browser.find_elements(By.CSS_SELECTOR, "#gallery-test img")  # the script drew the galleries

    panel = browser.find_element(By.ID, "cell-view-test")
    assert not panel.is_displayed()
    cell = browser.find_element(By.CSS_SELECTOR, "#confusion-test a.cell")
    count = int(cell.text)
    cell.click()
    assert panel.is_displayed()
    shown = panel.find_elements(By.CSS_SELECTOR, ".thumbs img")
    assert len(shown) == count
    assert all(img.get_attribute("alt") for img in shown)
    assert all(browser.execute_script("return arguments[0].naturalWidth", img) > 0 for img in shown)
    assert panel.find_element(By.TAG_NAME, "h3").text.startswith("true ")

    # The keyboard alone: a thumbnail opens the lightbox, Escape closes it.
    thumb = panel.find_element(By.CSS_SELECTOR, "button.thumb")
    browser.execute_script("arguments[0].focus()", thumb)
    thumb.send_keys(Keys.ENTER)
    box = browser.find_element(By.ID, "lightbox")
    assert box.get_attribute("open") is not None
    big = box.find_element(By.TAG_NAME, "img")
    assert big.size["width"] >= 256 or big.size["height"] >= 256
    browser.switch_to.active_element.send_keys(Keys.ESCAPE)
    assert box.get_attribute("open") is None

    # The per-class table sorts by a header's button.
    header = browser.find_element(By.CSS_SELECTOR, "#per-class-test th:nth-child(5) button")
    header.click()
    supports = [int(td.text) for td in browser.find_elements(By.CSS_SELECTOR, "#per-class-test td:nth-child(5)")]
    assert supports == sorted(supports)

    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot))
    with Image.open(shot) as picture:
        assert picture.format == "PNG" and picture.width >= 800
        low, high = picture.convert("L").getextrema()
        assert high - low > 100  # not blank
    if os.environ.get("EIC_REPORT_SCREENSHOT"):  # docs/images/report.png is made this way
        shutil.copyfile(shot, os.environ["EIC_REPORT_SCREENSHOT"])
    assert browser.get_log("browser") == []


def test_a_hostile_run_runs_nothing(browser: Any, trained_run: Path, tmp_path: Path) -> None:
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    run, hostile = hostile_run(trained_run, tmp_path)
    page = report(ReportConfig(run=run, output=tmp_path / "hostile.html")).output
    errors, urls = open_page(browser, page)
    assert errors == []  # an injected script would have been refused by the page's policy, and said so
    assert all(u.startswith(("file://", "data:")) for u in urls), urls
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 - asking is the test
    assert browser.execute_script("return window.eicPwned") is None
    heads = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#confusion-test thead th")]
    assert hostile in heads  # shown as text
    labels = " ".join(f.text for f in browser.find_elements(By.CSS_SELECTOR, "#gallery-test figcaption"))
    assert "a\"b'c" in labels


def test_a_demo_like_runs_whole_page(browser: Any, world: dict[str, Any], tmp_path: Path) -> None:
    """The run of record-named images downloaded from the sandbox, evaluated on records it never saw, audited and
    enriched: every section of the page, in the browser."""
    from selenium.webdriver.common.by import By

    from europeana_imgcls.core.config import AuditConfig, EvaluateConfig
    from europeana_imgcls.outputs.audit import audit
    from europeana_imgcls.outputs.evaluation import evaluate_run

    root = world["root"]
    run = copy_of(root / "run", tmp_path)  # evaluate keeps the run's latest evaluation in it
    evaluate_run(
        EvaluateConfig(
            run=run, eval_dir=root / "eval_images", output_dir=tmp_path / "ev", gallery=0, figures=False, quiet=True
        )
    )
    audit(AuditConfig(source=run, output_dir=tmp_path / "audit", top=4, quiet=True))
    config = ReportConfig(
        run=run,
        output=tmp_path / "page.html",
        evaluation=tmp_path / "ev",
        audit=tmp_path / "audit",
        enrich=root / "out.jsonld",
    )
    result = report(config)
    assert {"confusion-evaluation", "gallery-evaluation", "calibration", "audit", "curves"} <= set(result.sections)
    errors, urls = open_page(browser, result.output)
    assert errors == [] and all(u.startswith(("file://", "data:")) for u in urls), (errors, urls)
    assert "eic enrich's annotations (out.jsonld)" in browser.find_element(By.ID, "calibration").text
    cell = browser.find_element(By.CSS_SELECTOR, "#confusion-evaluation a.cell")
    cell.click()
    shown = browser.find_elements(By.CSS_SELECTOR, "#cell-view-evaluation .thumbs figure")
    # an evaluation scores each image with every split: the count is of predictions, each image shown once
    said = re.search(r": (\d+) prediction\(s\) of (\d+) image\(s\)", cell.get_attribute("data-title") or "")
    assert said and int(said[1]) == int(cell.text) and len(shown) == int(said[2]) <= int(said[1])
    assert len({f.text for f in shown}) == len(shown)
    links = browser.find_elements(By.CSS_SELECTOR, "#cell-view-evaluation figcaption a")
    assert links and all(a.get_attribute("href").startswith("https://www.europeana.eu/item/") for a in links)
    assert browser.get_log("browser") == []
