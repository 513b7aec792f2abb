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

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    and_,
    event,
    exists,
    func,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import aliased

from amobridge.storage.repository import Repository
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
# Connection statuses whose jobs wait, and the pause reason each gives them.
CONNECTION_HOLDS = ("reauth_required", "disconnected")
BANNED = "banned"
CLAIM_TRIES = 8  # candidates a claim may pass over (connections another worker is claiming)
_ACTIVE_JOB = text("state IN ('pending', 'running', 'paused')")
_NOTIFIED = "amobridge.jobs.notified"
_COMMITTED = "amobridge.jobs.on_commit"


@dataclass(frozen=True)
class Candidate:
    id: int
    kind: str
    connection_id: str | None


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


class JobRepository(Repository[Job]):
    model = Job

    # --- enqueue ---------------------------------------------------------------------------------

    async def next_turn(self, connection_id: str | None, *, now: datetime) -> int:
        """The new job's place in the rotation: the queue's current turn (the highest turn
        running, else the lowest due pending one), or after the connection's own unfinished
        jobs. A connection with a backlog thus queues behind itself, while one with nothing
        queued goes next — however long the other's backlog."""
        running = select(func.max(Job.turn)).where(Job.state == RUNNING).scalar_subquery()
        due = (
            select(func.min(Job.turn))
            .where(Job.state == PENDING, Job.run_after <= now)
            .scalar_subquery()
        )
        own = (
            select(func.max(Job.turn))
            .where(_lane(Job.connection_id, connection_id), Job.state.in_(JOB_ACTIVE_STATES))
            .scalar_subquery()
        )
        row = (await self.session.execute(select(running, due, own))).one()
        current = row[0] if row[0] is not None else (row[1] if row[1] is not None else 0)
        return int(current) if row[2] is None else max(int(current), int(row[2]) + 1)

    async def insert_job(self, values: dict[str, Any]) -> tuple[Job, bool]:
        """Insert a job; with a ``dedup_key`` already held by an unfinished job, nothing is
        inserted and that job is returned. ``(job, inserted)``."""
        statement: Any = self.insert().values(**values)
        if values.get("dedup_key") is not None:
            statement = statement.on_conflict_do_nothing(
                index_elements=["dedup_key"], index_where=_ACTIVE_JOB
            )
        inserted = await self.session.scalar(statement.returning(Job.id))
        if inserted is None:
            existing = await self.session.scalar(
                select(Job)
                .where(Job.dedup_key == values["dedup_key"], Job.state.in_(JOB_ACTIVE_STATES))
                .limit(1)
            )
            if existing is None:  # finished between the conflict and this read: insert again
                return await self.insert_job(values)
            return existing, False
        row = await self.session.get(Job, inserted)
        assert row is not None
        return row, True

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

    def _claimable(
        self,
        *,
        kinds: Sequence[str],
        now: datetime,
        connection_concurrency: int,
        excluded: set[str],
    ) -> list[ColumnElement[bool]]:
        """Conditions every claimed job meets, besides being due."""
        running = aliased(Job)
        busy = (
            select(func.count())
            .select_from(running)
            .where(
                running.connection_id == Job.connection_id,
                running.state == RUNNING,
                running.locked_until > now,
            )
            .scalar_subquery()
        )
        banned = aliased(Job)
        is_banned = exists().where(
            banned.connection_id == Job.connection_id,
            banned.state == PAUSED,
            banned.paused_reason == BANNED,
            banned.paused_until > now,
        )
        ahead = aliased(Job)
        is_behind = exists().where(
            ahead.ordering_key == Job.ordering_key,
            ahead.id != Job.id,
            or_(
                ahead.state == RUNNING,
                and_(ahead.state.in_((PENDING, PAUSED)), ahead.id < Job.id),
            ),
        )
        status = (
            select(Connection.status).where(Connection.id == Job.connection_id).scalar_subquery()
        )
        conditions = [
            Job.kind.in_(kinds),
            or_(
                Job.connection_id.is_(None),
                and_(
                    func.coalesce(status, literal("active")) == "active",
                    busy < connection_concurrency,
                    ~is_banned,
                ),
            ),
            or_(Job.ordering_key.is_(None), ~is_behind),
        ]
        if excluded:
            conditions.append(
                or_(Job.connection_id.is_(None), Job.connection_id.not_in(sorted(excluded)))
            )
        return conditions

    async def _candidate(
        self,
        *,
        kinds: Sequence[str],
        now: datetime,
        connection_concurrency: int,
        excluded: set[str],
    ) -> Candidate | None:
        conditions = self._claimable(
            kinds=kinds,
            now=now,
            connection_concurrency=connection_concurrency,
            excluded=excluded,
        )
        # A running job whose lease ran out first (its worker died: older work), then the
        # pending ones, each in turn order.
        for due in (
            and_(Job.state == RUNNING, Job.locked_until <= now, Job.attempts < Job.max_attempts),
            and_(Job.state == PENDING, Job.run_after <= now),
        ):
            statement = (
                select(Job.id, Job.kind, Job.connection_id)
                .where(due, *conditions)
                .order_by(Job.turn, Job.id)
                .limit(1)
            )
            if self.dialect == "postgresql":
                statement = statement.with_for_update(skip_locked=True, of=Job)
            row = (await self.session.execute(statement)).first()
            if row is not None:
                return Candidate(int(row[0]), str(row[1]), row[2])
        return None

    async def _busy(self, connection_id: str, *, now: datetime) -> int:
        count = await self.session.scalar(
            select(func.count()).where(
                Job.connection_id == connection_id,
                Job.state == RUNNING,
                Job.locked_until > now,
            )
        )
        return int(count or 0)

    async def _lock_connection(self, connection_id: str) -> bool:
        """PostgreSQL: hold the connection's claim lock until this unit ends, if free."""
        got = await self.session.scalar(
            select(func.pg_try_advisory_xact_lock(_advisory_key(connection_id)))
        )
        return bool(got)

    async def _batch_mates(
        self, first: Candidate, *, now: datetime, extra: int, kinds: Sequence[str]
    ) -> list[int]:
        ahead = aliased(Job)
        is_behind = exists().where(
            ahead.ordering_key == Job.ordering_key,
            ahead.id != Job.id,
            or_(
                ahead.state == RUNNING,
                and_(ahead.state.in_((PENDING, PAUSED)), ahead.id < Job.id),
            ),
        )
        statement = (
            select(Job.id)
            .where(
                Job.state == PENDING,
                Job.run_after <= now,
                Job.kind == first.kind,
                _lane(Job.connection_id, first.connection_id),
                Job.id != first.id,
                or_(Job.ordering_key.is_(None), ~is_behind),
            )
            .order_by(Job.turn, Job.id)
            .limit(extra)
        )
        if self.dialect == "postgresql":
            statement = statement.with_for_update(skip_locked=True, of=Job)
        return [int(found) for found in await self.session.scalars(statement)]

    async def claim(
        self,
        *,
        kinds: Sequence[str],
        batch_sizes: dict[str, int],
        worker_id: str,
        now: datetime,
        lease_until: datetime,
        connection_concurrency: int,
    ) -> list[Job]:
        """Claim one due job and, for a batch kind, more of its kind and connection: they are
        ``running``, leased to ``worker_id`` until ``lease_until``, their attempt counted."""
        if not kinds:
            return []
        excluded: set[str] = set()
        for _ in range(CLAIM_TRIES):
            first = await self._candidate(
                kinds=kinds,
                now=now,
                connection_concurrency=connection_concurrency,
                excluded=excluded,
            )
            if first is None:
                return []
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
                ids += await self._batch_mates(first, now=now, extra=size - 1, kinds=kinds)
            claimed = await self.session.scalars(
                update(Job)
                .where(Job.id.in_(ids))
                .values(
                    state=RUNNING,
                    attempts=Job.attempts + 1,
                    locked_by=worker_id,
                    locked_until=lease_until,
                    started_at=now,
                    updated_at=now,
                )
                .returning(Job)
                .execution_options(synchronize_session=False)
            )
            return sorted(claimed, key=lambda job: job.id)
        return []

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
        done = await self.session.scalars(
            update(Job)
            .where(
                Job.id == job_id,
                Job.state == RUNNING,
                Job.locked_by == worker_id,
                Job.attempts == attempt,
            )
            .values(locked_by=None, locked_until=None, **values)
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        )
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

    async def fail_abandoned(self, *, now: datetime) -> int:
        """Running jobs whose lease ran out on their last attempt (their worker died every
        time): failed, so a job that kills its worker does not loop for ever."""
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
                last_error="the worker running it stopped before it finished (its lease ran "
                "out) on every attempt: check the worker's log, then retry the job",
            )
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        )
        return len(list(failed))

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
