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

A third, for hot paths: :meth:`Database.run_unit` runs a write unit of a few statements as *one*
call on a thread of its own, with a synchronous connection. Each statement of an async unit is a
wake-up of the event loop (a hop to aiosqlite's thread, a round trip to PostgreSQL), and under load
every wake-up waits behind all the requests the loop has ready: the webhook receiver's unit of four
statements took 14 ms at 500 deliveries a second, and 4 ms this way.

:attr:`Database.write_generation` counts the write units this process has finished, so a cache of
database state (the status answers of ``GET /amocrm/status``) can tell whether this process wrote
anything since it read.

Every unit first asks :mod:`amobridge.storage.guard` whether the storage can be used (a SQLite
file still the one opened and writable) and is refused with ``StorageUnavailable`` (503) when not;
driver errors that mean the storage failed become the same. :meth:`Database.probe` is the
readiness check: the guard, then one small write.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from amobridge.storage.guard import (
    SqliteFileGuard,
    StorageUnavailable,
    failure_reason,
    is_storage_failure,
)
from amobridge.storage.marker import StorageMarkerRepository

SQLITE_BUSY_TIMEOUT_MS = 30_000
PROBE_MAX_AGE = 1.0  # seconds a readiness answer is reused
PROBE_TIMEOUT = 5.0  # seconds the readiness write may take

T = TypeVar("T")


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
        self.guard: SqliteFileGuard | None = None
        self.path: Path | None = None
        if self.dialect == "sqlite":
            database = make_url(self.url).database
            if database and database != ":memory:":
                self.path = Path(database).absolute()
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.guard = SqliteFileGuard(self.path)
            kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        else:
            kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        # Reads keep a fixed set of connections open and queue for one when all are busy. With
        # overflow, a connection that came back to a full pool was closed and the next burst
        # opened another — a thread and its PRAGMAs on SQLite, a server process on PostgreSQL —
        # over and over under 16 concurrent reads.
        read_kwargs = {**kwargs, "pool_size": 2 * pool_size, "max_overflow": 0}
        self._kwargs = kwargs
        self._unit_engine: Engine | None = None
        self._unit_connection: Connection | None = None  # kept open between units
        self._unit_thread: ThreadPoolExecutor | None = None
        if self.dialect == "sqlite":
            _configure_sqlite(self.engine.sync_engine, begin="BEGIN IMMEDIATE")
            # No transaction is ever open on a read connection, so none needs a reset either.
            self.read_engine = create_async_engine(
                self.url, isolation_level="AUTOCOMMIT", pool_reset_on_return=None, **read_kwargs
            )
            _configure_sqlite(self.read_engine.sync_engine, begin=None, query_only=True)
        else:
            self.read_engine = create_async_engine(
                self.url,
                isolation_level="AUTOCOMMIT",
                connect_args={"options": "-c default_transaction_read_only=on"},
                **read_kwargs,
            )
        self._write_generation = 0
        self._reopen = False  # the storage failed: reopen the pools once it answers again
        self._probe_lock = asyncio.Lock()
        self._probed_at = -PROBE_MAX_AGE
        self._probe_problem: str | None = None
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._read_sessions = async_sessionmaker(self.read_engine, expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    async def _usable(self) -> None:
        """Refuse a unit while the storage cannot take it; reopen the pools after a failure."""
        if self.guard is not None:
            problem = self.guard.problem()
            if problem is not None:
                self._reopen = True
                raise StorageUnavailable(problem)
        if self._reopen:
            # Connections opened while the files were write-protected stay read-only for good:
            # drop every idle one (those in use are closed when they come back).
            self._reopen = False
            await self.engine.dispose()
            await self.read_engine.dispose()
            if self._unit_thread is not None:
                await asyncio.get_running_loop().run_in_executor(
                    self._unit_thread, self._close_unit_engine
                )

    def _failed(self, error: BaseException, *, read_unit: bool = False) -> bool:
        if not is_storage_failure(error, read_unit=read_unit):
            return False
        self._reopen = True
        return True

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """One unit of work: committed when the block ends, rolled back if it raises."""
        await self._usable()
        try:
            async with self._sessions() as session, session.begin():
                yield session
        except Exception as exc:
            if self._failed(exc):
                raise StorageUnavailable(failure_reason(exc)) from exc
            raise
        finally:
            # Counted once the unit is over, committed or not (a rolled-back one costs a cache
            # at most one needless read): whatever was read before this may predate the write.
            self._write_generation += 1

    async def run_unit(self, work: Callable[[Connection], T]) -> T:
        """``work(connection)`` as one write unit in one call on this database's unit thread:
        one transaction (``BEGIN IMMEDIATE`` on SQLite), committed when ``work`` returns, rolled
        back if it raises. One thread, so units run one at a time in the order asked. ``work``
        runs outside the event loop: it must not touch it, and it runs to its end even if the
        caller is cancelled meanwhile (its unit then commits all the same)."""
        await self._usable()
        if self._unit_thread is None:
            self._unit_thread = ThreadPoolExecutor(1, thread_name_prefix="amobridge-unit")
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._unit_thread, self._run_unit, work
            )
        except Exception as exc:
            if self._failed(exc):
                raise StorageUnavailable(failure_reason(exc)) from exc
            raise
        finally:
            self._write_generation += 1

    def _run_unit(self, work: Callable[[Connection], T]) -> T:
        if self._unit_engine is None:
            url = make_url(self.url)
            if self.dialect == "sqlite":  # the same file and settings through the sync driver
                self._unit_engine = create_engine(
                    url.set(drivername="sqlite+pysqlite"), pool_size=1, **self._kwargs
                )
                _configure_sqlite(self._unit_engine, begin="BEGIN IMMEDIATE")
            else:  # psycopg is both drivers: the same URL
                self._unit_engine = create_engine(url, **{**self._kwargs, "pool_size": 1})
        connection = self._unit_connection
        if connection is None or connection.closed or connection.invalidated:
            # One connection for every unit: no pool checkout, return and reset per unit.
            connection = self._unit_connection = self._unit_engine.connect()
        try:
            with connection.begin():
                return work(connection)
        except BaseException:
            self._close_unit_connection()  # whatever failed, the next unit starts afresh
            raise

    def _close_unit_connection(self) -> None:
        connection, self._unit_connection = self._unit_connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()

    def _close_unit_engine(self) -> None:
        self._close_unit_connection()
        if self._unit_engine is not None:
            self._unit_engine.dispose()

    @property
    def write_generation(self) -> int:
        """How many write units this process has finished. A value read before a read unit
        that is still the same afterwards means no write of this process ended in between."""
        return self._write_generation

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A read-only unit of work: autocommit reads on read-only connections (a write here
        raises)."""
        await self._usable()
        try:
            async with self._read_sessions() as session:
                yield session
        except Exception as exc:
            if self._failed(exc, read_unit=True):
                raise StorageUnavailable(failure_reason(exc)) from exc
            raise

    async def ping(self) -> None:
        """One round trip to the database; raises when it cannot answer."""
        async with self.read() as session:
            await session.execute(text("SELECT 1"))

    async def probe(self) -> None:
        """The readiness check: the storage guard, then one small write (the marker row's
        ``probed_at``), so "ready" means the database takes writes. Raises
        ``StorageUnavailable`` with the reason."""
        async with self.transaction() as session:
            marked = await StorageMarkerRepository(session).touch()
        if not marked:
            raise StorageUnavailable(
                "the database has no identity row: it was emptied or replaced while the service "
                "ran; restart the service (its start-up check says what to do)"
            )

    async def readiness(self, *, max_age: float = PROBE_MAX_AGE) -> str | None:
        """``None`` when the database is usable, else why not. The probe's answer is reused for
        ``max_age`` seconds and concurrent callers share one probe, so a load balancer polling
        ``/readyz`` does not turn into a stream of writes; the file checks run every time."""
        if self.guard is not None:
            problem = self.guard.problem()
            if problem is not None:
                self._reopen = True
                return problem
        now = time.monotonic()
        if now - self._probed_at < max_age:
            return self._probe_problem
        async with self._probe_lock:
            if time.monotonic() - self._probed_at < max_age:
                return self._probe_problem
            try:
                await asyncio.wait_for(self.probe(), PROBE_TIMEOUT)
                problem = None
            except StorageUnavailable as exc:
                problem = exc.detail
            except TimeoutError:
                problem = f"the database did not answer a write within {PROBE_TIMEOUT:g} s"
            except Exception as exc:  # the readiness answer reports, never raises
                problem = f"the database failed: {type(exc).__name__}"
            self._probe_problem, self._probed_at = problem, time.monotonic()
            return problem

    async def dispose(self) -> None:
        if self.guard is not None and self.guard.problem() is not None:
            # Closing the last connection checkpoints the WAL, a write into files that no longer
            # take one (SIGBUS on an immutable -shm): leave them as they are, SQLite recovers
            # the WAL at the next open.
            return
        await self.engine.dispose()
        await self.read_engine.dispose()
        thread, self._unit_thread = self._unit_thread, None
        if thread is not None:
            await asyncio.get_running_loop().run_in_executor(thread, self._close_unit_engine)
            self._unit_engine = None
            thread.shutdown(wait=False)


def _configure_sqlite(engine: Engine, *, begin: str | None, query_only: bool = False) -> None:
    @event.listens_for(engine, "connect")
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

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql(statement)
