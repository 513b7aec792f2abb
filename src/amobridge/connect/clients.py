"""One SDK client per connection, built on the database token store.

``ConnectionClients.client(connection)`` hands out an :class:`AmoClient` whose tokens come from
:class:`DatabaseTokenStore` (encrypted, refreshed under the cross-process lease). Providers are
kept per connection for the life of the process, so concurrent calls of one connection share one
single-flight refresh. When amoCRM refuses the grant for good (``AmoReauthRequired``), the
connection is marked ``reauth_required`` once, with an audit entry saying how to fix it, and the
host app's callback is told — other connections are not touched.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from amobridge.amo.auth import OAuthTokenProvider, StaticTokenProvider, TokenProvider
from amobridge.amo.client import AmoClient
from amobridge.amo.errors import AmoReauthRequired
from amobridge.amo.ratelimit import InMemoryRateLimiter, RateLimitBackend
from amobridge.amo.retry import BanBreaker
from amobridge.connect.repository import ConnectionRepository, IntegrationRepository
from amobridge.connect.token_store import DatabaseTokenStore
from amobridge.storage.db import Database
from amobridge.storage.tables import Connection

log = logging.getLogger("amobridge.connect")

ReauthHandler = Callable[[str, AmoReauthRequired], Awaitable[None]]


class _ReportingProvider:
    """Wraps a provider: a dead grant is reported (once per failure) before it propagates."""

    def __init__(self, inner: TokenProvider, connection_id: str, on_reauth: ReauthHandler) -> None:
        self._inner = inner
        self._connection_id = connection_id
        self._on_reauth = on_reauth
        self.integration_id = getattr(inner, "integration_id", None)

    @property
    def domain(self) -> Any:
        return getattr(self._inner, "domain", None)

    async def get_token(self) -> str:
        try:
            return await self._inner.get_token()
        except AmoReauthRequired as exc:
            await self._on_reauth(self._connection_id, exc)
            raise

    async def refresh(self, stale_token: str) -> str:
        try:
            return await self._inner.refresh(stale_token)
        except AmoReauthRequired as exc:
            await self._on_reauth(self._connection_id, exc)
            raise


class ConnectionClients:
    def __init__(
        self,
        db: Database,
        connections: ConnectionRepository,
        integrations: IntegrationRepository,
        store: DatabaseTokenStore,
        *,
        on_reauth: ReauthHandler,
        transport: httpx.AsyncBaseTransport | None = None,
        base_url: str | None = None,
        rate_limit_rps: float = 7.0,
        rate_limiter: RateLimitBackend | None = None,
        leeway: float = 300.0,
    ) -> None:
        self._db = db
        self._connections = connections
        self._integrations = integrations
        self.store = store
        self._on_reauth = on_reauth
        self.transport = transport
        self.base_url = base_url
        self._rate = rate_limit_rps
        self._leeway = leeway
        self._http: httpx.AsyncClient | None = None
        self._providers: dict[tuple[str, str, int], TokenProvider] = {}
        self._clients: dict[tuple[str, str, int], AmoClient] = {}
        self._limiters: dict[str, InMemoryRateLimiter] = {}
        # Shared by every connection (keys differ); None: one in-memory limiter per connection.
        self._shared_limiter = rate_limiter
        self._breakers: dict[str, BanBreaker] = {}

    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(transport=self.transport)
        return self._http

    async def provider(self, connection: Connection) -> TokenProvider:
        """The provider of ``connection`` (re-built when its grant changed: a re-connect)."""
        cache_key = self._key(connection)
        found = self._providers.get(cache_key)
        if found is not None:
            return found
        if connection.long_lived:
            tokens = self._connections.tokens(connection)
            if tokens is None:
                raise AmoReauthRequired("the connection has no token: connect it again")
            inner: TokenProvider = StaticTokenProvider(tokens.access_token)
        else:
            async with self._db.transaction() as session:
                integration = (
                    await self._integrations.get(session, connection.integration_id)
                    if connection.integration_id
                    else None
                )
            if integration is None:
                raise AmoReauthRequired(
                    "the connection's integration is gone: connect the account again"
                )
            inner = OAuthTokenProvider(
                client_id=integration.client_id,
                client_secret=self._integrations.secret(integration),
                redirect_uri=integration.redirect_uri,
                store=self.store,
                key=connection.id,
                domain=connection.host,
                base_url=self.base_url,
                http=self.http(),
                leeway=self._leeway,
            )
        provider = _ReportingProvider(inner, connection.id, self._on_reauth)
        self._providers[cache_key] = provider
        return provider

    @staticmethod
    def _key(connection: Connection) -> tuple[str, str, int]:
        # A re-connect may bring another integration (button) or a new long-lived token.
        version = connection.token_version if connection.long_lived else 0
        return (connection.id, connection.integration_id or "", version)

    async def forget(self, connection_id: str) -> None:
        """Drop cached providers and clients of a connection (re-connected or disconnected)."""
        for key in [k for k in self._providers if k[0] == connection_id]:
            del self._providers[key]
        for key in [k for k in self._clients if k[0] == connection_id]:
            await self._clients.pop(key).aclose()

    async def client(self, connection: Connection) -> AmoClient:
        """The connection's client, shared by every caller in this process (do not close it)."""
        key = self._key(connection)
        found = self._clients.get(key)
        if found is not None:
            return found
        provider = await self.provider(connection)
        limiter: RateLimitBackend = self._shared_limiter or self._limiters.setdefault(
            connection.id, InMemoryRateLimiter(int(self._rate))
        )
        breaker = self._breakers.setdefault(connection.host, BanBreaker())
        client = self._clients[key] = AmoClient(
            connection.host,
            token_provider=provider,
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
        if self._http is not None:
            await self._http.aclose()
            self._http = None
