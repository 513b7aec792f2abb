"""Authenticating a request: API keys (hashed at rest) and end-user JWTs (HS256 or RS256).

- API keys (``amb_<prefix>_<secret>``) are stored as SHA-256 hashes. A key that checked out is
  remembered for ``cache_seconds`` (5 s), so a busy host app costs no database read per request;
  revoking a key therefore takes effect within that time. Requests that find a key unchecked at
  the same moment share one read. ``last_used_at`` is written at most once a minute per key,
  never on every request.
- End-user JWTs: the owner is the ``sub`` claim and cannot be overridden by a parameter — a user
  can never reach another owner's connection (invariant 6).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import jwt
import jwt.types
from sqlalchemy.ext.asyncio import AsyncSession

from amobridge.auth.principal import KEY_PREFIX, Principal, Role, identifier_problem
from amobridge.auth.repository import ApiKeyRepository
from amobridge.errors import Unauthorized
from amobridge.settings import SecuritySettings
from amobridge.storage.db import Database
from amobridge.storage.tables import ApiKey

log = logging.getLogger("amobridge.auth")

CACHE_SECONDS = 5.0
TOUCH_EVERY_SECONDS = 60.0
CACHE_SIZE = 4096


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key() -> tuple[str, str]:
    """(the key to show once, its public prefix)."""
    prefix = secrets.token_hex(4)
    return f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}", prefix


@dataclass(frozen=True)
class _Known:
    principal: Principal
    key_id: str
    checked_at: float


class AuthService:
    def __init__(
        self,
        db: Database,
        settings: SecuritySettings,
        *,
        cache_seconds: float = CACHE_SECONDS,
        touch_every: float = TOUCH_EVERY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self.settings = settings
        self._cache_seconds = cache_seconds
        self._touch_every = touch_every
        self._clock = clock
        self._known: OrderedDict[str, _Known] = OrderedDict()
        self._lookups: dict[str, asyncio.Future[_Known | None]] = {}
        self._touched: dict[str, float] = {}
        self._touching: set[asyncio.Task[None]] = set()

    # --- keys (the caller's unit of work commits) -------------------------------------------------
    async def create_api_key(self, session: AsyncSession, *, name: str, role: Role) -> str:
        key, prefix = new_api_key()
        ApiKeyRepository(session).add(
            ApiKey(name=name, prefix=prefix, key_hash=hash_key(key), role=role)
        )
        return key

    async def ensure_api_key(
        self, session: AsyncSession, *, key: str, name: str, role: Role
    ) -> None:
        """Store a configured key (the bootstrap admin key) unless it is already there."""
        repo = ApiKeyRepository(session)
        digest = hash_key(key)
        if await repo.by_hash(digest) is None:
            prefix = key.removeprefix(KEY_PREFIX)[:8]
            repo.add(ApiKey(name=name, prefix=prefix, key_hash=digest, role=role))

    # --- requests --------------------------------------------------------------------------------
    async def authenticate(self, authorization: str | None, api_key: str | None) -> Principal:
        """From ``Authorization: Bearer …`` (API key or JWT) or ``X-API-Key``."""
        token = api_key
        if token is None and authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                token = value.strip()
        if not token:
            raise Unauthorized("authentication required: an API key or a user token")
        if token.startswith(KEY_PREFIX):
            principal = await self.principal_from_api_key(token)
            if principal is None:
                raise Unauthorized("unknown or revoked API key", code="invalid_api_key")
            return principal
        return self.principal_from_jwt(token)

    async def principal_from_api_key(self, key: str) -> Principal | None:
        digest = hash_key(key)
        now = self._clock()
        known = self._known.get(digest)
        if known is None or now - known.checked_at >= self._cache_seconds:
            flight = self._lookups.get(digest)
            if flight is None:
                flight = asyncio.ensure_future(self._look_up(digest, now))
                self._lookups[digest] = flight
                flight.add_done_callback(lambda done: self._landed(digest, done))
            # One read for every request that finds the key unknown or its check expired at the
            # same moment; shielded, so a caller that goes away does not cancel the others' read.
            found = await asyncio.shield(flight)
            if found is None:
                return None
            known = found
        if now - self._touched.get(known.key_id, float("-inf")) >= self._touch_every:
            self._touched[known.key_id] = now
            # Bookkeeping, off the request's path: a busy write lock or a failing write must
            # neither slow nor fail the request it was noticed in.
            task = asyncio.get_running_loop().create_task(self._mark_used(known.key_id))
            self._touching.add(task)
            task.add_done_callback(self._touching.discard)
        return known.principal

    async def _mark_used(self, key_id: str) -> None:
        try:
            async with self._db.transaction() as session:
                await ApiKeyRepository(session).mark_used(key_id, datetime.now(UTC))
        except Exception as exc:  # logged and retried a minute later, never raised
            log.warning("could not record the use of API key %s: %s", key_id, type(exc).__name__)
            self._touched.pop(key_id, None)

    async def aclose(self) -> None:
        """Let pending ``last_used_at`` writes finish (before the database is closed)."""
        if self._touching:
            await asyncio.gather(*self._touching, return_exceptions=True)

    def _landed(self, digest: str, done: asyncio.Future[_Known | None]) -> None:
        self._lookups.pop(digest, None)
        if not done.cancelled():
            done.exception()  # seen here: the callers still waiting get it; nobody else must

    async def _look_up(self, digest: str, now: float) -> _Known | None:
        async with self._db.read() as session:
            row = await ApiKeyRepository(session).by_hash(digest)
            found = (
                None if row is None or row.revoked_at is not None else (row.id, row.name, row.role)
            )
        if found is None:
            self._known.pop(digest, None)
            return None
        key_id, name, role = found
        known = _Known(
            Principal(role="admin" if role == "admin" else "app", name=name), key_id, now
        )
        self._known[digest] = known
        self._known.move_to_end(digest)
        while len(self._known) > CACHE_SIZE:
            self._known.popitem(last=False)
        return known

    def principal_from_jwt(self, token: str) -> Principal:
        settings = self.settings
        if settings.jwt_algorithm == "HS256":
            if settings.jwt_secret is None:
                raise Unauthorized(
                    "end-user tokens are not enabled (AMOBRIDGE_SECURITY__JWT_SECRET)",
                    code="user_tokens_disabled",
                )
            key: str = settings.jwt_secret.get_secret_value()
        else:
            if not settings.jwt_public_key:
                raise Unauthorized(
                    "end-user tokens are not enabled (AMOBRIDGE_SECURITY__JWT_PUBLIC_KEY)",
                    code="user_tokens_disabled",
                )
            key = settings.jwt_public_key
        options: jwt.types.Options = {
            "require": ["sub", "exp"],
            "verify_aud": settings.jwt_audience is not None,
        }
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[settings.jwt_algorithm],
                audience=settings.jwt_audience,
                issuer=settings.jwt_issuer,
                options=options,
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized(
                "the token has expired: sign in again", code="token_expired"
            ) from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"invalid token: {exc}", code="invalid_token") from None
        sub = claims.get("sub")
        if not isinstance(sub, str | int) or str(sub).strip() == "":
            raise Unauthorized("invalid token: no subject", code="invalid_token")
        problem = identifier_problem(str(sub), "the token's subject (sub)")
        if problem is not None:
            raise Unauthorized(f"invalid token: {problem}", code="invalid_token")
        return Principal(role="user", name=f"user:{sub}", owner=str(sub))
