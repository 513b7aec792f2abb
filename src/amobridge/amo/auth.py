"""Tokens: where they live, how they are refreshed, and the one rule that keeps a grant alive.

amoCRM's refresh token is **single-use** (§2.2): each refresh returns a new pair and spends the
old one. Two refreshes with the same token race and one loses; a pair that is received but not
stored is lost for good. So :class:`OAuthTokenProvider`:

- refreshes **single-flight**: one in-process refresh at a time (every concurrent caller awaits the
  same task), inside the store's ``lock(key)`` (cross-process in the service), and re-reads the
  store under that lock: if the stored token differs from the caller's stale one, someone else
  refreshed and the stored pair is reused without calling amoCRM;
- **saves the new pair before anyone uses it**. If the save fails it raises
  :class:`AmoTokenStoreError` and keeps the pair in memory ("pending save"); the next call retries
  the save first, so the grant survives a flaky store. A pair is never used unsaved: the process
  could die and lose it. (A pair pending when the process exits is lost: use a durable store.) The
  refresh-and-save runs shielded from cancellation of the caller;
- refreshes **before expiry** (``leeway``, 5 min by default; at most half the token's lifetime)
  and when the API answers 401;
- turns any 400/401 from the token endpoint (``Token has been revoked``, ``invalid_grant``, …) into
  :class:`AmoReauthRequired`, once: until different tokens are stored, later calls raise it again
  without touching the network. ``Invalid account`` (or 404) triggers one subdomain discovery and
  one retry on the discovered host (§1, §2.3).

Stores implement :class:`TokenStore`: ``load``, ``save`` and ``lock`` (the lock hook the service
implements across processes). Shipped: :class:`InMemoryTokenStore` and :class:`JsonFileTokenStore`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import httpx

from amobridge.amo._logging import log, mask_token
from amobridge.amo.domains import (
    AccountDomain,
    api_domain_of,
    default_user_agent,
    discover_subdomain,
    parse_account_domain,
    request_target,
    token_claims,
)
from amobridge.amo.errors import (
    AmoAuthError,
    AmoConnectionError,
    AmoError,
    AmoInvalidDomain,
    AmoRateLimited,
    AmoReauthRequired,
    AmoServerError,
    AmoTimeout,
    AmoTokenStoreError,
    error_from_response,
    parse_problem,
)
from amobridge.amo.retry import RetryPolicy

DEFAULT_LEEWAY = 300.0
DEFAULT_ACCESS_TTL = 86400
TOKEN_PATH = "/oauth2/access_token"  # noqa: S105 - a URL path, not a secret


# --- the token pair ------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class TokenSet:
    """An access token and (OAuth) its refresh token. Times are unix seconds on our clock.

    ``domain`` is the account host the pair belongs to (it changes after subdomain discovery);
    ``issued_at`` lets the provider cap the refresh leeway at half the lifetime; ``server_time`` is
    Kommo's clock at issue, when sent. ``repr`` shows token prefixes only.
    """

    access_token: str
    refresh_token: str | None = None
    expires_at: float = 0.0
    token_type: str = "Bearer"  # noqa: S105 - the token scheme, not a secret
    server_time: int | None = None
    issued_at: float | None = None
    domain: str | None = None

    def __repr__(self) -> str:
        return (
            f"TokenSet(access_token={mask_token(self.access_token)!r}, "
            f"refresh_token={mask_token(self.refresh_token)!r}, expires_at={self.expires_at!r}, "
            f"token_type={self.token_type!r}, domain={self.domain!r})"
        )

    def expires_within(self, seconds: float, *, now: float) -> bool:
        return self.expires_at - now <= seconds

    def to_dict(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "expires_at": self.expires_at,
            "token_type": self.token_type,
            "server_time": self.server_time,
            "issued_at": self.issued_at,
            "domain": self.domain,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TokenSet:
        access = data.get("access_token")
        if not isinstance(access, str) or not access:
            raise ValueError("a stored token set needs an access_token")
        refresh = data.get("refresh_token")
        server_time = data.get("server_time")
        issued_at = data.get("issued_at")
        domain = data.get("domain")
        return cls(
            access_token=access,
            refresh_token=refresh if isinstance(refresh, str) and refresh else None,
            expires_at=float(data.get("expires_at") or 0.0),
            token_type=str(data.get("token_type") or "Bearer"),
            server_time=int(server_time) if isinstance(server_time, int | float) else None,
            issued_at=float(issued_at) if isinstance(issued_at, int | float) else None,
            domain=domain if isinstance(domain, str) and domain else None,
        )

    @classmethod
    def from_token_response(
        cls,
        body: Any,
        *,
        now: float,
        domain: str | None = None,
        previous_refresh_token: str | None = None,
    ) -> TokenSet:
        """The pair in a 200 reply of ``/oauth2/access_token``. ``expires_in`` counts from ``now``
        (our clock, so clock skew with amoCRM does not matter); a reply without a refresh token
        keeps ``previous_refresh_token``."""
        if not isinstance(body, dict):
            raise ValueError("the token endpoint's reply is not a JSON object")
        access = body.get("access_token")
        if not isinstance(access, str) or not access:
            raise ValueError("the token endpoint's reply has no access_token")
        refresh = body.get("refresh_token")
        if not isinstance(refresh, str) or not refresh:
            refresh = previous_refresh_token
        expires_in = body.get("expires_in")
        if isinstance(expires_in, int | float) and not isinstance(expires_in, bool):
            expires_at = now + float(expires_in)
        else:
            exp = token_claims(access).get("exp")
            expires_at = float(exp) if isinstance(exp, int | float) else now + DEFAULT_ACCESS_TTL
        server_time = body.get("server_time")
        return cls(
            access_token=access,
            refresh_token=refresh,
            expires_at=expires_at,
            token_type=str(body.get("token_type") or "Bearer"),
            server_time=int(server_time) if isinstance(server_time, int | float) else None,
            issued_at=now,
            domain=domain,
        )


# --- protocols -----------------------------------------------------------------------------------


@runtime_checkable
class TokenProvider(Protocol):
    """What :class:`~amobridge.amo.client.AmoClient` asks for credentials.

    ``get_token()`` returns an access token good to use now; ``refresh(stale_token)`` is called
    after amoCRM answered 401 to ``stale_token`` and returns a newer one, or raises
    :class:`AmoReauthRequired`. Optional attributes the client reads: ``integration_id`` (the
    rate-limit key) and ``domain`` (an :class:`AccountDomain` that discovery may change).
    """

    async def get_token(self) -> str: ...

    async def refresh(self, stale_token: str) -> str: ...


@runtime_checkable
class TokenStore(Protocol):
    """Where token pairs live, by ``key`` (one per integration and account).

    ``lock(key)`` returns an async context manager held around a refresh: the in-memory store uses
    an ``asyncio.Lock``, the JSON file store adds an ``fcntl`` file lock, the service a database
    lease. ``save`` must be durable when it returns: the pair it got may be the only valid one.
    """

    async def load(self, key: str) -> TokenSet | None: ...

    async def save(self, key: str, tokens: TokenSet) -> None: ...

    def lock(self, key: str) -> contextlib.AbstractAsyncContextManager[Any]: ...


# --- stores --------------------------------------------------------------------------------------


class InMemoryTokenStore:
    """Tokens in a dict: for tests and short-lived scripts (a restart forgets the pair)."""

    def __init__(self, initial: Mapping[str, TokenSet] | None = None) -> None:
        self._data: dict[str, TokenSet] = dict(initial or {})
        self._locks: dict[str, asyncio.Lock] = {}

    def __repr__(self) -> str:
        return f"InMemoryTokenStore(keys={sorted(self._data)!r})"

    async def load(self, key: str) -> TokenSet | None:
        return self._data.get(key)

    async def save(self, key: str, tokens: TokenSet) -> None:
        self._data[key] = tokens

    def lock(self, key: str) -> contextlib.AbstractAsyncContextManager[Any]:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock


class JsonFileTokenStore:
    """Tokens in one JSON file (``{key: pair}``), written atomically (temp file, fsync, rename) with
    mode 0600. ``lock(key)`` holds an ``asyncio.Lock`` and an ``fcntl.flock`` on a per-key lock file
    next to it, so processes sharing the file refresh one at a time. POSIX only.

    The file holds tokens in plain text: keep it out of version control and backups you share.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, lock_timeout: float = 60.0, poll: float = 0.01
    ) -> None:
        self.path = Path(path)
        self.lock_timeout = lock_timeout
        self._poll = poll
        self._locks: dict[str, asyncio.Lock] = {}

    def __repr__(self) -> str:
        return f"JsonFileTokenStore({str(self.path)!r})"

    async def load(self, key: str) -> TokenSet | None:
        data = await asyncio.to_thread(self._read)
        item = data.get(key)
        if not isinstance(item, dict):
            return None
        try:
            return TokenSet.from_dict(item)
        except (ValueError, TypeError):  # a damaged entry reads as "no tokens": connect again
            return None

    async def save(self, key: str, tokens: TokenSet) -> None:
        await asyncio.to_thread(self._write, key, tokens.to_dict())

    def lock(self, key: str) -> contextlib.AbstractAsyncContextManager[Any]:
        return self._key_lock(key)

    @contextlib.asynccontextmanager
    async def _key_lock(self, key: str) -> AsyncIterator[None]:
        import fcntl

        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        lock_path = self.path.with_name(f"{self.path.name}.{digest}.lock")
        async with lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                deadline = time.monotonic() + self.lock_timeout
                wait = self._poll
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            raise AmoTokenStoreError(
                                f"could not lock {lock_path} within {self.lock_timeout:g} s: "
                                "another process holds it; check for a stuck process"
                            ) from None
                        await asyncio.sleep(wait)  # another process refreshes: poll its lock
                        wait = min(wait * 2, 0.2)
                yield
            finally:
                os.close(fd)  # closing the descriptor releases the flock

    def _read(self) -> dict[str, Any]:
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        if not raw.strip():
            return {}
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise AmoTokenStoreError(f"{self.path} does not hold a JSON object of token pairs")
        return data

    def _write(self, key: str, item: dict[str, Any]) -> None:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        guard = os.open(
            self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600
        )
        try:
            fcntl.flock(guard, fcntl.LOCK_EX)  # short: read-modify-write of the file
            data = self._read()
            data[key] = item
            fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    json.dump(data, handle, indent=2, sort_keys=True)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.chmod(tmp, 0o600)
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        finally:
            os.close(guard)


