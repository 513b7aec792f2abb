"""OAuthTokenProvider: OAuth 2.0 tokens of one integration in one account, refreshed single-flight."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import httpx

from amobridge.amo._logging import log, mask_token
from amobridge.amo.auth.endpoint import (
    TOKEN_PATH,
    TokenEndpointRefusal,
    exchange_code,
    post_token_endpoint,
)
from amobridge.amo.auth.stores import TokenStore
from amobridge.amo.auth.tokens import TokenSet
from amobridge.amo.domains import (
    AccountDomain,
    api_domain_of,
    default_user_agent,
    discover_subdomain,
    parse_account_domain,
)
from amobridge.amo.errors import (
    AmoConnectionError,
    AmoInvalidDomain,
    AmoReauthRequired,
    AmoServerError,
    AmoTokenStoreError,
)
from amobridge.amo.retry import RetryPolicy

DEFAULT_LEEWAY = 300.0


@dataclass(frozen=True)
class _DeadGrant:
    tokens: TokenSet | None
    error: AmoReauthRequired

    def matches(self, stored: TokenSet | None) -> bool:
        if stored is None or self.tokens is None:
            return stored is None and self.tokens is None
        return (stored.access_token, stored.refresh_token) == (
            self.tokens.access_token,
            self.tokens.refresh_token,
        )

    def raise_again(self) -> AmoReauthRequired:
        e = self.error
        return AmoReauthRequired(
            e.message,
            hint=e.hint,
            oauth_error=e.oauth_error,
            status=e.status,
            method=e.method,
            url=e.url,
            title=e.title,
            detail=e.detail,
            body_excerpt=e.body_excerpt,
            request_id=e.request_id,
        )


class OAuthTokenProvider:
    """OAuth 2.0 tokens of one integration in one account, refreshed single-flight (the rules are
    in :mod:`amobridge.amo.auth`). Keep one provider per (integration, account) per process and
    share it between clients; close it with ``aclose()`` (or ``async with``) when it owns its HTTP
    client.

    ``key`` names the pair in ``store``; ``domain`` is the account (the stored pair's ``domain``
    wins once discovery has found another). ``transport``/``base_url`` work as in ``AmoClient``.
    """

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        redirect_uri: str,
        store: TokenStore,
        key: str,
        domain: str | AccountDomain,
        transport: httpx.AsyncBaseTransport | None = None,
        base_url: str | None = None,
        http: httpx.AsyncClient | None = None,
        timeout: float = 30.0,
        leeway: float = DEFAULT_LEEWAY,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] = time.time,
        user_agent: str | None = None,
    ) -> None:
        self.client_id = client_id
        self._client_secret = client_secret
        self.redirect_uri = redirect_uri
        self.store = store
        self.key = key
        self._domain = parse_account_domain(domain)
        self._base_url = base_url
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(
            transport=transport, headers={"User-Agent": user_agent or default_user_agent()}
        )
        self._timeout = timeout
        self.leeway = leeway
        self._retry = retry or RetryPolicy(max_attempts=3, max_total_seconds=30.0)
        self._clock = clock
        self._cached: TokenSet | None = None
        self._pending: TokenSet | None = None
        self._dead: _DeadGrant | None = None
        self._inflight: asyncio.Task[str] | None = None
        self.refresh_count = 0
        """Token-endpoint refreshes this provider made (diagnostics)."""

    def __repr__(self) -> str:
        return (
            f"OAuthTokenProvider(client_id={self.client_id!r}, key={self.key!r}, "
            f"domain={self._domain.host!r})"
        )

    @property
    def integration_id(self) -> str:
        return self.client_id

    @property
    def domain(self) -> AccountDomain:
        """The account host; subdomain discovery may change it."""
        return self._domain

    @property
    def has_pending_save(self) -> bool:
        """Whether a refreshed pair waits to be saved (the last save failed)."""
        return self._pending is not None

    async def __aenter__(self) -> OAuthTokenProvider:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    # --- public --------------------------------------------------------------------------------

    async def get_token(self) -> str:
        """An access token valid for at least the leeway; refreshes first when needed.

        While a refresh is in flight this waits for its result instead of returning the token in
        hand: that token was refused or is expiring, so a request sent with it would only draw a
        401 (and, in a storm, double the requests).
        """
        task = self._inflight
        if task is not None:
            return await asyncio.shield(task)  # shielded as in refresh(): never abort a refresh
        if self._pending is not None:
            return await self.refresh(self._pending.access_token)
        tokens = await self._current()
        if self._expiring(tokens):
            return await self.refresh(tokens.access_token)
        return tokens.access_token

    async def refresh(self, stale_token: str) -> str:
        """A token newer than ``stale_token`` (which amoCRM refused or which is expiring).

        Concurrent callers share one refresh; a pair refreshed meanwhile by anyone (this process
        or another sharing the store) is reused without calling amoCRM.
        """
        task = self._inflight
        if task is None:
            cached = self._cached
            if (
                self._pending is None
                and self._dead is None
                and cached is not None
                and cached.access_token != stale_token
                and not self._expiring(cached)
            ):
                return cached.access_token
            task = asyncio.get_running_loop().create_task(self._refresh_under_lock(stale_token))
            self._inflight = task
            task.add_done_callback(self._refresh_done)
        # Shielded: a caller's cancellation must not abort a refresh whose reply holds the only
        # valid pair, nor leave it unsaved.
        return await asyncio.shield(task)

    async def exchange_code(self, code: str) -> TokenSet:
        """Exchange an authorization code and store the pair (saved before it is returned)."""
        tokens = await exchange_code(
            self._domain,
            client_id=self.client_id,
            client_secret=self._client_secret,
            redirect_uri=self.redirect_uri,
            code=code,
            base_url=self._base_url,
            http=self._http,
            timeout=self._timeout,
            clock=self._clock,
        )
        async with self.store.lock(self.key):
            self._pending = tokens
            await self._save(tokens)
        return tokens

    async def set_tokens(self, tokens: TokenSet) -> None:
        """Store a pair obtained elsewhere (e.g. by the service's callback) and use it."""
        async with self.store.lock(self.key):
            self._pending = tokens
            await self._save(tokens)

    # --- internals -----------------------------------------------------------------------------

    def _refresh_done(self, task: asyncio.Task[str]) -> None:
        if self._inflight is task:
            self._inflight = None
        if not task.cancelled():
            task.exception()  # retrieved: every awaiter got it already, or none is left

    def _expiring(self, tokens: TokenSet) -> bool:
        leeway = self.leeway
        if tokens.issued_at is not None:
            lifetime = tokens.expires_at - tokens.issued_at
            if lifetime > 0:
                leeway = min(leeway, lifetime / 2)
        return tokens.expires_within(leeway, now=self._clock())

    def _adopt_domain(self, tokens: TokenSet) -> None:
        if tokens.domain and tokens.domain != self._domain.host:
            try:
                self._domain = parse_account_domain(tokens.domain)
            except AmoInvalidDomain:
                log.warning("ignoring a stored token domain that names no account")

    async def _current(self) -> TokenSet:
        if self._dead is not None:
            stored = await self.store.load(self.key)
            if self._dead.matches(stored):
                raise self._dead.raise_again()
            self._dead = None
            self._cached = stored
        if self._cached is None:
            stored = await self.store.load(self.key)
            if stored is None:
                raise self._no_tokens()
            self._adopt_domain(stored)
            self._cached = stored
        return self._cached

    def _no_tokens(self) -> AmoReauthRequired:
        return AmoReauthRequired(
            f"no tokens are stored under {self.key!r} for {self._domain.host}: connect the "
            "integration (exchange an authorization code) first",
            status=None,
        )

    async def _save(self, tokens: TokenSet) -> None:
        """Save the pending pair; only then is it used. Call with the store lock held."""
        try:
            await self.store.save(self.key, tokens)
        except Exception as exc:
            raise AmoTokenStoreError(
                f"saving the refreshed tokens for {self.key!r} failed ({type(exc).__name__}). "
                "The new pair is kept in memory and saved on the next call; fix the token store "
                "before this process exits, or the grant is lost."
            ) from exc
        self._pending = None
        self._cached = tokens
        self._dead = None
        self._adopt_domain(tokens)

    async def _refresh_under_lock(self, stale_token: str) -> str:
        async with self.store.lock(self.key):
            if self._pending is not None:
                pending = self._pending
                await self._save(pending)
                log.info("saved the refreshed tokens for %r that were pending", self.key)
                return pending.access_token
            stored = await self.store.load(self.key)
            if self._dead is not None:
                if self._dead.matches(stored):
                    raise self._dead.raise_again()
                self._dead = None
            if stored is None:
                raise self._no_tokens()
            self._adopt_domain(stored)
            if stored.access_token != stale_token and not self._expiring(stored):
                self._cached = stored  # someone else refreshed: reuse their pair
                return stored.access_token
            if not stored.refresh_token:
                error = AmoReauthRequired(
                    f"the tokens stored under {self.key!r} have no refresh token and the access "
                    "token was refused or expired: connect the integration again",
                    status=401,
                )
                self._dead = _DeadGrant(stored, error)
                raise error
            fresh = await self._refresh_grant(stored)
            self._pending = fresh  # kept until saved: never lost, never used unsaved
            await self._save(fresh)
            log.info(
                "refreshed amoCRM tokens for %r (%s): new access token %s",
                self.key,
                self._domain.host,
                mask_token(fresh.access_token),
            )
            return fresh.access_token

    async def _refresh_grant(self, stored: TokenSet) -> TokenSet:
        assert stored.refresh_token is not None
        body = {
            "client_id": self.client_id,
            "client_secret": self._client_secret,
            "grant_type": "refresh_token",
            "refresh_token": stored.refresh_token,
            "redirect_uri": self.redirect_uri,
        }
        discovered = False
        while True:
            now = self._clock()
            self.refresh_count += 1
            try:
                data = await post_token_endpoint(
                    self._http,
                    self._domain.host,
                    body,
                    base_url=self._base_url,
                    deadline=self._timeout,
                    retry=self._retry,
                    clock=self._clock,
                )
            except TokenEndpointRefusal as refusal:
                wrong_host = (
                    (refusal.hint or "").lower().startswith("invalid account")
                    or refusal.status == 404
                    or (refusal.detail or "").lower() == "account not found"
                )
                if wrong_host and not discovered:
                    discovered = True
                    if await self._discover(stored):
                        continue
                error = refusal.error(AmoReauthRequired, "refresh token")
                assert isinstance(error, AmoReauthRequired)
                self._dead = _DeadGrant(stored, error)
                log.error(
                    "amoCRM refused the refresh for %r (%s): %s", self.key, self._domain.host, error
                )
                raise error from None
            try:
                return TokenSet.from_token_response(
                    data,
                    now=now,
                    domain=self._domain.host,
                    previous_refresh_token=stored.refresh_token,
                )
            except ValueError as exc:
                raise AmoServerError(
                    f"amoCRM's token endpoint answered 200 with an unusable body ({exc}); the "
                    "refresh token may be spent: if the next call fails, connect again",
                    status=200,
                    method="POST",
                    url=f"https://{self._domain.host}{TOKEN_PATH}",
                ) from None

    async def _discover(self, stored: TokenSet) -> bool:
        """Subdomain discovery; True when it found another host to retry on."""
        assert stored.refresh_token is not None
        api_domain = api_domain_of(stored.access_token, self._domain.base_domain)
        try:
            async with asyncio.timeout(self._timeout):
                found = await discover_subdomain(
                    self._http,
                    api_domain=api_domain,
                    refresh_token=stored.refresh_token,
                    base_url=self._base_url,
                )
        except AmoInvalidDomain as exc:
            log.warning("subdomain discovery for %r failed: %s", self.key, exc)
            return False
        except (httpx.TransportError, TimeoutError) as exc:
            raise AmoConnectionError(
                f"subdomain discovery at {api_domain} failed ({type(exc).__name__}); "
                "try again later"
            ) from exc
        if found == self._domain:
            return False
        log.warning(
            "amoCRM account %s is now %s (subdomain discovery); using the new host",
            self._domain.host,
            found.host,
        )
        self._domain = found
        if self._cached is not None:
            self._cached = replace(self._cached, domain=found.host)
        return True
