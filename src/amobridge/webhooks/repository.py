"""All SQL of the webhook inbox: the connections' URL secrets, the deliveries and what amobridge
knows of each subscription. Repositories never commit (the unit of work does).

Owner isolation (invariant 6): the reads an owner can trigger (``page``, ``find``) take the owner;
``None`` is an admin's every-owner view. The rest is for the receiver, the processor and the
subscription jobs, which act for the connection a secret or a job names.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, delete, func, insert, or_, select, update

from amobridge.storage.repository import Repository, UnitRepository
from amobridge.storage.tables import Connection, WebhookDelivery, WebhookSubscription


@dataclass(frozen=True)
class Target:
    """What the receiver needs of the connection a URL secret names."""

    connection_id: str
    owner: str
    account_id: int | None
    host: str
    status: str
    secret_hash: str


class WebhookConnectionRepository(Repository[Connection]):
    model = Connection

    async def by_secret_hash(self, digest: str) -> Target | None:
        row = (
            await self.session.execute(
                select(
                    Connection.id,
                    Connection.owner,
                    Connection.account_id,
                    Connection.host,
                    Connection.status,
                    Connection.webhook_secret_hash,
                ).where(Connection.webhook_secret_hash == digest)
            )
        ).first()
        if row is None:
            return None
        return Target(str(row[0]), str(row[1]), row[2], str(row[3]), str(row[4]), str(row[5]))

    async def owned_by(self, owner: str) -> Connection | None:
        return await self.session.scalar(select(Connection).where(Connection.owner == owner))

    async def set_secret(self, connection_id: str, *, digest: str, encrypted: str) -> None:
        await self.session.execute(
            update(Connection)
            .where(Connection.id == connection_id)
            .values(webhook_secret_hash=digest, webhook_secret_enc=encrypted)
            .execution_options(synchronize_session=False)
        )

    async def without_subscription(self, *, limit: int = 200) -> list[Connection]:
        """Active connections amobridge never subscribed (connected before webhooks existed,
        or while auto-subscription was off)."""
        rows = await self.session.scalars(
            select(Connection)
            .outerjoin(WebhookSubscription, WebhookSubscription.connection_id == Connection.id)
            .where(Connection.status == "active", WebhookSubscription.connection_id.is_(None))
            .order_by(Connection.id)
            .limit(limit)
        )
        return list(rows)


_INSERTED = (
    "connection_id",
    "owner",
    "received_at",
    "body",
    "content_type",
    "headers",
    "body_hash",
    "state",
    "duplicate_of",
    "attempts",
)
_SQLITE_INSERTS: dict[int, tuple[str, list[tuple[str, Any]]]] = {}


class DeliveryUnitRepository(UnitRepository):
    """The receiver's SQL, on the synchronous connection of its unit (one call on the
    database's unit thread: :meth:`Database.run_unit <amobridge.storage.db.Database.run_unit>`).
    Its statements are built once, every value a bound parameter: building them per batch was
    most of the unit's time (the database's own work a sixth of it)."""

    _TABLE = cast(Table, WebhookDelivery.__table__)
    # The table, not the mapped class: a Core insert skips the ORM's bulk machinery.
    _INSERT = insert(_TABLE).returning(_TABLE.c.id, sort_by_parameter_order=True)
    _ORIGINALS = (
        select(WebhookDelivery.body_hash, func.min(WebhookDelivery.id))
        .where(
            WebhookDelivery.connection_id == bindparam("connection_id"),
            WebhookDelivery.body_hash.in_(bindparam("digests", expanding=True)),
            WebhookDelivery.duplicate_of.is_(None),
            WebhookDelivery.received_at >= bindparam("since", type_=_TABLE.c.received_at.type),
        )
        .group_by(WebhookDelivery.body_hash)
    )

    def originals(
        self, keys: Iterable[tuple[str, str]], *, since: datetime
    ) -> dict[tuple[str, str], int]:
        """The first delivery (not a duplicate) received since ``since`` of each
        ``(connection_id, body_hash)``; one indexed look-up per connection."""
        by_connection: dict[str, set[str]] = {}
        for connection_id, digest in keys:
            by_connection.setdefault(connection_id, set()).add(digest)
        found: dict[tuple[str, str], int] = {}
        for connection_id, digests in by_connection.items():
            rows = self.connection.execute(
                self._ORIGINALS,
                {"connection_id": connection_id, "digests": sorted(digests), "since": since},
            )
            for digest, id_ in rows:
                found[(connection_id, str(digest))] = int(id_)
        return found

    def insert_many(self, rows: Sequence[dict[str, Any]]) -> list[int]:
        """Insert ``rows``; their ids, in the order given."""
        if not rows:
            return []
        if self.dialect == "sqlite":
            return self._insert_sqlite(rows)
        result = self.connection.execute(self._INSERT, list(rows))
        return [int(id_) for id_ in result.scalars()]

    @staticmethod
    def _sqlite_statement(dialect: Any) -> tuple[str, list[tuple[str, Any]]]:
        """The receiver's INSERT as SQL for the driver, and each column's bind processor."""
        found = _SQLITE_INSERTS.get(id(dialect))
        if found is None:
            table = cast(Table, WebhookDelivery.__table__)
            compiled = insert(table).compile(dialect=dialect, column_keys=list(_INSERTED))
            sql = str(compiled)
            order = list(compiled.positiontup or [])
            assert order == list(_INSERTED), order  # the driver takes the values in this order
            processors = [(name, table.c[name].type.bind_processor(dialect)) for name in _INSERTED]
            found = _SQLITE_INSERTS[id(dialect)] = (sql, processors)
        return found

    def _insert_sqlite(self, rows: Sequence[dict[str, Any]]) -> list[int]:
        """On SQLite, straight to the driver: ``executemany`` of one prepared INSERT, each value
        converted by its column's own bind processor (what SQLAlchemy would store), the ids
        read from ``last_insert_rowid()``. Consecutive: the unit holds the write lock, and a
        new row's id is the table's highest plus one. SQLAlchemy's per-statement machinery was
        the larger part of the receiver's unit."""
        sql, processors = self._sqlite_statement(self.connection.dialect)
        values = [
            tuple(
                row[name] if convert is None else convert(row[name]) for name, convert in processors
            )
            for row in rows
        ]
        cursor = self.connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.executemany(sql, values)
            last = int(cursor.execute("SELECT last_insert_rowid()").fetchone()[0])
        finally:
            cursor.close()
        return list(range(last - len(rows) + 1, last + 1))