# --- token endpoint ------------------------------------------------------------------------------

_HINT_ADVICE = {
    "authorization code has expired": "codes live 20 minutes: exchange it right after the redirect, "
    "or authorize again",
    "authorization code has been revoked": "a code can be exchanged only once: authorize again",
    "cannot decrypt the authorization code": "the code was mistyped or belongs to another "
    "integration: authorize again",
    "redirect uri is not associated with client": "redirect_uri must equal the integration's "
    "setting exactly",
    "invalid account": "the code or token belongs to another account: use the host from the "
    "redirect's `referer` parameter",
    "token has been revoked": "the refresh token was already used (they are single-use) or the "
    "integration was disabled: connect the integration again",
    "token has expired": "the refresh token aged out (3 months without a refresh): connect the "
    "integration again",
}


def _advice(status: int, title: str | None, hint: str | None, oauth_error: str | None) -> str:
    if hint:
        lowered = hint.lower()
        for known, advice in _HINT_ADVICE.items():
            if lowered.startswith(known):
                return advice
        if "client_id" in lowered or "client_secret" in lowered:
            return "check client_id and client_secret against the integration's Keys tab"
    if status == 401 and not hint:
        return "client_secret does not match client_id: check the integration's Keys tab"
    if oauth_error == "invalid_grant":
        return "the grant is no longer valid: connect the integration again"
    return "check the integration's settings, then connect it again"


