"""Background work of the connect feature, one unit of work per step and per connection:

- ``purge_expired``: OAuth states and button secrets past their lifetime;
- ``keepalive``: refresh idle connections long before their 3-month refresh token ages out. Every
  per-connection failure is caught, logged and recorded on that connection (``last_error``), and
  the pass goes on: one tenant's stuck lease, dead grant or outage never stalls the rest;
- ``deliver_notifications``: POST queued host-app events (a connection needs re-authorization) to
  ``AMOBRIDGE_HOOKS__REAUTH_CALLBACK_URL``, signed, with retries on a growing schedule; each attempt
  is audited, and the caller whose request found the dead grant never waits for it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx

from amobridge.audit import AuditRepository
from amobridge.connect.clients import ConnectionClients
from amobridge.connect.repository import ConnectionRepository, NotificationRepository
from amobridge.connect.stores import ButtonSecretStore, StateStore
from amobridge.settings import Settings
from amobridge.storage.crypto import Keyring
from amobridge.storage.db import Database

log = logging.getLogger("amobridge.connect")

# After attempt n fails, the next one waits RETRY_SCHEDULE[n-1]; after the last, it is "failed".
RETRY_SCHEDULE = (
    timedelta(seconds=30),
    timedelta(minutes=2),
    timedelta(minutes=10),
    timedelta(minutes=30),
    timedelta(hours=1),
    timedelta(hours=3),
    timedelta(hours=6),
)
CALLBACK_TIMEOUT = 10.0
# A claimed delivery is not picked again for this long (covers the POST and its bookkeeping).
CLAIM_SECONDS = 60


@dataclass(frozen=True)
class KeepaliveReport:
    refreshed: int
    failed: int


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class ConnectTasks:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        keyring: Keyring,
        *,
        clients: ConnectionClients,
        states: StateStore,
        button_secrets: ButtonSecretStore,
    ) -> None:
        self.settings = settings
        self._db = db
        self._keyring = keyring
        self.clients = clients
        self.states = states
        self.button_secrets = button_secrets

    async def purge_expired(self) -> tuple[int, int]:
        async with self._db.transaction() as session:
            secrets_purged = await self.button_secrets.purge_expired(session)
            states = await self.states.purge_expired(session)
        return states, secrets_purged

    async def keepalive(self, *, older_than: timedelta) -> KeepaliveReport:
        async with self._db.read() as session:
            ids = await ConnectionRepository(session, self._keyring).due_for_keepalive(
                idle_before=datetime.now(UTC) - older_than
            )
        refreshed = failed = 0
        for connection_id in ids:
            try:
                await self._keepalive_one(connection_id)
                refreshed += 1
            except Exception as exc:  # one tenant's failure must not skip the others
                failed += 1
                log.warning("keep-alive refresh of connection %s failed: %s", connection_id, exc)
                async with self._db.transaction() as session:
                    await ConnectionRepository(session, self._keyring).record_error(
                        connection_id, f"keep-alive refresh failed: {exc}"
                    )
        return KeepaliveReport(refreshed, failed)

    async def _keepalive_one(self, connection_id: str) -> None:
        async with self._db.read() as session:
            connections = ConnectionRepository(session, self._keyring)
            row = await connections.get(connection_id)
            tokens = connections.tokens(row) if row is not None else None
        if tokens is None:
            return
        # The stored token is "stale" on purpose: refresh() then renews the grant.
        await self.clients.provider(connection_id).refresh(tokens.access_token)

    async def deliver_notifications(self, *, limit: int = 20) -> int:
        """One delivery attempt for each due notification; the number delivered."""
        hooks = self.settings.hooks
        now = datetime.now(UTC)
        async with self._db.transaction() as session:
            queue = NotificationRepository(session)
            due = await queue.due(now=now, limit=limit)
            claimed = [
                (row.id, row.attempts + 1, row.owner, row.connection_id, row.event, row.payload)
                for row in due
                if await queue.claim(row, until=now + timedelta(seconds=CLAIM_SECONDS))
            ]
        delivered = 0
        for notification_id, attempt, owner, connection_id, event, payload in claimed:
            error: str | None
            if not hooks.reauth_callback_url:
                error = "AMOBRIDGE_HOOKS__REAUTH_CALLBACK_URL is not set"
            else:
                error = await self._post(hooks.reauth_callback_url, payload)
            async with self._db.transaction() as session:
                queue = NotificationRepository(session)
                if error is None:
                    delivered += 1
                    await queue.delivered(notification_id, at=datetime.now(UTC))
                else:
                    retry_at = (
                        datetime.now(UTC) + RETRY_SCHEDULE[attempt - 1]
                        if attempt <= len(RETRY_SCHEDULE)
                        else None
                    )
                    await queue.failed(notification_id, error=error, retry_at=retry_at)
                AuditRepository(session).record(
                    actor="system",
                    action="reauth_callback",
                    success=error is None,
                    owner=owner,
                    connection_id=connection_id,
                    error=error,
                    details={"event": event, "attempt": attempt, "notification": notification_id},
                )
        return delivered

    async def _post(self, url: str, payload: dict[str, object]) -> str | None:
        body = json.dumps(payload, ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json"}
        secret = self.settings.hooks.reauth_callback_secret
        if secret is not None:
            headers["X-Amobridge-Signature"] = sign(secret.get_secret_value(), body)
        try:
            reply = await self.clients.http().post(
                url, content=body, headers=headers, timeout=CALLBACK_TIMEOUT
            )
        except httpx.HTTPError as exc:
            return type(exc).__name__
        return None if reply.is_success else f"HTTP {reply.status_code}"
