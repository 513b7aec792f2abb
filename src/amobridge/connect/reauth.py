"""A dead grant: flag the connection once, write the fix to the audit log, queue the host app's
callback — all in one unit of work, never an HTTP call on the caller's path.

amoCRM refuses a refresh for good when the refresh token was spent, aged out or the integration
was disabled. The connection becomes ``reauth_required`` only if it is still ``active`` and still
holds the grant that was seen dying (``token_version``): a disconnected connection stays
disconnected, a re-connect made meanwhile is not blamed, and the same death is reported once
however many processes and callers see it. Delivery of the queued callback (with retries, each
attempt audited) is the housekeeping worker's job (``tasks.py``).
"""

from __future__ import annotations

import logging
from urllib.parse import urlencode

from amobridge.amo.errors import AmoReauthRequired
from amobridge.audit import AuditRepository
from amobridge.connect.repository import ConnectionRepository, NotificationRepository
from amobridge.settings import Settings
from amobridge.storage.crypto import Keyring
from amobridge.storage.db import Database

log = logging.getLogger("amobridge.connect")

REAUTH_EVENT = "connection.reauth_required"


class ReauthService:
    def __init__(self, settings: Settings, db: Database, keyring: Keyring) -> None:
        self.settings = settings
        self._db = db
        self._keyring = keyring

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
            if self.settings.hooks.reauth_callback_url:
                NotificationRepository(session).enqueue(
                    event=REAUTH_EVENT,
                    owner=owner,
                    connection_id=connection_id,
                    payload={
                        "event": REAUTH_EVENT,
                        "owner": owner,
                        "connection_id": connection_id,
                        "reason": str(error),
                        "fix": f"{self.public_url}/amocrm/auth?{urlencode({'owner': owner or ''})}",
                    },
                )
        log.warning("connection %s needs re-authorization: %s", connection_id, error)
        return True