@dataclass(eq=False)
class _TokenEndpointRefusal(Exception):
    """A 4xx from the token endpoint (internal: turned into AmoAuthError/AmoReauthRequired)."""

    status: int
    url: str
    title: str | None
    detail: str | None
    hint: str | None
    oauth_error: str | None
    body_excerpt: str
    request_id: str | None

    def error(self, cls: type[AmoAuthError], what: str, note: str = "") -> AmoAuthError:
        said = self.oauth_error or self.hint or self.detail or self.title or "refused"
        if self.oauth_error and self.hint:
            said = f"{self.oauth_error}: {self.hint}"
        advice = _advice(self.status, self.title, self.hint, self.oauth_error)
        return cls(
            f"amoCRM's token endpoint refused the {what} ({self.status}: {said}); {advice}.{note}",
            hint=self.hint,
            oauth_error=self.oauth_error,
            status=self.status,
            method="POST",
            url=self.url,
            title=self.title,
            detail=self.detail,
            body_excerpt=self.body_excerpt,
            request_id=self.request_id,
        )


async def _post_token_endpoint(
    http: httpx.AsyncClient,
    host: str,
    body: dict[str, str],
    *,
    base_url: str | None,
    deadline: float,
    retry: RetryPolicy,
    clock: Callable[[], float],
) -> dict[str, Any]:
    """POST to ``https://{host}/oauth2/access_token``; retries transport failures, 429 and 5xx
    within ``retry``; returns the 200 body; raises _TokenEndpointRefusal for other 4xx."""
    url, headers = request_target(host, TOKEN_PATH, base_url)
    shown_url = f"https://{host}{TOKEN_PATH}"
    headers["Accept"] = "application/json"
    attempts = 0
    spent = 0.0
    while True:
        attempts += 1
        started = time.monotonic()
        hint: float | None = None
        failure: AmoError
        try:
            async with asyncio.timeout(deadline):
                response = await http.post(url, json=body, headers=headers)
        except (httpx.TransportError, TimeoutError) as exc:
            if isinstance(exc, TimeoutError | httpx.TimeoutException):
                failure = AmoTimeout(
                    f"amoCRM's token endpoint at {host} did not answer within {deadline:g} s; "
                    "try again later"
                )
            else:
                failure = AmoConnectionError(
                    f"could not reach amoCRM's token endpoint at {host} "
                    f"({type(exc).__name__}); check the network and try again"
                )
            failure.__cause__ = exc
        else:
            status = response.status_code
            content = response.content
            if status == 200:
                try:
                    data = json.loads(content)
                except ValueError:
                    data = None
                if isinstance(data, dict):
                    return data
                failure = AmoServerError(
                    "amoCRM's token endpoint answered 200 without a JSON object; try again later",
                    status=status,
                    method="POST",
                    url=shown_url,
                )
            elif status == 429 or status >= 500:
                failure = error_from_response(
                    status=status,
                    method="POST",
                    url=shown_url,
                    body=content,
                    request_id=response.headers.get("x-request-id"),
                    retry_after_header=response.headers.get("retry-after"),
                    now=clock(),
                )
                if isinstance(failure, AmoRateLimited):
                    hint = failure.retry_after
            else:
                problem = parse_problem(content)
                raise _TokenEndpointRefusal(
                    status=status,
                    url=shown_url,
                    title=_str_or_none(problem.get("title")),
                    detail=_str_or_none(problem.get("detail")),
                    hint=_str_or_none(problem.get("hint")),
                    oauth_error=_str_or_none(problem.get("error")),
                    body_excerpt=content[:500].decode("utf-8", "replace"),
                    request_id=response.headers.get("x-request-id"),
                )
        if hint is not None and hint > retry.max_retry_after:
            raise failure
        spent += time.monotonic() - started
        wait = retry.next_wait(attempts=attempts, spent=spent, hint=hint)
        if wait is None:
            raise failure
        log.warning(
            "amoCRM token endpoint at %s failed (%s); retry %d in %.2f s",
            host,
            type(failure).__name__,
            attempts,
            wait,
        )
        await retry.wait(wait)
        spent += wait


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


