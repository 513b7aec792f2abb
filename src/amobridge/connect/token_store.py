"""The SDK's ``TokenStore`` on the database: one pair per connection, encrypted, shared by every
process, with a cross-process refresh lock (invariant 3).

The lock is a **lease** on the connection row: one conditional UPDATE sets
``refresh_lease_until``/``refresh_lease_holder`` (by the database's clock) only when no live lease
exists, so exactly one holder wins, on SQLite and PostgreSQL alike, and no transaction stays open
while the token endpoint is called. The others poll until the lease is released; the SDK's provider
then re-reads the pair under its own lease and finds it already refreshed.

The lease has an owner. Each lease gets a holder id of its own, and the ``token_version`` the
holder read under it travels with the refresh: ``save`` writes only while that holder still holds
a live lease and the version is unchanged (:meth:`ConnectionRepository.save_refreshed`). A holder
that stalled past its lease loses — its late pair never overwrites a newer one — and nothing is
ever written into a disconnected row. A refused save raises :class:`TokenSaveRefused`; the
connection's gate (``clients.py``) then sees the newer version and rebuilds the provider.

A holder that dies leaves a lease that expires after ``lease_seconds`` (far longer than a token
endpoint call may take, retries included). ``save`` commits before it returns: the provider uses
the new access token only afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from amobridge.amo.auth import TokenSet
from amobridge.connect.repository import ConnectionRepository, SaveRefused, Tokens
from amobridge.errors import AmobridgeError
from amobridge.storage.crypto import Keyring
from amobridge.storage.db import Database

log = logging.getLogger("amobridge.connect")


class TokenLockTimeout(AmobridgeError):
    """Another process held the refresh lease for too long."""


class TokenSaveRefused(AmobridgeError):
    """A refreshed pair was not stored: the lease was lost, a newer pair exists, or the
    connection was disconnected. The stored state wins."""

    def __init__(self, key: str, reason: SaveRefused) -> None:
        super().__init__(f"refreshed tokens for connection {key} were not stored: {reason.value}")
        self.reason = reason


@dataclass
class _Lease:
    holder: str
    version: int  # token_version when the lease was taken


def _ts(value: datetime | None) -> float | None:
    return value.timestamp() if value else None


class DatabaseTokenStore:
    def __init__(
        self,
        db: Database,
        keyring: Keyring,
        *,
        lease_seconds: float = 120.0,
        wait_seconds: float = 150.0,
        poll_interval: float = 0.05,
    ) -> None:
        self._db = db
        self._keyring = keyring
        self.lease_seconds = lease_seconds
        self.wait_seconds = wait_seconds
        self.poll_interval = poll_interval
        self.holder = uuid.uuid4().hex[:12]
        self._serial = itertools.count(1)
        self._local_locks: dict[str, asyncio.Lock] = {}
        self._leases: dict[str, _Lease] = {}
        # The token_version each refresh started from (set by a load under a lease), and the
        # version this process last read or wrote: the gate tells our own changes from others'.
        self._base: dict[str, int] = {}
        self._known: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"DatabaseTokenStore(holder={self.holder!r})"

    def known_version(self, key: str) -> int | None:
        """The ``token_version`` this process last loaded or saved for ``key``."""
        return self._known.get(key)

    async def load(self, key: str) -> TokenSet | None:
        async with self._db.read() as session:
            row = await ConnectionRepository(session, self._keyring).get(key)
            if row is None or row.status == "disconnected":
                return None
            tokens = ConnectionRepository(session, self._keyring).tokens(row)
            host, version = row.host, row.token_version
        self._known[key] = version
        if key in self._leases:
            self._base[key] = version
        if tokens is None:
            return None
        return TokenSet(
            access_token=tokens.access_token,
            refresh_token=tokens.refresh_token,
            expires_at=_ts(tokens.expires_at) or 0.0,
            issued_at=_ts(tokens.issued_at),
            domain=host,
        )

    async def save(self, key: str, tokens: TokenSet) -> None:
        lease = self._leases.get(key)
        if lease is None:
            # A save outside lock() (not how the SDK's provider saves): take the lease for it,
            # so it still never lands while another holder is refreshing.
            async with self._lease(key):
                await self.save(key, tokens)
            return
        base = self._base.get(key, lease.version)
        pair = Tokens(
            tokens.access_token,
            tokens.refresh_token,
            datetime.fromtimestamp(tokens.expires_at, UTC) if tokens.expires_at else None,
            long_lived=False,
            issued_at=datetime.fromtimestamp(tokens.issued_at, UTC) if tokens.issued_at else None,
        )
        async with self._db.transaction() as session:
            outcome = await ConnectionRepository(session, self._keyring).save_refreshed(
                key, pair, holder=lease.holder, base_version=base, host=tokens.domain
            )
        if isinstance(outcome, SaveRefused):
            log.warning("connection %s: refreshed tokens not stored (%s)", key, outcome.value)
            raise TokenSaveRefused(key, outcome)
        self._base[key] = self._known[key] = outcome

    def lock(self, key: str) -> contextlib.AbstractAsyncContextManager[Any]:
        return self._lease(key)

    @contextlib.asynccontextmanager
    async def _lease(self, key: str) -> AsyncIterator[None]:
        # In-process first (no point polling the database against ourselves), then the lease.
        local = self._local_locks.setdefault(key, asyncio.Lock())
        async with local:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.wait_seconds
            holder = f"{self.holder}:{next(self._serial)}"
            while True:
                async with self._db.transaction() as session:
                    version = await ConnectionRepository(session, self._keyring).try_lease(
                        key, holder, self.lease_seconds
                    )
                if version is not None:
                    break
                if loop.time() >= deadline:
                    raise TokenLockTimeout(
                        f"the refresh lock of connection {key} was held for over "
                        f"{self.wait_seconds:.0f} s; see docs/operating.md (stuck refresh)"
                    )
                await asyncio.sleep(self.poll_interval * (0.5 + random.random()))  # noqa: S311
            self._leases[key] = _Lease(holder, version)
            try:
                yield
            finally:
                del self._leases[key]
                async with self._db.transaction() as session:
                    await ConnectionRepository(session, self._keyring).release_lease(key, holder)
