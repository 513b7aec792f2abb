"""What ``amobridge connections list`` shows: every connection's status columns, never a token.

The command builds none of the service (no keyring, no migrations, no HTTP clients). A SQLite file
is read with the standard library's ``sqlite3``, opened read-only: the command neither creates a
missing database (it says there is none) nor takes the write lock, and it skips importing
SQLAlchemy, most of what the command used to cost. This is the one read of amobridge's tables
outside a repository; every other database is read by
:class:`~amobridge.connect.repository.ConnectionListRepository`. Both select
:data:`LISTED_COLUMNS`, and a test compares their answers on the same database.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from amobridge.errors import AmobridgeError

# Columns of ``connections`` (storage/tables.py, Connection) the listing reads; both readings
# add whether the row holds tokens (``access_token_enc IS NOT NULL``) after them.
LISTED_COLUMNS = (
    "id",
    "owner",
    "host",
    "account_id",
    "status",
    "long_lived",
    "expires_at",
    "last_refresh_at",
    "last_error",
)


class DatabaseNotReady(AmobridgeError):
    """There is no database at the configured place, or it has no amobridge tables yet."""


@dataclass(frozen=True)
class ListedConnection:
    id: str
    owner: str
    domain: str
    account_id: int | None
    status: str
    has_tokens: bool
    long_lived: bool
    expires_at: datetime | None
    last_refresh_at: datetime | None
    last_error: str | None

    def as_json(self) -> dict[str, Any]:
        """The names ``GET /amocrm/status`` uses, plus the owner."""
        return {
            "owner": self.owner,
            "domain": self.domain,
            "accountId": self.account_id,
            "status": self.status,
            "connected": self.status == "active" and self.has_tokens,
            "hasTokens": self.has_tokens,
            "longLived": self.long_lived,
            "expiresAt": _iso(self.expires_at),
            "lastRefreshAt": _iso(self.last_refresh_at),
            "lastError": self.last_error,
            "connectionId": self.id,
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _utc(value: object) -> datetime | None:
    """A stored time as an aware UTC datetime: SQLite holds naive UTC text, PostgreSQL an aware
    value."""
    if value is None:
        return None
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _listed(row: tuple[Any, ...]) -> ListedConnection:
    id_, owner, host, account_id, status, long_lived, expires, refreshed, error, has_tokens = row
    return ListedConnection(
        id=id_,
        owner=owner,
        domain=host,
        account_id=account_id,
        status=status,
        has_tokens=bool(has_tokens),
        long_lived=bool(long_lived),
        expires_at=_utc(expires),
        last_refresh_at=_utc(refreshed),
        last_error=error,
    )


def list_sqlite(path: Path) -> list[ListedConnection]:
    """Every connection in the SQLite file at ``path``, oldest first. Read-only: a missing file
    raises :class:`DatabaseNotReady` instead of becoming an empty database."""
    path = path.resolve()
    if not path.is_file():
        raise DatabaseNotReady(f"no database at {path}")
    try:
        connection = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error as exc:
        raise DatabaseNotReady(f"cannot open the database at {path}: {exc}") from None
    try:
        columns = ", ".join(LISTED_COLUMNS)
        rows = connection.execute(
            f"SELECT {columns}, access_token_enc IS NOT NULL "  # noqa: S608 - constant names
            "FROM connections ORDER BY created_at"
        ).fetchall()
    except sqlite3.DatabaseError as exc:
        raise DatabaseNotReady(_NOT_MIGRATED.format(what=path, reason=exc)) from None
    finally:
        connection.close()
    return [_listed(tuple(row)) for row in rows]


async def list_database(url: str) -> list[ListedConnection]:
    """Every connection in the database at ``url`` (any backend), oldest first, through
    SQLAlchemy."""
    from sqlalchemy.exc import DBAPIError

    from amobridge.connect.repository import ConnectionListRepository
    from amobridge.storage.db import Database

    db = Database(url)
    try:
        async with db.read() as session:
            repository = ConnectionListRepository(session)
            if not await repository.migrated():
                raise DatabaseNotReady(
                    _NOT_MIGRATED.format(what="the database", reason="no tables")
                )
            return [_listed(row) for row in await repository.rows()]
    except DBAPIError as exc:  # e.g. a column missing: migrated by an older amobridge
        reason = str(exc.orig).splitlines()[0] if exc.orig else type(exc).__name__
        raise DatabaseNotReady(_NOT_MIGRATED.format(what="the database", reason=reason)) from None
    finally:
        await db.dispose()


_NOT_MIGRATED = (
    "{what} is not an amobridge database of this version ({reason}): run `amobridge migrate` "
    "(or start the service) with the same AMOBRIDGE_DATABASE__URL"
)