async def exchange_code(
    domain: str | AccountDomain,
    *,
    client_id: str,
    client_secret: str,
    redirect_uri: str,
    code: str,
    transport: httpx.AsyncBaseTransport | None = None,
    base_url: str | None = None,
    http: httpx.AsyncClient | None = None,
    timeout: float = 30.0,  # noqa: ASYNC109 - a per-request deadline, applied with asyncio.timeout
    retry: RetryPolicy | None = None,
    clock: Callable[[], float] = time.time,
    user_agent: str | None = None,
) -> TokenSet:
    """Exchange an authorization code for a token pair at the **account's** token endpoint
    (``https://{referer}/oauth2/access_token``; §2.2).

    ``domain`` is the ``referer`` from the redirect. Refusals raise :class:`AmoAuthError` with
    amoCRM's ``hint`` and what to do (a code lives 20 minutes and works once).
    """
    account = parse_account_domain(domain)
    body = {
        "client_id": client_id,
        "client_secret": client_secret,
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
    }
    # One retry at most, and only when nothing could have been processed twice: a code works once.
    policy = retry or RetryPolicy(max_attempts=2)
    owned = http is None
    client = http or httpx.AsyncClient(
        transport=transport, headers={"User-Agent": user_agent or default_user_agent()}
    )
    try:
        now = clock()
        try:
            data = await _post_token_endpoint(
                client,
                account.host,
                body,
                base_url=base_url,
                deadline=timeout,
                retry=policy,
                clock=clock,
            )
        except _TokenEndpointRefusal as refusal:
            raise refusal.error(AmoAuthError, "authorization code") from None
        try:
            return TokenSet.from_token_response(data, now=now, domain=account.host)
        except ValueError as exc:
            raise AmoServerError(
                f"amoCRM's token endpoint answered 200 with an unusable body ({exc}); "
                "authorize again",
                status=200,
                method="POST",
                url=f"https://{account.host}{TOKEN_PATH}",
            ) from None
    finally:
        if owned:
            await client.aclose()


