"""The base of every repository: all SQL of amobridge lives in subclasses of :class:`Repository`.

A repository is built around the caller's session and never commits: the unit of work that owns
the session (a request dependency, a task wrapper, the CLI) commits or rolls back. Features build
them per unit of work: ``ConnectionRepository(session, keyring)``.

The helpers here are the few things every table needs that differ between SQLite and PostgreSQL:
the insert that ignores a conflicting row, and "now" from the database's own clock (PostgreSQL)
rather than each host's, so leases and schedules agree across machines.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, TypeVar

from sqlalchemy import Connection, Insert, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from amobridge.storage.tables import Base

Model = TypeVar("Model", bound=Base)


def dialect_insert(dialect: str, model: type[Base]) -> Insert:
    """``INSERT`` into ``model`` in ``dialect``'s own form, which knows ``ON CONFLICT``."""
    if dialect == "postgresql":
        return pg_insert(model)
    return sqlite_insert(model)


class Repository(Generic[Model]):
    """SQL for one table (``model``) within one session."""

    model: ClassVar[type[Base]]

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    @property
    def dialect(self) -> str:
        bind = self.session.get_bind()
        return bind.dialect.name

    async def get(self, id_: Any, *, for_update: bool = False) -> Model | None:
        found = await self.session.get(self.model, id_, with_for_update=for_update)
        return found  # type: ignore[return-value]

    def add(self, row: Model) -> Model:
        self.session.add(row)
        return row

    async def flush(self) -> None:
        await self.session.flush()

    def insert(self) -> Insert:
        """``INSERT`` in the dialect that knows ``ON CONFLICT`` (``on_conflict_do_nothing``)."""
        return dialect_insert(self.dialect, self.model)

    async def db_now(self) -> datetime:
        """The database's clock on PostgreSQL (one clock for every host), else this host's."""
        if self.dialect == "postgresql":
            # clock_timestamp(), not now(): now() is the start of the transaction.
            value = await self.session.scalar(select(func.clock_timestamp()))
            if isinstance(value, datetime):
                return value.astimezone(UTC)
        return datetime.now(UTC)


class UnitRepository:
    """SQL on the synchronous connection of a unit run in one call (:meth:`Database.run_unit
    <amobridge.storage.db.Database.run_unit>`, the hot paths): never commits either."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.dialect = connection.dialect.name


class SyncRepository(Generic[Model]):
    """SQL for one table through a synchronous ORM session over the connection of a unit run
    in one call (:meth:`Database.run_unit <amobridge.storage.db.Database.run_unit>`): the hot
    paths that write many callers' rows at once. Never commits either."""

    model: ClassVar[type[Base]]

    def __init__(self, session: Session) -> None:
        self.session = session
        self.dialect = session.get_bind().dialect.name

    def insert(self) -> Insert:
        return dialect_insert(self.dialect, self.model)
