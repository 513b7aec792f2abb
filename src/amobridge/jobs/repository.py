"""All SQL of the job queue.

The claim (:meth:`JobRepository.claim`) runs in one short write unit:

- PostgreSQL: the candidate row is selected ``FOR UPDATE SKIP LOCKED``, so workers never wait on
  each other and never claim the same job; a transaction-scoped advisory lock on the
  connection (tried, never waited for) makes the per-connection concurrency hold across
  workers, re-checked once the lock is held.
- SQLite: the unit starts with ``BEGIN IMMEDIATE``, so one writer claims at a time.

A candidate is a due pending job (or a running one whose lease ran out: its worker died) of a
kind this worker handles, whose connection is active, not banned and below its concurrency, and
which no job of its ordering key is ahead of (running, or pending/paused with a smaller id).
Candidates are taken in ``turn`` order (see :meth:`JobRepository.next_turn`), then id.

Every update of a claimed job's outcome is conditional on the lease: same worker, still
running, same attempt — a job taken over meanwhile is not overwritten.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    and_,
    bindparam,
    event,
    exists,
    func,
    or_,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.orm import aliased

from amobridge.storage.repository import Repository, UnitRepository, dialect_insert
from amobridge.storage.tables import JOB_ACTIVE_STATES, Connection, Job

NOTIFY_CHANNEL = "amobridge_jobs"
PENDING, RUNNING, SUCCEEDED, FAILED, PAUSED, CANCELLED = (
    "pending",
    "running",
    "succeeded",
    "failed",
    "paused",
    "cancelled",
)
ABANDONED = (
    "the worker running it stopped before it finished (its lease ran out) on every attempt: "
    "check the worker's log, then retry the job"
)
# Connection statuses whose jobs wait, and the pause reason each gives them.
CONNECTION_HOLDS = ("reauth_required", "disconnected")
BANNED = "banned"
CLAIM_TRIES = 8  # candidates a claim may pass over (connections another worker is claiming)
_NOTIFIED = "amobridge.jobs.notified"
_COMMITTED = "amobridge.jobs.on_commit"


# What enqueue writes (every column but the id and the turn, which the INSERT computes).
_COLUMNS = (
    "kind",
    "owner",
    "connection_id",
    "payload",
    "state",
    "attempts",
    "max_attempts",
    "run_after",
    "ordering_key",
    "dedup_key",
    "idempotency_key",
    "created_at",
    "updated_at",
)
_STATEMENTS: dict[tuple[Any, ...], Any] = {}
_TIME = Job.__table__.c.run_after.type


@dataclass(frozen=True)
class Candidate:
    id: int
    kind: str
    connection_id: str | None
    taken_over: bool  # a running job whose lease ran out


@dataclass(frozen=True)
class Claimed:
    jobs: list[Job]
    took_over: bool  # the claim found a dead worker's job: there may be more


def _lane(column: Any, connection_id: str | None) -> ColumnElement[bool]:
    found: ColumnElement[bool] = (
        column.is_(None) if connection_id is None else column == connection_id
    )
    return found


def _advisory_key(connection_id: str) -> int:
    """A signed 64-bit key for ``pg_try_advisory_xact_lock`` (a collision only makes one claim
    pass over a connection once)."""
    digest = hashlib.blake2b(f"amobridge.jobs:{connection_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class JobUnitRepository(UnitRepository):
    """Enqueueing on the synchronous connection of a unit run in one call
    (:meth:`Database.run_unit <amobridge.storage.db.Database.run_unit>`): the same statements
    as :meth:`JobRepository.insert_job` and :meth:`JobRepository.notify`."""

    def insert_job(self, values: dict[str, Any], *, now: datetime) -> bool:
        """Whether it was inserted (False: an unfinished job holds its ``dedup_key``)."""
        made, params = JobRepository.insert_call(self.dialect, values, now)
        return self.connection.execute(made, params).first() is not None

    def notify(self, kind: str) -> None:
        """``NOTIFY`` on PostgreSQL, delivered when the unit commits."""
        if self.dialect == "postgresql":
            self.connection.execute(select(func.pg_notify(NOTIFY_CHANNEL, kind)))

    def db_now(self) -> datetime:
        if self.dialect == "postgresql":
            value = self.connection.scalar(select(func.clock_timestamp()))
            if isinstance(value, datetime):
                return value.astimezone(UTC)
        return datetime.now(UTC)


class JobRepository(Repository[Job]):
    model = Job
    # The partial unique index's condition (the dedup key's ON CONFLICT target).
    ACTIVE = text("state IN ('pending', 'running', 'paused')")

    # --- enqueue ---------------------------------------------------------------------------------

    @staticmethod
    def next_turn(*, lane: Any) -> Any:
        """The new job's place in the rotation, as an SQL expression the INSERT computes: the
        queue's current turn (the highest turn running, else the lowest due pending one), or
        after the connection's own unfinished jobs (``lane``: the condition naming them). A
        connection with a backlog thus queues behind itself, while one with nothing queued goes
        next — however long the other's backlog."""
        turns = aliased(Job)
        now = bindparam("now", type_=Job.__table__.c.run_after.type)
        running = select(func.max(turns.turn)).where(turns.state == RUNNING).scalar_subquery()
        due = (
            select(func.min(turns.turn))
            .where(turns.state == PENDING, turns.run_after <= now)
            .scalar_subquery()
        )
        current = func.coalesce(running, due, 0)
        # max(current - 1, the connection's highest unfinished turn) + 1, each part written
        # once (an expression repeating them grew with every CASE), one index probe per state
        # (a max over an IN list of states would read every unfinished job of the connection);
        # max() skips the NULL of a state without jobs.
        parts = [select((current - 1).label("turn"))] + [
            select(func.max(turns.turn).label("turn")).where(
                lane(turns.connection_id), turns.state == state
            )
            for state in JOB_ACTIVE_STATES
        ]
        candidates = union_all(*parts).subquery("turns")
        return select(func.max(candidates.c.turn) + 1).scalar_subquery()

    @staticmethod
    def statement(dialect: str, key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
        """A statement built once per dialect and shape (building SQLAlchemy statements costs
        more than running them); every value in it is a bound parameter."""
        full = (dialect, *key)
        found = _STATEMENTS.get(full)
        if found is None:
            found = _STATEMENTS[full] = build()
        return found

    @classmethod
    def insert_statement(cls, dialect: str, *, lane: bool, dedup: bool) -> Any:
        """The INSERT of one job, built once per shape: every value a bound parameter, the
        turn computed in it."""

        def build() -> Any:
            columns = {name: bindparam(name, type_=Job.__table__.c[name].type) for name in _COLUMNS}

            def in_lane(column: Any) -> Any:
                if lane:
                    return column == bindparam("lane", type_=Job.__table__.c.connection_id.type)
                return column.is_(None)

            made: Any = dialect_insert(dialect, Job).values(
                **columns, turn=cls.next_turn(lane=in_lane)
            )
            if dedup:
                made = made.on_conflict_do_nothing(
                    index_elements=["dedup_key"], index_where=cls.ACTIVE
                )
            return made.returning(Job)

        return cls.statement(dialect, ("insert", lane, dedup), build)

    @classmethod
    def insert_call(
        cls, dialect: str, values: dict[str, Any], now: datetime
    ) -> tuple[Any, dict[str, Any]]:
        """The job INSERT and its parameters for ``values``."""
        connection_id = values.get("connection_id")
        made = cls.insert_statement(
            dialect, lane=connection_id is not None, dedup=values.get("dedup_key") is not None
        )
        params = {name: values.get(name) for name in _COLUMNS} | {"now": now}
        if connection_id is not None:
            params["lane"] = connection_id
        return made, params

    @staticmethod
    def held_by(dedup_key: str) -> Any:
        """The unfinished job holding ``dedup_key``."""
        return (
            select(Job).where(Job.dedup_key == dedup_key, Job.state.in_(JOB_ACTIVE_STATES)).limit(1)
        )

    async def insert_job(self, values: dict[str, Any], *, now: datetime) -> tuple[Job, bool]:
        """Insert a job in one statement; with a ``dedup_key`` already held by an unfinished
        job, nothing is inserted and that job is returned. ``(job, inserted)``."""
        made, params = self.insert_call(self.dialect, values, now)
        inserted: Job | None = (await self.session.scalars(made, params)).first()
        if inserted is not None:
            return inserted, True
        existing: Job | None = await self.session.scalar(self.held_by(values["dedup_key"]))
        if existing is None:  # finished between the conflict and this read: insert again
            return await self.insert_job(values, now=now)
        return existing, False

    async def notify(self, kind: str) -> None:
        """Wake PostgreSQL workers when this unit commits (NOTIFY inside a transaction is
        delivered at commit, and not at all on rollback); once per unit."""
        if self.dialect != "postgresql" or self.session.info.get(_NOTIFIED):
            return
        self.session.info[_NOTIFIED] = True
        await self.session.execute(select(func.pg_notify(NOTIFY_CHANNEL, kind)))

    def on_commit(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` once this unit has committed (never on rollback); once per unit.
        (A unit's session ends with its unit, and its listeners with it.)"""
        if self.session.info.get(_COMMITTED):
            return
        self.session.info[_COMMITTED] = True
        info = self.session.info

        def committed(_session: Any) -> None:
            info.pop(_COMMITTED, None)
            info.pop(_NOTIFIED, None)
            callback()

        event.listen(self.session.sync_session, "after_commit", committed, once=True)

    # --- reading ---------------------------------------------------------------------------------

    async def find(self, job_id: int, *, owner: str | None = None) -> Job | None:
        statement = select(Job).where(Job.id == job_id)
        if owner is not None:
            statement = statement.where(Job.owner == owner)
        found: Job | None = await self.session.scalar(statement)
        return found

    async def page(
        self,
        *,
        owner: str | None,
        state: str | None,
        kind: str | None,
        before_id: int | None,
        limit: int,
    ) -> list[Job]:
        """Newest first; ``limit + 1`` rows tell whether there is a next page."""
        statement = select(Job)
        if owner is not None:
            statement = statement.where(Job.owner == owner)
        if state is not None:
            statement = statement.where(Job.state == state)
        if kind is not None:
            statement = statement.where(Job.kind == kind)
        if before_id is not None:
            statement = statement.where(Job.id < before_id)
        rows = await self.session.scalars(statement.order_by(Job.id.desc()).limit(limit + 1))
        return list(rows)

    async def counts(self, *, owner: str | None = None) -> dict[str, int]:
        statement = select(Job.state, func.count()).group_by(Job.state)
        if owner is not None:
            statement = statement.where(Job.owner == owner)
        return {state: int(count) for state, count in (await self.session.execute(statement))}

    async def active_with_dedup_key(self, dedup_key: str, *, other_than: int) -> int | None:
        found: int | None = await self.session.scalar(
            select(Job.id)
            .where(
                Job.dedup_key == dedup_key,
                Job.state.in_(JOB_ACTIVE_STATES),
                Job.id != other_than,
            )
            .limit(1)
        )
        return found

    async def connection_row(self, connection_id: str) -> Connection | None:
        found: Connection | None = await self.session.get(Connection, connection_id)
        return found

    async def next_due(self, kinds: Sequence[str], *, now: datetime) -> datetime | None:
        """When the next pending job of ``kinds`` that is not due yet becomes due."""
        found: datetime | None = await self.session.scalar(
            select(func.min(Job.run_after)).where(
                Job.state == PENDING, Job.run_after > now, Job.kind.in_(kinds)
            )
        )
        return found

    # --- operator actions ------------------------------------------------------------------------

    async def set_pending(self, job_id: int, *, now: datetime) -> None:
        """Back to pending now, attempts reset (a failed, cancelled or paused job retried)."""
        await self.session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                state=PENDING,
                attempts=0,
                run_after=now,
                paused_reason=None,
                paused_until=None,
                locked_by=None,
                locked_until=None,
                finished_at=None,
                updated_at=now,
            )
        )

    async def set_cancelled(self, job_id: int, *, now: datetime) -> None:
        await self.session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                state=CANCELLED,
                locked_by=None,
                locked_until=None,
                finished_at=now,
                updated_at=now,
            )
        )

    async def refresh(self, job: Job) -> None:
        await self.session.refresh(job)

    # --- the claim -------------------------------------------------------------------------------

    def _statement(self, key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
        return self.statement(self.dialect, key, build)

    def _build_candidate(self, *, takeover: bool, excluding: bool) -> Any:
        now = bindparam("now", type_=_TIME)
        # The connections whose jobs wait: each set is computed once per claim and looked up
        # per candidate (a hashed NOT IN), so a claim passing over a busy connection's backlog
        # of thousands does not count that connection's running jobs once per job. Never a
        # NULL in them: NOT IN a set holding NULL is never true.
        running = aliased(Job)
        busy = (
            select(running.connection_id)
            .where(
                running.connection_id.is_not(None),
                running.state == RUNNING,
                running.locked_until > now,
            )
            .group_by(running.connection_id)
            .having(func.count() >= bindparam("concurrency"))
        )
        paused = aliased(Job)
        banned = select(paused.connection_id).where(
            paused.connection_id.is_not(None),
            paused.state == PAUSED,
            paused.paused_reason == BANNED,
            paused.paused_until > now,
        )
        inactive = select(Connection.id).where(Connection.status != "active")
        # A running job whose lease ran out (its worker died), or a due pending one.
        due = (
            and_(Job.state == RUNNING, Job.locked_until <= now, Job.attempts < Job.max_attempts)
            if takeover
            else and_(Job.state == PENDING, Job.run_after <= now)
        )
        conditions = [
            due,
            Job.kind.in_(bindparam("kinds", expanding=True)),
            or_(
                Job.connection_id.is_(None),
                and_(
                    Job.connection_id.not_in(busy),
                    Job.connection_id.not_in(banned),
                    Job.connection_id.not_in(inactive),
                ),
            ),
            or_(Job.ordering_key.is_(None), ~self._is_behind()),
        ]
        if excluding:
            conditions.append(
                or_(
                    Job.connection_id.is_(None),
                    Job.connection_id.not_in(bindparam("excluded", expanding=True)),
                )
            )
        statement = (
            select(Job.id, Job.kind, Job.connection_id)
            .where(*conditions)
            .order_by(Job.turn, Job.id)
            .limit(1)
        )
        if self.dialect == "postgresql":
            statement = statement.with_for_update(skip_locked=True, of=Job)
        return statement

    @staticmethod
    def _is_behind() -> Any:
        """A job of the same ordering key is ahead: running, or waiting with a smaller id."""
        ahead = aliased(Job)
        return exists().where(
            ahead.ordering_key == Job.ordering_key,
            ahead.id != Job.id,
            or_(
                ahead.state == RUNNING,
                and_(ahead.state.in_((PENDING, PAUSED)), ahead.id < Job.id),
            ),
        )

    async def _candidate(
        self,
        *,
        kinds: Sequence[str],
        now: datetime,
        connection_concurrency: int,
        excluded: set[str],
        takeover: bool,
    ) -> Candidate | None:
        params: dict[str, Any] = {
            "now": now,
            "kinds": list(kinds),
            "concurrency": connection_concurrency,
        }
        if excluded:
            params["excluded"] = sorted(excluded)
        phases = (True, False) if takeover else (False,)
        for phase in phases:
            build = functools.partial(
                self._build_candidate, takeover=phase, excluding=bool(excluded)
            )
            statement = self._statement(("candidate", phase, bool(excluded)), build)
            row = (await self.session.execute(statement, params)).first()
            if row is not None:
                return Candidate(int(row[0]), str(row[1]), row[2], taken_over=phase)
        return None

    async def _busy(self, connection_id: str, *, now: datetime) -> int:
        statement = self._statement(
            ("busy",),
            lambda: select(func.count()).where(
                Job.connection_id == bindparam("connection_id"),
                Job.state == RUNNING,
                Job.locked_until > bindparam("now", type_=_TIME),
            ),
        )
        count = await self.session.scalar(statement, {"connection_id": connection_id, "now": now})
        return int(count or 0)

    async def _lock_connection(self, connection_id: str) -> bool:
        """PostgreSQL: hold the connection's claim lock until this unit ends, if free."""
        statement = self._statement(
            ("lock",), lambda: select(func.pg_try_advisory_xact_lock(bindparam("key")))
        )
        got = await self.session.scalar(statement, {"key": _advisory_key(connection_id)})
        return bool(got)

    def _build_batch_mates(self, *, lane: bool) -> Any:
        column = Job.connection_id
        now = bindparam("now", type_=_TIME)
        statement = (
            select(Job.id)
            .where(
                # Due pending ones, and running ones whose lease ran out (a dead worker's batch
                # is taken over in one claim).
                or_(
                    and_(Job.state == PENDING, Job.run_after <= now),
                    and_(
                        Job.state == RUNNING,
                        Job.locked_until <= now,
                        Job.attempts < Job.max_attempts,
                    ),
                ),
                Job.kind == bindparam("kind"),
                column == bindparam("lane") if lane else column.is_(None),
                Job.id != bindparam("first"),
                or_(Job.ordering_key.is_(None), ~self._is_behind()),
            )
            .order_by(Job.turn, Job.id)
            .limit(bindparam("extra"))
        )
        if self.dialect == "postgresql":
            statement = statement.with_for_update(skip_locked=True, of=Job)
        return statement

    async def _batch_mates(self, first: Candidate, *, now: datetime, extra: int) -> list[int]:
        lane = first.connection_id is not None
        statement = self._statement(("mates", lane), lambda: self._build_batch_mates(lane=lane))
        params: dict[str, Any] = {"now": now, "kind": first.kind, "first": first.id, "extra": extra}
        if lane:
            params["lane"] = first.connection_id
        return [int(found) for found in await self.session.scalars(statement, params)]

    async def claim(
        self,
        *,
        kinds: Sequence[str],
        batch_sizes: dict[str, int],
        worker_id: str,
        now: datetime,
        lease_until: datetime,
        connection_concurrency: int,
        takeover: bool = True,
    ) -> Claimed:
        """Claim one due job and, for a batch kind, more of its kind and connection: they are
        ``running``, leased to ``worker_id`` until ``lease_until``, their attempt counted.
        ``takeover``: look at running jobs whose lease ran out first."""
        if not kinds:
            return Claimed([], took_over=False)
        excluded: set[str] = set()
        for _ in range(CLAIM_TRIES):
            first = await self._candidate(
                kinds=kinds,
                now=now,
                connection_concurrency=connection_concurrency,
                excluded=excluded,
                takeover=takeover,
            )
            if first is None:
                return Claimed([], took_over=False)
            # PostgreSQL: another worker claiming for this connection right now would not show
            # in the busy count yet: take the connection's lock, then count again.
            if (
                first.connection_id is not None
                and self.dialect == "postgresql"
                and (
                    not await self._lock_connection(first.connection_id)
                    or await self._busy(first.connection_id, now=now) >= connection_concurrency
                )
            ):
                excluded.add(first.connection_id)
                continue
            ids = [first.id]
            size = batch_sizes.get(first.kind, 1)
            if size > 1:
                ids += await self._batch_mates(first, now=now, extra=size - 1)
            statement = self._statement(
                ("mark_running",),
                lambda: (
                    update(Job)
                    .where(Job.id.in_(bindparam("ids", expanding=True)))
                    .values(
                        state=RUNNING,
                        attempts=Job.attempts + 1,
                        locked_by=bindparam("worker"),
                        locked_until=bindparam("until", type_=_TIME),
                        started_at=bindparam("now", type_=_TIME),
                        updated_at=bindparam("now", type_=_TIME),
                    )
                    .returning(Job)
                    .execution_options(synchronize_session=False)
                ),
            )
            claimed = await self.session.scalars(
                statement, {"ids": ids, "worker": worker_id, "until": lease_until, "now": now}
            )
            return Claimed(sorted(claimed, key=lambda job: job.id), took_over=first.taken_over)
        return Claimed([], took_over=False)

    # --- while a handler runs --------------------------------------------------------------------

    async def renew(self, ids: Sequence[int], *, worker_id: str, until: datetime) -> list[int]:
        """Extend the leases this worker still holds; the ids renewed."""
        if not ids:
            return []
        renewed = await self.session.scalars(
            update(Job)
            .where(Job.id.in_(ids), Job.state == RUNNING, Job.locked_by == worker_id)
            .values(locked_until=until)
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        )
        return [int(found) for found in renewed]

    async def release(self, ids: Sequence[int], *, worker_id: str, now: datetime) -> int:
        """Hand jobs back (a stopping worker): pending again, the attempt not counted."""
        if not ids:
            return 0
        released = await self.session.scalars(
            update(Job)
            .where(Job.id.in_(ids), Job.state == RUNNING, Job.locked_by == worker_id)
            .values(
                state=PENDING,
                attempts=Job.attempts - 1,
                locked_by=None,
                locked_until=None,
                run_after=now,
                updated_at=now,
            )
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        )
        return len(list(released))

    # --- outcomes --------------------------------------------------------------------------------

    async def finish(
        self,
        job_id: int,
        *,
        attempt: int,
        worker_id: str,
        values: dict[str, Any],
    ) -> bool:
        """Write a claimed job's outcome if this worker still holds it (same attempt)."""
        names = tuple(sorted(values))

        def build() -> Any:
            table = Job.__table__.c
            return (
                update(Job)
                .where(
                    Job.id == bindparam("job_id"),
                    Job.state == RUNNING,
                    Job.locked_by == bindparam("worker"),
                    Job.attempts == bindparam("attempt"),
                )
                .values(
                    locked_by=None,
                    locked_until=None,
                    **{name: bindparam(f"v_{name}", type_=table[name].type) for name in names},
                )
                .returning(Job.id)
                .execution_options(synchronize_session=False)
            )

        statement = self._statement(("finish", names), build)
        params = {f"v_{name}": value for name, value in values.items()}
        params.update(job_id=job_id, worker=worker_id, attempt=attempt)
        done = await self.session.scalars(statement, params)
        return done.first() is not None

    async def pause_connection(
        self,
        connection_id: str,
        *,
        reason: str,
        until: datetime | None,
        error: str | None,
        now: datetime,
    ) -> int:
        """Hold every pending job of a connection (its grant died, it was disconnected, it is
        banned); running ones are paused by their own handlers' outcomes."""
        values: dict[str, Any] = {
            "state": PAUSED,
            "paused_reason": reason,
            "paused_until": until,
            "updated_at": now,
        }
        if error is not None:
            values["last_error"] = error
        paused = await self.session.scalars(
            update(Job)
            .where(Job.connection_id == connection_id, Job.state == PENDING)
            .values(**values)
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        )
        return len(list(paused))

    # --- upkeep ----------------------------------------------------------------------------------

    async def fail_abandoned(self, *, now: datetime) -> list[Job]:
        """Running jobs whose lease ran out on their last attempt (their worker died every
        time): failed, so a job that kills its worker does not loop for ever. The jobs failed."""
        failed = await self.session.scalars(
            update(Job)
            .where(
                Job.state == RUNNING,
                Job.locked_until <= now,
                Job.attempts >= Job.max_attempts,
            )
            .values(
                state=FAILED,
                locked_by=None,
                locked_until=None,
                finished_at=now,
                updated_at=now,
                last_error=ABANDONED,
            )
            .returning(Job)
            .execution_options(synchronize_session=False)
        )
        return list(failed)

    async def hold_inactive_connections(self, *, now: datetime) -> int:
        """Pending jobs of connections that need re-authorization or were disconnected."""
        held = 0
        for status in CONNECTION_HOLDS:
            inactive = select(Connection.id).where(Connection.status == status)
            paused = await self.session.scalars(
                update(Job)
                .where(Job.state == PENDING, Job.connection_id.in_(inactive))
                .values(state=PAUSED, paused_reason=status, paused_until=None, updated_at=now)
                .returning(Job.id)
                .execution_options(synchronize_session=False)
            )
            held += len(list(paused))
        return held

    async def resume(self, *, now: datetime) -> int:
        """Paused jobs whose wait is over back to pending: those of connections active again
        (re-connected), and those paused until a time that has passed (a ban that ended)."""
        active = select(Connection.id).where(Connection.status == "active")
        back = {
            "state": PENDING,
            "paused_reason": None,
            "paused_until": None,
            "run_after": now,
            "updated_at": now,
        }
        resumed = 0
        for which in (
            and_(
                Job.paused_reason.in_(CONNECTION_HOLDS),
                Job.connection_id.in_(active),
            ),
            and_(
                or_(Job.paused_reason.is_(None), Job.paused_reason.not_in(CONNECTION_HOLDS)),
                Job.paused_until.is_not(None),
                Job.paused_until <= now,
            ),
        ):
            found = await self.session.scalars(
                update(Job)
                .where(Job.state == PAUSED, which)
                .values(**back)
                .returning(Job.id)
                .execution_options(synchronize_session=False)
            )
            resumed += len(list(found))
        return resumed
