"""Debian's Chromium driven by Playwright (installed by .ci/run); tests skip without them.
Screenshots go to ``test-artifacts/`` (or ``QM_TEST_ARTIFACTS``) and are kept."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import PROJECT

CHROMIUM = os.environ.get("QM_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("QM_TEST_ARTIFACTS", PROJECT / "test-artifacts"))
FLAGS = [
    "--headless=new",
    "--no-sandbox",  # runs as root in CI containers
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--no-first-run",
]


def artifact(name: str) -> Path:
    """Where a kept test artifact (screenshot) goes."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name


def _dismiss_newsletter(page) -> None:
    """Dagster's UI opens a first-visit newsletter dialog at a moment of its choosing, over
    whatever the test is about to click: Playwright clicks its Skip whenever it shows."""
    skip = page.get_by_role("button", name="Skip", exact=True)
    page.add_locator_handler(skip, lambda button: button.click())


@contextmanager
def chromium_page(width: int = 1400, height: int = 1000) -> Iterator:
    """A Playwright page in Debian's Chromium; skips when either is missing."""
    playwright = pytest.importorskip("playwright.sync_api")
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            _dismiss_newsletter(page)
            yield page
        finally:
            browser.close()
