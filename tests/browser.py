"""Headless Debian Chromium driven by Playwright, for looking at the MLflow UI as a person would."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

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
                     screenshot: Path, link: str | None = None, size: tuple[int, int] = (1500, 700)) -> str:
    """Open the experiment's runs page (or ``link``) in a fresh browser, expand the sweep's parent run, wait for
    every child, screenshot it (``size``: the window's width and height).

    Returns the text of the page.
    """
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": size[0], "height": size[1]})
            page.goto(link or f"{server_uri}/#/experiments/{experiment_id}/runs")
            expand_sweep(page, parent_name, child_names)
            page.screenshot(path=str(screenshot))
            return page.inner_text("body")
        finally:
            browser.close()


def expand_sweep(page: Any, parent_name: str, child_names: list[str]) -> None:
    """In the runs table on ``page``, unfold the sweep's parent run (its +) and wait for every child's row."""
    page.get_by_text(parent_name, exact=True).first.wait_for(timeout=60_000)
    page.locator('button[data-component-id*="runnamecellrenderer"]').first.click()
    for name in child_names:
        page.get_by_text(name, exact=True).first.wait_for(timeout=30_000)
