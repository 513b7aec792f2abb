"""Debian's Chromium for the browser tests, driven by Playwright; never a downloaded browser.

Locally a missing program skips the test with the reason; under CI it is a failure."""

from __future__ import annotations

import os

import pytest

from _services import in_ci

CHROMIUM = "/usr/bin/chromium"
# Headless as root in a closed network: no sandbox, no GPU, no background calls home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
WAIT_MS = 15_000


def require_program(path: str, what: str) -> None:
    """Skip locally without the Debian program at ``path``; under CI a missing one is a failure."""
    if os.access(path, os.X_OK):
        return
    message = f"Debian's {what} is needed at {path} (make system-deps)"
    if in_ci():
        pytest.fail(f"{message}; CI is set, so a missing {what} is a failure, not a skip")
    pytest.skip(message)


def require_chromium() -> None:
    require_program(CHROMIUM, "chromium")
