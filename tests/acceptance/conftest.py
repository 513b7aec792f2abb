"""Fixtures of the acceptance tier: one headless Chromium per module, a fresh context per test.

The processes themselves (``amobridge sandbox``, ``amobridge serve``, nginx) are started by
helpers in ``acceptance_support.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from browser_support import CHROMIUM, CHROMIUM_ARGS, WAIT_MS, require_chromium

# --- the browser ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium per module (Debian's, never a downloaded one)."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser context (no cookies, no history) per test, in English (en-US, what
    headless Chromium sends anyway; the pages answer in the browser's language)."""
    context = browser.new_context(locale="en-US")
    context.set_default_timeout(WAIT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()
