"""A real browser for the playground tests: Debian's Chromium, headless, driven by selenium through
Debian's chromedriver (no downloaded browser builds; `SETUP_TEST_TOOLS=1 scripts/setup.sh`
installs both). One browser per session; each test opens its own page.
"""

from __future__ import annotations

import shutil

import pytest

# Without the background-networking/component/sync flags Chromium keeps trying to reach Google's
# services and stalls on an offline machine; --no-sandbox because CI runs as root.
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--no-first-run", "--window-size=1280,1080")
PAGE_LOAD_S = 30.0


def _binary(*names: str) -> str:
    for name in names:
        found = shutil.which(name) or shutil.which(name, path="/usr/bin:/usr/lib/chromium")
        if found:
            return found
    pytest.fail(f"{names[0]} is not installed (Debian: apt-get install chromium chromium-driver; "
                "`SETUP_TEST_TOOLS=1 scripts/setup.sh` does it)")


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = _binary("chromium", "chromium-browser")
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    # explicit driver path: selenium never looks for (or downloads) a driver of its own
    driver = webdriver.Chrome(service=DriverService(_binary("chromedriver")), options=options)
    driver.set_page_load_timeout(PAGE_LOAD_S)
    yield driver
    driver.quit()
