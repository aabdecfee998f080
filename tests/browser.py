"""Headless Debian Chromium driven by Playwright, for looking at the MLflow UI as a person would."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def chromium_path() -> str:
    """Debian's Chromium; a test fails without it in CI (which installs it) and is skipped elsewhere."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs Debian's chromium package")
        pytest.skip("apt-get install chromium to run the browser test")
    return path


def screenshot_sweep(server_uri: str, experiment_id: str, parent_name: str, child_names: list[str],
                     screenshot: Path) -> str:
    """Open the experiment's runs page, expand the sweep's parent run, wait for every child, screenshot it.

    Returns the text of the page.
    """
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 700})
            page.goto(f"{server_uri}/#/experiments/{experiment_id}/runs")
            page.get_by_text(parent_name, exact=True).first.wait_for(timeout=60_000)
            page.locator('button[data-component-id*="runnamecellrenderer"]').first.click()
            for name in child_names:
                page.get_by_text(name, exact=True).first.wait_for(timeout=30_000)
            page.screenshot(path=str(screenshot))
            return page.inner_text("body")
        finally:
            browser.close()