class DeliveryRepository(Repository[WebhookDelivery]):
    model = WebhookDelivery

    async def find(self, delivery_id: int, *, owner: str | None) -> WebhookDelivery | None:
        query = select(WebhookDelivery).where(WebhookDelivery.id == delivery_id)
        if owner is not None:
            query = query.where(WebhookDelivery.owner == owner)
        return await self.session.scalar(query)

    async def page(
        self,
        *,
        owner: str | None,
        state: str | None,
        connection_id: str | None = None,
        before_id: int | None,
        limit: int,
    ) -> list[WebhookDelivery]:
        """Newest first, ``limit + 1`` rows (the extra one says there is more)."""
        query = select(WebhookDelivery)
        if owner is not None:
            query = query.where(WebhookDelivery.owner == owner)
        if state is not None:
            query = query.where(WebhookDelivery.state == state)
        if connection_id is not None:
            query = query.where(WebhookDelivery.connection_id == connection_id)
        if before_id is not None:
            query = query.where(WebhookDelivery.id < before_id)
        query = query.order_by(WebhookDelivery.id.desc()).limit(limit + 1)
        return list(await self.session.scalars(query))

    async def to_process(self, ids: Iterable[int]) -> list[WebhookDelivery]:
        """The ``received`` deliveries among ``ids``, oldest first, locked on PostgreSQL (a
        second worker with the same job after a lease ran out waits, then finds them done)."""
        wanted = sorted(set(ids))
        if not wanted:
            return []
        query = (
            select(WebhookDelivery)
            .where(WebhookDelivery.id.in_(wanted), WebhookDelivery.state == "received")
            .order_by(WebhookDelivery.id)
        )
        if self.dialect == "postgresql":
            query = query.with_for_update()
        return list(await self.session.scalars(query))

    async def received_before(self, before: datetime, *, limit: int) -> list[tuple[int, str, str]]:
        """``(id, connection_id, owner)`` of deliveries still ``received`` at ``before``: those
        whose processing job is gone (the safety net of the housekeeping loop)."""
        rows = await self.session.execute(
            select(WebhookDelivery.id, WebhookDelivery.connection_id, WebhookDelivery.owner)
            .where(WebhookDelivery.state == "received", WebhookDelivery.received_at < before)
            .order_by(WebhookDelivery.id)
            .limit(limit)
        )
        return [(int(a), str(b), str(c)) for a, b, c in rows]

    async def purge(self, *, done_before: datetime, failed_before: datetime) -> int:
        result = await self.session.execute(
            delete(WebhookDelivery).where(
                or_(
                    and_(
                        WebhookDelivery.state.in_(("processed", "duplicate")),
                        WebhookDelivery.received_at < done_before,
                    ),
                    and_(
                        WebhookDelivery.state == "failed",
                        WebhookDelivery.received_at < failed_before,
                    ),
                )
            )
        )
        return int(getattr(result, "rowcount", 0) or 0)


class SubscriptionRepository(Repository[WebhookSubscription]):
    model = WebhookSubscription

    async def of(
        self, connection_id: str, *, for_update: bool = False
    ) -> WebhookSubscription | None:
        return await self.get(connection_id, for_update=for_update)

    async def ensure(self, connection_id: str, owner: str) -> WebhookSubscription:
        found = await self.get(connection_id)
        if found is None:
            found = self.add(
                WebhookSubscription(connection_id=connection_id, owner=owner, state="pending")
            )
            await self.flush()
        return found

    async def due_for_check(
        self, *, checked_before: datetime, limit: int = 200
    ) -> list[tuple[str, str]]:
        """``(connection_id, owner)`` of subscriptions last checked before ``checked_before``
        (or never), of active connections only."""
        rows = await self.session.execute(
            select(WebhookSubscription.connection_id, WebhookSubscription.owner)
            .join(Connection, Connection.id == WebhookSubscription.connection_id)
            .where(
                Connection.status == "active",
                WebhookSubscription.state.in_(("active", "pending")),
                or_(
                    WebhookSubscription.checked_at.is_(None),
                    WebhookSubscription.checked_at < checked_before,
                ),
            )
            .order_by(WebhookSubscription.checked_at.is_not(None), WebhookSubscription.checked_at)
            .limit(limit)
        )
        return [(str(connection_id), str(owner)) for connection_id, owner in rows]

    async def for_owner(self, owner: str) -> WebhookSubscription | None:
        return await self.session.scalar(
            select(WebhookSubscription).where(WebhookSubscription.owner == owner)
        )
