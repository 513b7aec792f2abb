"""Migrated databases for the tests: Alembic runs once per session, each test gets a copy.

Running every migration for every test made setup a large part of the integration tier, so
:class:`DatabaseTemplates` migrates a *template* once, on first use, with ``upgrade head`` (a
migration added tomorrow is picked up without touching this module), and hands each test a copy
of it: a fresh, migrated database of its own, which real processes can open as well (a
rolled-back outer transaction would be invisible to them).

- SQLite: the template is one file, checkpointed so that everything lives in the main file (no
  ``-wal``/``-shm`` to carry along) and never opened again; a copy is a plain file copy, still in WAL mode
  (the mode is recorded in the file header).
- PostgreSQL: the template is a database of its own, closed to connections once migrated (the
  server copies a template only while nobody is connected to it); a copy is
  ``CREATE DATABASE … TEMPLATE …``, made ahead while the previous test runs and dropped after its
  test. The template is dropped at the end of the session.

The migration tier (``tests/migration``) does not use any of this: it runs real upgrades and
downgrades on empty databases.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from sqlalchemy import Engine

# SQLAlchemy and Alembic are imported where used: the root conftest imports this module, and a
# run of the sandbox or unit tiers should not pay a second of imports for databases it never opens.


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def _sqlite_sidecars(path: Path) -> list[Path]:
    return [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", "-journal")]


def upgrade_to_head(url: str) -> None:
    """``alembic upgrade head`` on ``url``, from sync or async code alike: Alembic's env.py runs
    its own event loop, which a thread of its own always allows (the first test to need a
    template may be an async fixture, inside a running loop)."""
    from amobridge.storage import migrate

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="migrate-template") as worker:
        worker.submit(migrate.upgrade, url).result()


def migrated_sqlite_template(path: Path) -> Path:
    """Migrate a new SQLite file at ``path`` to head and freeze it as a template."""
    upgrade_to_head(sqlite_url(path))
    # Alembic's engine is closed, so this is the only connection: the TRUNCATE checkpoint moves
    # every page into the main file, and closing the last connection removes the WAL and SHM.
    connection = sqlite3.connect(path)
    try:
        busy, _, _ = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        connection.close()
    leftovers = [p for p in _sqlite_sidecars(path) if p.exists() and p.stat().st_size > 0]
    if busy or leftovers:
        raise RuntimeError(
            f"the SQLite template {path} is not self-contained after the checkpoint "
            f"(busy={busy}, leftovers={leftovers}): a copy of the main file would miss pages"
        )
    for sidecar in _sqlite_sidecars(path):
        sidecar.unlink(missing_ok=True)
    return path


def copy_sqlite(template: Path, target: Path) -> str:
    """A copy of ``template`` at ``target`` (writable: copyfile does not copy the mode)."""
    if any(p.exists() for p in [target, *_sqlite_sidecars(target)]):
        raise FileExistsError(f"{target} (or its WAL) already exists: a copy must start clean")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, target)
    return sqlite_url(target)


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class PostgresServer:
    """Creates and drops databases on the server of ``admin_url`` (a database that is not one
    of ours, e.g. ``…/test``), through one AUTOCOMMIT engine: CREATE/DROP DATABASE cannot run
    inside a transaction."""

    def __init__(self, admin_url: str) -> None:
        from sqlalchemy import create_engine

        self.admin_url = admin_url
        self._engine: Engine = create_engine(
            admin_url.replace("postgresql://", "postgresql+psycopg://", 1),
            isolation_level="AUTOCOMMIT",
            pool_pre_ping=True,
        )

    def url_of(self, name: str) -> str:
        return f"{self.admin_url.rsplit('/', 1)[0]}/{name}"

    def execute(self, sql: str) -> None:
        from sqlalchemy import text

        with self._engine.connect() as conn:
            conn.execute(text(sql))

    def create(self, name: str, *, template: str | None = None) -> str:
        suffix = f" TEMPLATE {_quoted(template)}" if template else ""
        self.execute(f"CREATE DATABASE {_quoted(name)}{suffix}")
        return self.url_of(name)

    def drop(self, name: str) -> None:
        # FORCE: a process a test started may still hold a connection when its test ends.
        self.execute(f"DROP DATABASE IF EXISTS {_quoted(name)} WITH (FORCE)")

    def dispose(self) -> None:
        self._engine.dispose()


class PostgresTemplate:
    """A migrated template database on ``server``, and copies of it.

    ``CREATE DATABASE … TEMPLATE`` still writes the whole catalog (~0.1 s), so the next test's
    copy is made on a worker thread while the current test runs. A used copy is dropped on a
    second one: ``DROP DATABASE … WITH (FORCE)`` waits for the test's server processes to exit
    (up to a second on a busy server), and the next copy must not queue behind that. A failure
    on either thread surfaces at the next copy or at :meth:`drop`."""

    def __init__(self, server: PostgresServer) -> None:
        self.server = server
        self.name = f"amobridge_tpl_{uuid.uuid4().hex[:10]}"
        url = server.create(self.name)
        try:
            upgrade_to_head(url)
            # Nobody may connect to it from now on: a copy needs the template to itself, and a
            # stray connection would make every later copy fail.
            server.execute(f"ALTER DATABASE {_quoted(self.name)} WITH ALLOW_CONNECTIONS false")
        except BaseException:
            server.drop(self.name)
            raise
        self._creator = ThreadPoolExecutor(max_workers=1, thread_name_prefix="postgres-copy")
        self._dropper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="postgres-drop")
        self._next: Future[str] | None = None
        self._drops: list[Future[None]] = []

    def _new_copy(self) -> str:
        name = f"amobridge_t_{uuid.uuid4().hex[:10]}"
        self.server.create(name, template=self.name)
        return name

    def _check_drops(self) -> None:
        done = [f for f in self._drops if f.done()]
        self._drops = [f for f in self._drops if not f.done()]
        for future in done:
            future.result()  # re-raises a failed DROP DATABASE

    @contextlib.contextmanager
    def copy(self) -> Iterator[str]:
        """A new database cloned from the template, dropped when the block ends."""
        self._check_drops()
        pending, self._next = self._next, None
        name = pending.result() if pending is not None else self._new_copy()
        self._next = self._creator.submit(self._new_copy)
        try:
            yield self.server.url_of(name)
        finally:
            self._drops.append(self._dropper.submit(self.server.drop, name))

    def drop(self) -> None:
        """Drop the unused prefetched copy, wait for the pending drops, drop the template."""
        try:
            self._creator.shutdown(wait=True)  # the prefetched copy, if any, is made by now
            pending, self._next = self._next, None
            if pending is not None and pending.exception() is None:
                self._drops.append(self._dropper.submit(self.server.drop, pending.result()))
            self._dropper.shutdown(wait=True)
            for future in self._drops:
                future.result()
        finally:
            self._drops.clear()
            self.server.drop(self.name)


class DatabaseTemplates:
    """The session's templates, each migrated on first use (a run with no PostgreSQL test never
    touches the server); :meth:`close` drops the PostgreSQL one."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._sqlite: Path | None = None
        self._postgres: PostgresTemplate | None = None

    def sqlite_copy(self, target: Path) -> str:
        """The URL of a new migrated SQLite database at ``target``."""
        if self._sqlite is None:
            self._sqlite = migrated_sqlite_template(self.directory / "template.db")
        return copy_sqlite(self._sqlite, target)

    @contextlib.contextmanager
    def postgres_copy(self, admin_url: str) -> Iterator[str]:
        """The URL of a new migrated PostgreSQL database, dropped when the block ends."""
        if self._postgres is None:
            self._postgres = PostgresTemplate(PostgresServer(admin_url))
        elif self._postgres.server.admin_url != admin_url:
            raise ValueError(
                f"templates live on {self._postgres.server.admin_url}, not {admin_url}"
            )
        with self._postgres.copy() as url:
            yield url

    def close(self) -> None:
        if self._postgres is not None:
            try:
                self._postgres.drop()
            finally:
                self._postgres.server.dispose()
                self._postgres = None


DATABASE_KINDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
"""Parameters for a fixture that needs a database of each kind (``fresh_database``'s ``kind``)."""


@contextlib.contextmanager
def fresh_database(request: pytest.FixtureRequest, kind: str, directory: Path) -> Iterator[str]:
    """The URL of a new migrated database of ``kind`` for the requesting test: the one way every
    fixture gets its database (``database_url`` and the store contract's). PostgreSQL goes
    through the ``postgres_url`` gate: skipped locally without a server, a failure under CI."""
    templates: DatabaseTemplates = request.getfixturevalue("database_templates")
    if kind == "sqlite":
        yield templates.sqlite_copy(directory / "amobridge.db")
    elif kind == "postgres":
        with templates.postgres_copy(request.getfixturevalue("postgres_url")) as url:
            yield url
    else:
        raise ValueError(f"no database of kind {kind!r}: sqlite or postgres")
