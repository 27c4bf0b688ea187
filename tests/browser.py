"""Headless Chromium through Selenium, with the network off (flags from NOTES.md that work here).

``chromium()`` returns a driver or skips the test when Debian's ``chromium`` and
``chromium-driver`` (or selenium) are missing. Requests to anything but ``file://`` fail: a
dead proxy and a resolver that maps every host to nothing; the performance log records any
request that was tried.
"""

from __future__ import annotations

import json
import shutil
import tempfile

import pytest

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def chromium(width: int = 1500, height: int = 1800, loopback: bool = False):
    """``loopback``: also reach servers on 127.0.0.1 and localhost (and nothing else)."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.skip("needs Debian's chromium and chromium-driver: apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tempfile.mkdtemp(prefix='trajhook-chromium-')}",
        f"--window-size={width},{height}",
        "--proxy-server=127.0.0.1:9",
        *(
            (
                "--proxy-bypass-list=127.0.0.1;localhost",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
            )
            if loopback
            else ("--host-resolver-rules=MAP * ~NOTFOUND",)
        ),
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


def requested_urls(driver) -> list[str]:
    """Every URL the page asked for, from the DevTools performance log."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls
