"""Webhooks out (§8): amoCRM's form-encoded bodies, 2 s deadline, retries, auto-disable.

Filled in by the webhook work; the API layer only calls :meth:`WebhookDispatcher.emit`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from amobridge.sandbox.events import EntityChange
from amobridge.sandbox.state import Account

if TYPE_CHECKING:
    from amobridge.sandbox.app import Sandbox


class WebhookDispatcher:
    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox

    def reset(self) -> None:
        """Forget deliveries and pending retries."""

    def emit(self, account: Account, changes: list[EntityChange]) -> None:
        """Queue deliveries for ``changes`` to every subscription of ``account`` that wants them."""

    async def run_due(self) -> None:
        """Send every retry whose time has come (called when the clock moves)."""
