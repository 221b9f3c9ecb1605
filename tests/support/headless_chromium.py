"""Headless Debian Chromium driven by Selenium through chromedriver, for the demo page's browser tests
(tests/serve/test_demo.py, tests/test_pairs.py); skips (a failure in CI) when either is not installed."""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager

import pytest


@contextmanager
def chromium_driver():
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not (os.path.exists(chromium) and os.path.exists(driver_path)):
        pytest.skip("chromium and chromium-driver not installed (apt-get install -y chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,900",
                "--no-first-run", "--disable-background-networking", "--disable-component-update"):
        options.add_argument(arg)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        options.add_argument("--no-sandbox")
    driver = webdriver.Chrome(service=Service(driver_path), options=options)  # no Selenium Manager download
    try:
        yield driver
    finally:
        driver.quit()
