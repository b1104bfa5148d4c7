"""Headless Chromium (Debian's chromium + chromium-driver) driven by selenium.

``chromium(profile_dir)`` starts a fresh browser (its own ``--user-data-dir``, no network
features of its own: no sync, no component updates, no background networking) and quits it
afterwards. A missing browser skips locally and fails under CI=true.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from conftest import need

if TYPE_CHECKING:  # selenium is imported where a browser starts
    from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-dev-shm-usage", "--window-size=1100,1400")


@contextmanager
def chromium(profile_dir: Path, *, width: int = 1100, height: int = 1400) -> Iterator[WebDriver]:
    """A headless Chromium WebDriver with a fresh profile in ``profile_dir``."""
    binary = shutil.which("chromium") or (CHROMIUM if os.path.exists(CHROMIUM) else None)
    driver_bin = shutil.which("chromedriver") or (
        CHROMEDRIVER if os.path.exists(CHROMEDRIVER) else None)
    if binary is None or driver_bin is None:
        need("chromium and chromium-driver are not installed (apt-get install chromium "
             "chromium-driver)")
    os.environ.setdefault("SE_OFFLINE", "true")  # never let selenium fetch a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(binary)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--window-size={width},{height}")
    profile_dir.mkdir(parents=True, exist_ok=True)
    options.add_argument(f"--user-data-dir={profile_dir}")
    driver = webdriver.Chrome(service=Service(str(driver_bin)), options=options)
    try:
        driver.set_page_load_timeout(60)
        yield driver
    finally:
        driver.quit()


def text_of(driver: WebDriver, element_id: str) -> str:
    """The rendered text of an element, read in one script (a live page swaps its parts:
    an element found first and read later may be gone by then)."""
    text = driver.execute_script(
        "const e = document.getElementById(arguments[0]); return e ? e.innerText : '';",
        element_id)
    return str(text)
