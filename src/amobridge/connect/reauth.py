"""A dead grant: flag the connection once, write the fix to the audit log, emit the
``connection.reauth_required`` event for the host app — all in one unit of work, never an HTTP
call on the caller's path.

amoCRM refuses a refresh for good when the refresh token was spent, aged out or the integration
was disabled. The connection becomes ``reauth_required`` only if it is still ``active`` and still
holds the grant that was seen dying (``token_version``): a disconnected connection stays
disconnected, a re-connect made meanwhile is not blamed, and the same death is reported once
however many processes and callers see it. Delivering the event (signed, retried, each attempt
in the delivery log) is a job of the events outbox (``amobridge.notify``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from amobridge.amo.errors import AmoReauthRequired
from amobridge.audit import AuditRepository
from amobridge.connect.repository import ConnectionRepository
from amobridge.settings import Settings
from amobridge.storage.crypto import Keyring
from amobridge.storage.db import Database

if TYPE_CHECKING:
    from amobridge.notify import NotifyService

log = logging.getLogger("amobridge.connect")

REAUTH_EVENT = "connection.reauth_required"


class ReauthService:
    def __init__(
        self, settings: Settings, db: Database, keyring: Keyring, *, events: NotifyService
    ) -> None:
        self.settings = settings
        self._db = db
        self._keyring = keyring
        self.events = events

    @property
    def public_url(self) -> str:
        return self.settings.server.public_url.rstrip("/")

    async def on_reauth_required(
        self, connection_id: str, error: AmoReauthRequired, seen_version: int | None
    ) -> bool:
        """True when this call flagged the connection (False: already flagged, replaced,
        disconnected or gone)."""
        async with self._db.transaction() as session:
            connections = ConnectionRepository(session, self._keyring)
            if not await connections.mark_reauth_required(
                connection_id, str(error), seen_version=seen_version
            ):
                return False
            row = await connections.get(connection_id)
            owner = row.owner if row is not None else None
            AuditRepository(session).record(
                actor="system",
                action="reauth_required",
                success=False,
                owner=owner,
                connection_id=connection_id,
                error=str(error),
                message="amoCRM refused the grant. Fix: re-connect via /amocrm/auth "
                f"(or /amocrm/connect) for owner {owner!r}.",
            )
            await self.events.emit(
                session,
                REAUTH_EVENT,
                owner=owner,
                connection_id=connection_id,
                data={
                    "owner": owner,
                    "connection_id": connection_id,
                    "reason": str(error),
                    "fix": f"{self.public_url}/amocrm/auth?{urlencode({'owner': owner or ''})}",
                },
            )
        log.warning("connection %s needs re-authorization: %s", connection_id, error)
        return True
