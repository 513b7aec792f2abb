"""The SDK's ``TokenStore`` on the database: one pair per connection, encrypted, shared by every
process, with a cross-process refresh lock (invariant 3).

The lock is a **lease** on the connection row: one conditional UPDATE sets
``refresh_lease_until``/``refresh_lease_holder`` only when no live lease exists, so exactly one
process wins, on SQLite and PostgreSQL alike, and no transaction stays open while the token
endpoint is called. The others poll until the lease is released, then the SDK's provider
re-reads the pair under the lease and finds it already refreshed. A holder that dies leaves a
lease that expires after ``lease_seconds`` (longer than any token-endpoint call may take).
``save`` commits before it returns: the provider uses the new access token only afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from amobridge.amo.auth import TokenSet
from amobridge.connect.repository import ConnectionRepository, Tokens
from amobridge.errors import AmobridgeError
from amobridge.storage.db import Database


class TokenLockTimeout(AmobridgeError):
    """Another process held the refresh lease for too long."""


class DatabaseTokenStore:
    def __init__(
        self,
        db: Database,
        connections: ConnectionRepository,
        *,
        lease_seconds: float = 120.0,
        wait_seconds: float = 150.0,
        poll_interval: float = 0.05,
    ) -> None:
        self._db = db
        self._connections = connections
        self.lease_seconds = lease_seconds
        self.wait_seconds = wait_seconds
        self.poll_interval = poll_interval
        self.holder = f"{uuid.uuid4().hex[:12]}"
        self._local_locks: dict[str, asyncio.Lock] = {}

    def __repr__(self) -> str:
        return f"DatabaseTokenStore(holder={self.holder!r})"

    async def load(self, key: str) -> TokenSet | None:
        async with self._db.transaction() as session:
            row = await self._connections.get(session, key)
            if row is None or row.status == "disconnected":
                return None
            tokens = self._connections.tokens(row)
            host = row.host
        if tokens is None:
            return None
        return TokenSet(
            access_token=tokens.access_token,
            refresh_token=tokens.refresh_token,
            expires_at=tokens.expires_at.timestamp() if tokens.expires_at else 0.0,
            domain=host,
        )

    async def save(self, key: str, tokens: TokenSet) -> None:
        expires = datetime.fromtimestamp(tokens.expires_at, UTC) if tokens.expires_at else None
        async with self._db.transaction() as session:
            await self._connections.save_tokens(
                session,
                key,
                Tokens(tokens.access_token, tokens.refresh_token, expires, long_lived=False),
            )
            if tokens.domain:
                row = await self._connections.get(session, key)
                if row is not None and row.host != tokens.domain:
                    row.host = tokens.domain

    def lock(self, key: str) -> contextlib.AbstractAsyncContextManager[Any]:
        return self._lease(key)

    @contextlib.asynccontextmanager
    async def _lease(self, key: str) -> AsyncIterator[None]:
        # In-process first (no point polling the database against ourselves), then the lease.
        local = self._local_locks.setdefault(key, asyncio.Lock())
        async with local:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.wait_seconds
            while True:
                async with self._db.transaction() as session:
                    if await self._connections.try_lease(
                        session, key, self.holder, self.lease_seconds
                    ):
                        break
                if loop.time() >= deadline:
                    raise TokenLockTimeout(
                        f"the refresh lock of connection {key} was held for over "
                        f"{self.wait_seconds:.0f} s; see docs/operating.md (stuck refresh)"
                    )
                await asyncio.sleep(self.poll_interval * (0.5 + random.random()))  # noqa: S311
            try:
                yield
            finally:
                async with self._db.transaction() as session:
                    await self._connections.release_lease(session, key, self.holder)