# --- providers -----------------------------------------------------------------------------------


class StaticTokenProvider:
    """A long-lived token (private integrations, §2.4): no refresh; a 401 means it expired or was
    revoked, which raises :class:`AmoReauthRequired`."""

    def __init__(self, token: str) -> None:
        if not token or not token.strip():
            raise ValueError("StaticTokenProvider needs a token")
        self._token = token.strip()
        aud = token_claims(self._token).get("aud")
        self.integration_id: str | None = aud if isinstance(aud, str) else None

    def __repr__(self) -> str:
        return f"StaticTokenProvider({mask_token(self._token)!r})"

    async def get_token(self) -> str:
        return self._token

    async def refresh(self, stale_token: str) -> str:
        raise AmoReauthRequired(
            "amoCRM refused the long-lived token (expired or revoked). Generate a new one on the "
            'integration\'s Keys tab ("Сгенерировать токен") and configure it.',
            status=401,
        )


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
    """OAuth 2.0 tokens of one integration in one account, refreshed single-flight (see the module
    docstring for the rules). Keep one provider per (integration, account) per process and share
    it between clients; close it with ``aclose()`` (or ``async with``) when it owns its HTTP client.

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
        """An access token valid for at least the leeway; refreshes first when needed."""
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
                data = await _post_token_endpoint(
                    self._http,
                    self._domain.host,
                    body,
                    base_url=self._base_url,
                    deadline=self._timeout,
                    retry=self._retry,
                    clock=self._clock,
                )
            except _TokenEndpointRefusal as refusal:
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
        """Subdomain discovery (§1); True when it found another host to retry on."""
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
