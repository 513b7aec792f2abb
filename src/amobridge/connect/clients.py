"""One SDK client per connection and process, kept honest across processes.

``ConnectionClients.client(connection)`` hands out an :class:`AmoClient` whose tokens come from
:class:`DatabaseTokenStore` (encrypted, refreshed under the cross-process lease). Clients and
providers are cached for the life of the process, so concurrent calls of one connection share one
single-flight refresh — and so another process's change must reach the cache:

**Before each use** (every request's token), a :class:`ManagedProvider` checks the connection's
*pulse* — ``status``, ``token_version``, ``integration_id``: one primary-key read, cached for at
most ``check_interval`` seconds. A disconnected (or deleted) connection raises
:class:`ConnectionDisconnected` without calling amoCRM and stays disconnected; a grant written by
someone else (a re-connect, another process's refresh, a token import) rebuilds the provider, so a
stale pair or a pending save of it is dropped.

When amoCRM refuses the grant for good (``AmoReauthRequired``), the reauth handler is told the
``token_version`` that died; it flags the connection once (see ``reauth.py``). Other connections
are not touched.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from amobridge.amo.auth import OAuthTokenProvider, StaticTokenProvider, TokenProvider
from amobridge.amo.client import AmoClient
from amobridge.amo.errors import AmoReauthRequired
from amobridge.amo.ratelimit import InMemoryRateLimiter, RateLimitBackend
from amobridge.amo.retry import BanBreaker
from amobridge.connect.repository import ConnectionRepository, IntegrationRepository, Pulse
from amobridge.connect.token_store import DatabaseTokenStore
from amobridge.errors import AmobridgeError
from amobridge.storage.crypto import Keyring
from amobridge.storage.db import Database
from amobridge.storage.tables import Connection

log = logging.getLogger("amobridge.connect")

ReauthHandler = Callable[[str, AmoReauthRequired, int | None], Awaitable[object]]
DEFAULT_CHECK_INTERVAL = 0.5


class ConnectionDisconnected(AmobridgeError):
    """The connection was disconnected (by its owner or amoCRM's uninstall hook) or deleted."""

    def __init__(self, connection_id: str) -> None:
        super().__init__(
            f"connection {connection_id} is disconnected: connect the account again "
            "(GET /amocrm/auth or /amocrm/connect)"
        )
        self.connection_id = connection_id


@dataclass
class _Built:
    inner: TokenProvider
    integration_id: str | None
    version: int


class ManagedProvider:
    """The token provider of one connection in this process (see the module docstring)."""

    def __init__(self, connection_id: str, clients: ConnectionClients) -> None:
        self.connection_id = connection_id
        self._clients = clients
        self._built: _Built | None = None
        self.integration_id: str | None = None

    @property
    def domain(self) -> Any:
        return getattr(self._built.inner, "domain", None) if self._built else None

    async def get_token(self) -> str:
        inner = await self._current()
        try:
            return await inner.get_token()
        except AmoReauthRequired as exc:
            await self._report(exc)
            raise

    async def refresh(self, stale_token: str) -> str:
        inner = await self._current()
        try:
            return await inner.refresh(stale_token)
        except AmoReauthRequired as exc:
            await self._report(exc)
            raise

    async def _current(self) -> TokenProvider:
        pulse = await self._clients.pulse(self.connection_id)
        if pulse is None or pulse.status == "disconnected":
            self._built = None
            raise ConnectionDisconnected(self.connection_id)
        built = self._built
        ours = self._clients.store.known_version(self.connection_id)
        if (
            built is None
            or built.integration_id != pulse.integration_id
            or (pulse.token_version != built.version and pulse.token_version != ours)
        ):
            if built is not None:
                log.info(
                    "connection %s changed elsewhere (version %s → %s): reloading its tokens",
                    self.connection_id,
                    built.version,
                    pulse.token_version,
                )
            built = self._built = await self._clients.build_provider(self.connection_id)
            self.integration_id = built.integration_id
        else:
            built.version = pulse.token_version
        return built.inner

    async def _report(self, error: AmoReauthRequired) -> None:
        seen = self._clients.store.known_version(self.connection_id)
        if seen is None and self._built is not None:
            seen = self._built.version
        await self._clients.on_reauth(self.connection_id, error, seen)


class ConnectionClients:
    def __init__(
        self,
        db: Database,
        keyring: Keyring,
        store: DatabaseTokenStore,
        *,
        on_reauth: ReauthHandler,
        transport: httpx.AsyncBaseTransport | None = None,
        base_url: str | None = None,
        rate_limit_rps: float = 7.0,
        rate_limiter: RateLimitBackend | None = None,
        leeway: float = 300.0,
        check_interval: float = DEFAULT_CHECK_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self._keyring = keyring
        self.store = store
        self.on_reauth = on_reauth
        self.transport = transport
        self.base_url = base_url
        self._rate = rate_limit_rps
        self._leeway = leeway
        self._check_interval = check_interval
        self._clock = clock
        self._http: httpx.AsyncClient | None = None
        self._providers: dict[str, ManagedProvider] = {}
        self._clients: dict[tuple[str, str], AmoClient] = {}
        self._pulses: dict[str, tuple[Pulse | None, float]] = {}
        self._limiters: dict[str, InMemoryRateLimiter] = {}
        # Shared by every connection (keys differ); None: one in-memory limiter per connection.
        self._shared_limiter = rate_limiter
        self._breakers: dict[str, BanBreaker] = {}

    def http(self) -> httpx.AsyncClient:
        """The one HTTP client for token-endpoint calls and host-app callbacks."""
        if self._http is None:
            self._http = httpx.AsyncClient(transport=self.transport)
        return self._http

    async def pulse(self, connection_id: str) -> Pulse | None:
        """The connection's status and grant version, read at most every ``check_interval``."""
        now = self._clock()
        cached = self._pulses.get(connection_id)
        if cached is not None and now - cached[1] < self._check_interval:
            return cached[0]
        async with self._db.read() as session:
            found = await ConnectionRepository(session, self._keyring).pulse(connection_id)
        self._pulses[connection_id] = (found, now)
        return found

    async def build_provider(self, connection_id: str) -> _Built:
        async with self._db.read() as session:
            connections = ConnectionRepository(session, self._keyring)
            row = await connections.get(connection_id)
            if row is None or row.status == "disconnected":
                raise ConnectionDisconnected(connection_id)
            version, host = row.token_version, row.host
            if row.long_lived:
                tokens = connections.tokens(row)
                if tokens is None:
                    raise AmoReauthRequired("the connection has no token: connect it again")
                return _Built(StaticTokenProvider(tokens.access_token), row.integration_id, version)
            integrations = IntegrationRepository(session, self._keyring)
            integration = await integrations.get(row.integration_id) if row.integration_id else None
            if integration is None:
                raise AmoReauthRequired(
                    "the connection's integration is gone: connect the account again"
                )
            credentials = (
                integration.client_id,
                integrations.secret(integration),
                integration.redirect_uri,
            )
        inner = OAuthTokenProvider(
            client_id=credentials[0],
            client_secret=credentials[1],
            redirect_uri=credentials[2],
            store=self.store,
            key=connection_id,
            domain=host,
            base_url=self.base_url,
            http=self.http(),
            leeway=self._leeway,
        )
        return _Built(inner, row.integration_id, version)

    def provider(self, connection: Connection | str) -> ManagedProvider:
        """The provider of a connection, shared by every caller in this process."""
        connection_id = connection if isinstance(connection, str) else connection.id
        found = self._providers.get(connection_id)
        if found is None:
            found = self._providers[connection_id] = ManagedProvider(connection_id, self)
        return found

    async def forget(self, connection_id: str) -> None:
        """Drop what this process caches of a connection (re-connected or disconnected here;
        other processes learn it from the pulse)."""
        self._pulses.pop(connection_id, None)
        self._providers.pop(connection_id, None)
        for key in [k for k in self._clients if k[0] == connection_id]:
            await self._clients.pop(key).aclose()

    async def client(self, connection: Connection) -> AmoClient:
        """The connection's client, shared by every caller in this process (do not close it)."""
        key = (connection.id, connection.integration_id or "")
        found = self._clients.get(key)
        if found is not None:
            return found
        limiter: RateLimitBackend = self._shared_limiter or self._limiters.setdefault(
            connection.id, InMemoryRateLimiter(self._rate)
        )
        breaker = self._breakers.setdefault(connection.host, BanBreaker())
        client = self._clients[key] = AmoClient(
            connection.host,
            token_provider=self.provider(connection),
            transport=self.transport,
            base_url=self.base_url,
            rate_limiter=limiter,
            # amoCRM counts per integration and account: owners sharing both share the pace.
            rate_limit_key=f"{connection.integration_id or connection.id}@{connection.host}",
            ban_breaker=breaker,
        )
        return client

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()
        close = getattr(self._shared_limiter, "close", None)
        if close is not None:  # the database limiter hands its pace leases to other processes
            await close()
        if self._http is not None:
            await self._http.aclose()
            self._http = None
