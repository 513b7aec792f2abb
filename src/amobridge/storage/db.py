"""The database handle: one async engine, sessions as transactions, one code path for SQLite and
PostgreSQL.

Two kinds of unit of work:
- :meth:`Database.transaction` — may write. On SQLite (the embedded default, WAL mode, busy
  timeout) it starts with ``BEGIN IMMEDIATE``: it takes the write lock up front, so two processes
  never both read a row and then race to update it (a plain ``BEGIN`` would fail one of them with
  "database is locked" at the upgrade, or worse, let both read the same refresh token).
- :meth:`Database.read` — reads only, on a pool of its own whose connections are read-only
  (``PRAGMA query_only`` on SQLite, ``default_transaction_read_only`` on PostgreSQL: a write in a
  read unit fails instead of being silently rolled back) and in autocommit mode: no ``BEGIN``, no
  ``ROLLBACK``, each statement reads the last committed state. On SQLite such a read never takes
  or waits for the write lock (WAL lets it read while one connection writes), so an
  authenticated status read does not wait for a refresh or a webhook write; PostgreSQL's READ
  COMMITTED gave every statement a snapshot of its own inside a transaction too. What the
  transaction cost was round trips: on SQLite every statement is a hop to aiosqlite's thread and
  back (9 per status read with ``BEGIN`` and the rollbacks, 5 without), on PostgreSQL two more
  round trips to the server.
PostgreSQL uses row locks (``SELECT … FOR UPDATE``) and ``SKIP LOCKED`` where repositories ask
for them in write units.

:attr:`Database.write_generation` counts the write units this process has finished, so a cache of
database state (the status answers of ``GET /amocrm/status``) can tell whether this process wrote
anything since it read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

SQLITE_BUSY_TIMEOUT_MS = 30_000


def normalize_url(url: str) -> str:
    """Accept plain ``sqlite:///``/``postgresql://`` URLs and pick the async drivers."""
    parsed = make_url(url)
    if parsed.drivername in ("sqlite", "sqlite+pysqlite"):
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    elif parsed.drivername in (
        "postgresql",
        "postgres",
        "postgresql+psycopg2",
        "postgresql+asyncpg",
    ):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


class Database:
    def __init__(self, url: str, *, echo: bool = False, pool_size: int = 5) -> None:
        self.url = normalize_url(url)
        self.dialect = make_url(self.url).get_backend_name()
        kwargs: dict[str, Any] = {"echo": echo}
        if self.dialect == "sqlite":
            database = make_url(self.url).database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        else:
            kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        # Reads keep a fixed set of connections open and queue for one when all are busy. With
        # overflow, a connection that came back to a full pool was closed and the next burst
        # opened another — a thread and its PRAGMAs on SQLite, a server process on PostgreSQL —
        # over and over under 16 concurrent reads.
        read_kwargs = {**kwargs, "pool_size": 2 * pool_size, "max_overflow": 0}
        if self.dialect == "sqlite":
            _configure_sqlite(self.engine, begin="BEGIN IMMEDIATE")
            # No transaction is ever open on a read connection, so none needs a reset either.
            self.read_engine = create_async_engine(
                self.url, isolation_level="AUTOCOMMIT", pool_reset_on_return=None, **read_kwargs
            )
            _configure_sqlite(self.read_engine, begin=None, query_only=True)
        else:
            self.read_engine = create_async_engine(
                self.url,
                isolation_level="AUTOCOMMIT",
                connect_args={"options": "-c default_transaction_read_only=on"},
                **read_kwargs,
            )
        self._write_generation = 0
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._read_sessions = async_sessionmaker(self.read_engine, expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """One unit of work: committed when the block ends, rolled back if it raises."""
        try:
            async with self._sessions() as session, session.begin():
                yield session
        finally:
            # Counted once the unit is over, committed or not (a rolled-back one costs a cache
            # at most one needless read): whatever was read before this may predate the write.
            self._write_generation += 1

    @property
    def write_generation(self) -> int:
        """How many write units this process has finished. A value read before a read unit
        that is still the same afterwards means no write of this process ended in between."""
        return self._write_generation

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A read-only unit of work: autocommit reads on read-only connections (a write here
        raises)."""
        async with self._read_sessions() as session:
            yield session

    async def ping(self) -> None:
        """One round trip to the database (readiness); raises when it cannot answer."""
        async with self.read() as session:
            await session.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()
        await self.read_engine.dispose()


def _configure_sqlite(engine: AsyncEngine, *, begin: str | None, query_only: bool = False) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN IMMEDIATE instead of pysqlite's lazy BEGIN
        # (and, without a ``begin``, leave every statement in autocommit).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        # WAL is a property of the database file: switch only when needed. Switching needs an
        # exclusive lock and answers "database is locked" at once (no busy wait) while another
        # connection is open, so many processes opening a WAL database must not all ask for it.
        cursor.execute("PRAGMA journal_mode")
        mode = cursor.fetchone()
        if not mode or str(mode[0]).lower() != "wal":
            try:
                cursor.execute("PRAGMA journal_mode=WAL")
            except Exception:  # another connection holds a lock: it is switching (or has)
                cursor.execute("PRAGMA journal_mode")
                mode = cursor.fetchone()
                if not mode or str(mode[0]).lower() != "wal":
                    raise
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        if query_only:  # last: switching to WAL above may write the database header
            cursor.execute("PRAGMA query_only=ON")
        cursor.close()

    if begin is None:
        return
    statement = begin

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql(statement)
