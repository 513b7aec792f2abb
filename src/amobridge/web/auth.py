"""Who is calling: host apps with API keys, end users with JWTs (seed 003).

- API keys (``amb_<prefix>_<secret>``) are stored as SHA-256 hashes; ``role`` is ``admin`` (any
  owner, token import, operations) or ``app`` (a host app acting for the owner it names).
- End-user JWTs (HS256 or RS256 by setting): the owner is the ``sub`` claim and cannot be
  overridden by a parameter — a user can never reach another owner's connection (invariant 6).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import jwt
import jwt.types
from sqlalchemy import select, update

from amobridge.errors import Forbidden, ServiceError, Unauthorized
from amobridge.settings import SecuritySettings
from amobridge.storage.db import Database
from amobridge.storage.tables import ApiKey

Role = Literal["admin", "app", "user"]
KEY_PREFIX = "amb_"


@dataclass(frozen=True)
class Principal:
    role: Role
    name: str
    owner: str | None = None  # fixed for JWT users; None for API keys (they name it per request)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def owner_for(self, requested: str | None) -> str:
        """The owner this call acts for. Users get their own; keys must name one."""
        if self.owner is not None:
            if requested is not None and requested != self.owner:
                raise Forbidden("this token belongs to another owner")
            return self.owner
        if not requested or not requested.strip():
            raise ServiceError("owner is required (query parameter or body field 'owner')")
        if len(requested) > 255:
            raise ServiceError("owner is longer than 255 characters")
        return requested


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key() -> tuple[str, str]:
    """(the key to show once, its public prefix)."""
    prefix = secrets.token_hex(4)
    return f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}", prefix


async def create_api_key(db: Database, *, name: str, role: Role) -> str:
    key, prefix = new_api_key()
    async with db.transaction() as session:
        session.add(ApiKey(name=name, prefix=prefix, key_hash=hash_key(key), role=role))
    return key


async def ensure_api_key(db: Database, *, key: str, name: str, role: Role) -> None:
    """Store a configured key (the bootstrap admin key) unless it is already there."""
    digest = hash_key(key)
    async with db.transaction() as session:
        found = await session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
        if found is None:
            prefix = key.removeprefix(KEY_PREFIX)[:8]
            session.add(ApiKey(name=name, prefix=prefix, key_hash=digest, role=role))


async def principal_from_api_key(db: Database, key: str) -> Principal | None:
    digest = hash_key(key)
    async with db.transaction() as session:
        row = await session.scalar(
            select(ApiKey).where(ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None))
        )
        if row is None:
            return None
        await session.execute(
            update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=datetime.now(UTC))
        )
        role: Role = "admin" if row.role == "admin" else "app"
        return Principal(role=role, name=row.name)


def principal_from_jwt(settings: SecuritySettings, token: str) -> Principal:
    if settings.jwt_algorithm == "HS256":
        if settings.jwt_secret is None:
            raise Unauthorized("end-user tokens are not enabled (AMOBRIDGE_SECURITY__JWT_SECRET)")
        key: str = settings.jwt_secret.get_secret_value()
    else:
        if not settings.jwt_public_key:
            raise Unauthorized(
                "end-user tokens are not enabled (AMOBRIDGE_SECURITY__JWT_PUBLIC_KEY)"
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
        raise Unauthorized("the token has expired: sign in again") from None
    except jwt.InvalidTokenError as exc:
        raise Unauthorized(f"invalid token: {exc}") from None
    sub = claims.get("sub")
    if not isinstance(sub, str | int) or str(sub).strip() == "":
        raise Unauthorized("invalid token: no subject")
    return Principal(role="user", name=f"user:{sub}", owner=str(sub))


async def authenticate(
    db: Database, settings: SecuritySettings, authorization: str | None, api_key: str | None
) -> Principal:
    """From ``Authorization: Bearer …`` (API key or JWT) or ``X-API-Key``."""
    token = api_key
    if token is None and authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            token = value.strip()
    if not token:
        raise Unauthorized("authentication required: an API key or a user token")
    if token.startswith(KEY_PREFIX):
        principal = await principal_from_api_key(db, token)
        if principal is None:
            raise Unauthorized("unknown or revoked API key")
        return principal
    return principal_from_jwt(settings, token)
