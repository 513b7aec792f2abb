"""The SQL of the pace lease (``rate_limits`` rows): a handful of statements per keeper tick,
whatever the number of keys.

Every statement is its own short transaction: none stays open while a caller waits or a request
travels. A statement that touches rows other processes may hold locks on (take, want) locks them
with ``SKIP LOCKED`` and retries at the next tick instead of waiting, so two processes never
deadlock on each other's rows; the statements that wait (renew, hand back) touch only rows this
process holds.

Times in the table are unix seconds on the *database's* clock: ``statement_timestamp()`` on
PostgreSQL, so processes on different hosts agree; on SQLite (one host by construction) the local
wall clock is the only clock. A statement that reads the clock comes back with a :class:`Reading`
that maps database times to the caller's monotonic clock conservatively (the statement ran
somewhere between sending and receiving).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import (
    JSON,
    ColumnElement,
    Executable,
    Float,
    Row,
    Table,
    bindparam,
    case,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from amobridge.storage.db import Database
from amobridge.storage.repository import Repository
from amobridge.storage.tables import RateLimitSlot

TABLE = cast(Table, RateLimitSlot.__table__)
C = TABLE.c
DRIFT = 5e-4
"""How fast the database's clock may run apart from ours, seconds per second: 500 ppm, the most
NTP ever slews a clock (a free-running quartz drifts some 10-100 ppm)."""


@dataclass(frozen=True)
class Reading:
    """The database clock read by one statement: ``db`` at some local moment in
    ``[sent, received]`` (local = the limiter's monotonic clock)."""

    db: float
    sent: float
    received: float

    def uncertainty(self, now: float) -> float:
        """How wide the offset between the two clocks may be, by ``now`` (drift included)."""
        return self.received - self.sent + 2 * DRIFT * max(0.0, now - self.received)


class ClockMap:
    """Maps database times to local monotonic times and back, always biased to the safe side,
    through the narrowest clock reading seen (the fastest round trip; an older one loses
    precision with the possible drift, and a fresher one replaces it)."""

    def __init__(self) -> None:
        self._best: Reading | None = None

    @property
    def ready(self) -> bool:
        return self._best is not None

    def observe(self, reading: Reading) -> None:
        best = self._best
        if best is None or reading.uncertainty(reading.received) <= best.uncertainty(
            reading.received
        ):
            self._best = reading

    def _reading(self, now: float) -> tuple[Reading, float]:
        best = self._best
        assert best is not None, "no statement has read the database clock yet"
        return best, DRIFT * max(0.0, now - best.received)

    def local_latest(self, db_time: float, now: float) -> float:
        """The latest local time ``db_time`` can be (for times we must not act before)."""
        best, drift = self._reading(now)
        return db_time - best.db + best.received + drift

    def db_latest(self, local_time: float, now: float) -> float:
        """The latest database time ``local_time`` can be (for times others must respect)."""
        best, drift = self._reading(now)
        return local_time - best.sent + best.db + drift


@dataclass(frozen=True)
class Taken:
    """A lease this process just took: until when (database time) and what the last holder
    handed on. ``expired``: it had never been handed back, so its last slots are unknown and the
    take paused the key for one window."""

    key: str
    lease_until: float
    grants: list[float]
    paused_until: float
    expired: bool
    reading: Reading


@dataclass(frozen=True)
class HandBack:
    key: str
    grants: list[float]  # end times of the latest slots, database clock
    paused_until: float


class RateLimitRepository(Repository[RateLimitSlot]):
    """The SQL of one lease holder's statements. ``now`` is the database's clock as SQL (or, on
    SQLite, the wall clock as a literal): the unit of work that runs a statement reads it."""

    model = RateLimitSlot

    def __init__(
        self, session: AsyncSession, *, holder: str, lease_seconds: float, window: float
    ) -> None:
        super().__init__(session)
        self.holder = holder
        self._lease = lease_seconds
        self._window = window

    def _insert_missing(self, rows: list[dict[str, Any]]) -> Executable:
        insert = pg_insert if self.dialect == "postgresql" else sqlite_insert
        return insert(TABLE).values(rows).on_conflict_do_nothing(index_elements=["key"])

    async def contended(self, now: ColumnElement[float]) -> set[str]:
        query = select(C.key).where(C.lease_holder == self.holder, C.wanted_until > now)
        return set((await self.session.scalars(query)).all())

    async def insert_free(self, keys: Iterable[str]) -> None:
        rows: list[dict[str, Any]] = [
            {
                "key": key,
                "grants": [],
                "paused_until": 0.0,
                "lease_holder": None,
                "lease_until": 0.0,
                "wanted_until": 0.0,
            }
            for key in sorted(set(keys))  # concurrent inserters of the same keys queue in order
        ]
        await self.session.execute(self._insert_missing(rows))

    async def take(self, keys: Sequence[str], now: ColumnElement[float]) -> list[Row[Any]]:
        handed_on = or_(C.lease_holder.is_(None), C.lease_holder == self.holder)
        free = or_(handed_on, C.lease_until <= now)
        lockable = (
            select(C.key).where(C.key.in_(sorted(keys)), free).with_for_update(skip_locked=True)
        )
        statement = (
            update(TABLE)
            .where(C.key.in_(lockable), free)
            .values(
                lease_holder=self.holder,
                lease_until=now + self._lease,
                paused_until=case(
                    (handed_on, C.paused_until),
                    else_=_greatest(C.paused_until, now + self._window),
                ),
            )
            .returning(C.key, C.lease_until, C.grants, C.paused_until)
        )
        return list((await self.session.execute(statement)).all())

    async def want(self, keys: Sequence[str], now: ColumnElement[float]) -> None:
        lockable = (
            select(C.key)
            .where(
                C.key.in_(sorted(keys)),
                C.lease_holder.is_not(None),
                C.lease_holder != self.holder,
                C.wanted_until < now + self._lease / 2,
            )
            .with_for_update(skip_locked=True)
        )
        await self.session.execute(
            update(TABLE).where(C.key.in_(lockable)).values(wanted_until=now + self._lease)
        )

    async def renew(self, keys: Sequence[str], now: ColumnElement[float]) -> list[Row[Any]]:
        statement = (
            update(TABLE)
            .where(C.key.in_(sorted(keys)), C.lease_holder == self.holder)
            .values(lease_until=now + self._lease)
            .returning(C.key, C.lease_until)
        )
        return list((await self.session.execute(statement)).all())

    async def hand_back(self, leases: Sequence[HandBack]) -> None:
        statement = (
            update(TABLE)
            .where(C.key == bindparam("b_key"), C.lease_holder == self.holder)
            .values(
                lease_holder=None,
                lease_until=0.0,
                grants=bindparam("b_grants", type_=JSON),
                paused_until=_greatest(C.paused_until, bindparam("b_paused", type_=Float)),
            )
        )
        params = [
            {"b_key": h.key, "b_grants": h.grants, "b_paused": h.paused_until}
            for h in sorted(leases, key=lambda h: h.key)
        ]
        await self.session.execute(statement, params)

    async def pause(self, key: str, seconds: float, now: ColumnElement[float]) -> None:
        await self.session.execute(
            self._insert_missing(
                [
                    {
                        "key": key,
                        "grants": [],
                        "paused_until": 0.0,
                        "lease_until": 0.0,
                        "wanted_until": 0.0,
                    }
                ]
            )
        )
        await self.session.execute(
            update(TABLE)
            .where(C.key == key)
            .values(paused_until=_greatest(C.paused_until, now + seconds))
        )


class LeaseStore:
    """One lease holder's view of the rate-limit rows: runs each statement as its own unit of
    work and reads the database clock around it."""

    def __init__(
        self,
        db: Database,
        holder: str,
        lease_seconds: float,
        window: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self.holder = holder
        self._lease = lease_seconds
        self._window = window
        self._clock = clock
        self._wall = wall
        self.clock_map = ClockMap()
        self._conn: AsyncConnection | None = None

    @asynccontextmanager
    async def _unit(
        self, *, write: bool = True, keeper: bool = True
    ) -> AsyncIterator[RateLimitRepository]:
        """One statement's unit of work. PostgreSQL: in autocommit, one round trip per statement
        (no BEGIN/COMMIT around it), on the keeper's own connection (no pool checkout, no ping)
        or, for a caller's statement (``keeper=False``), on a pooled one. SQLite: a write takes
        the write lock up front (``BEGIN IMMEDIATE``), a read does not."""
        if self._db.is_sqlite:
            unit = self._db.transaction() if write else self._db.read()
            async with unit as session:
                yield self._repository(session)
            return
        if not keeper:
            async with self._db.engine.connect() as conn:
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                async with AsyncSession(bind=conn) as session:
                    yield self._repository(session)
            return
        if self._conn is None:
            conn = await self._db.engine.connect()
            self._conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        try:
            async with AsyncSession(bind=self._conn) as session:
                yield self._repository(session)
        except BaseException:
            await self.disconnect()  # a broken connection is replaced at the next statement
            raise

    async def disconnect(self) -> None:
        """Give the keeper's connection back to the pool (it idles, or the limiter closes)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    def _repository(self, session: AsyncSession) -> RateLimitRepository:
        return RateLimitRepository(
            session, holder=self.holder, lease_seconds=self._lease, window=self._window
        )

    def _now(self) -> tuple[ColumnElement[float], Reading | None]:
        """The database's "now" for the next statement: SQL on PostgreSQL (the statement sends
        it back); on SQLite the wall clock, read here between two local readings."""
        if self._db.is_sqlite:
            before = self._clock()
            wall = self._wall()
            reading = Reading(wall, before, self._clock())
            self.clock_map.observe(reading)
            return literal(wall, Float), reading
        return sql_cast(func.extract("epoch", func.statement_timestamp()), Float), None

    def _read(self, local: Reading | None, db_now: float, sent: float, received: float) -> Reading:
        """The statement's clock reading: SQLite's from :meth:`_now`, else the database's."""
        reading = local if local is not None else Reading(db_now, sent, received)
        self.clock_map.observe(reading)
        return reading

    async def contended(self) -> set[str]:
        """The keys this process holds that another process waits for."""
        now, _ = self._now()
        async with self._unit(write=False) as rows:
            return await rows.contended(now)

    async def insert(self, keys: Iterable[str]) -> None:
        """Rows, free, for keys nobody has paced yet (existing rows stay as they are)."""
        async with self._unit() as rows:
            await rows.insert_free(keys)

    async def take(self, keys: Sequence[str]) -> list[Taken]:
        """Take every lease of ``keys`` that is free now: handed back, expired, or ours. Taking
        another holder's *expired* lease pauses the key for one window: its last slots were
        never handed on, so all of them count as ending now. Want marks stay (another waiter's
        mark must survive this take; ours lapses on its own)."""
        now, local = self._now()
        sent = self._clock()
        async with self._unit() as repository:
            rows = await repository.take(keys, now)
        received = self._clock()
        if not rows:
            return []
        reading = self._read(local, float(rows[0].lease_until) - self._lease, sent, received)
        return [
            Taken(
                key=row.key,
                lease_until=float(row.lease_until),
                grants=[float(g) for g in row.grants or []],
                paused_until=float(row.paused_until or 0.0),
                expired=float(row.paused_until or 0.0) >= reading.db + self._window - 1e-6,
                reading=reading,
            )
            for row in rows
        ]

    async def want(self, keys: Sequence[str]) -> None:
        """Tell the holders of ``keys`` that this process waits for them (they hand the key on
        after their turn); refreshed only when the mark is about to lapse."""
        now, _ = self._now()
        async with self._unit() as rows:
            await rows.want(keys, now)

    async def renew(self, keys: Sequence[str]) -> tuple[dict[str, float], Reading | None]:
        """Extend our leases of ``keys`` by one term; the ones we no longer hold are missing
        from the answer (taken over after they expired)."""
        now, local = self._now()
        sent = self._clock()
        async with self._unit() as repository:
            rows = await repository.renew(keys, now)
        received = self._clock()
        if not rows:
            return {}, None
        until = {row.key: float(row.lease_until) for row in rows}
        return until, self._read(local, float(rows[0].lease_until) - self._lease, sent, received)

    async def hand_back(self, leases: Sequence[HandBack]) -> None:
        """Give our leases up, leaving the end times of each key's latest slots (and any pause)
        for the next holder. A lease that is not ours any more is left alone."""
        async with self._unit() as rows:
            await rows.hand_back(leases)

    async def pause(self, key: str, seconds: float) -> None:
        """Every holder of ``key`` admits nothing for ``seconds`` from now (database time)."""
        now, _ = self._now()
        async with self._unit(keeper=False) as rows:
            await rows.pause(key, seconds, now)


def _greatest(column: Any, value: Any) -> ColumnElement[float]:
    # GREATEST on PostgreSQL, a two-argument max() on SQLite: CASE says it once for both.
    return case((column < value, value), else_=column)
