"""Background work of the connect feature, one unit of work per step and per connection:

- ``purge_expired``: OAuth states and button secrets past their lifetime;
- ``keepalive``: refresh idle connections long before their 3-month refresh token ages out. Every
  per-connection failure is caught, logged and recorded on that connection (``last_error``), and
  the pass goes on: one tenant's stuck lease, dead grant or outage never stalls the rest.

Events for the host app (a connection needs re-authorization, was disconnected) are emitted in
the unit of work of the change and delivered by jobs of the events outbox (``amobridge.notify``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from amobridge.connect.clients import ConnectionClients
from amobridge.connect.repository import ConnectionRepository
from amobridge.connect.stores import ButtonSecretStore, StateStore
from amobridge.settings import Settings
from amobridge.storage.crypto import Keyring
from amobridge.storage.db import Database

log = logging.getLogger("amobridge.connect")


@dataclass(frozen=True)
class KeepaliveReport:
    refreshed: int
    failed: int


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
