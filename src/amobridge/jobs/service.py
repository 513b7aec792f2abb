"""The job queue as the features see it: enqueue inside their own unit of work, and the
operator's view (list, retry, cancel, counts). Nothing here commits: the caller's unit does.

Workers are woken when a unit that enqueued commits: on PostgreSQL by ``NOTIFY amobridge_jobs``
(sent inside the unit, delivered by the server at commit), in this process by
:class:`JobSignal` (set by a commit hook of the unit's session).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncSession

from amobridge.errors import Conflict, NotFound, ServiceError
from amobridge.jobs.repository import (
    CANCELLED,
    FAILED,
    PAUSED,
    PENDING,
    RUNNING,
    JobRepository,
    JobUnitRepository,
)
from amobridge.settings import JobsSettings
from amobridge.storage.tables import JOB_STATES, Job

MAX_PAGE = 200
DEFAULT_PAGE = 50
RETRYABLE_STATES = (FAILED, CANCELLED, PAUSED)
CANCELLABLE_STATES = (PENDING, PAUSED, FAILED)


class JobSignal:
    """Wakes this process's worker: set after a unit that enqueued commits, by a LISTEN
    connection on NOTIFY, and when a handler finishes (its connection's next job may be due)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()

    def clear(self) -> None:
        self._event.clear()

    async def wait(self, seconds: float) -> bool:
        """True when woken, False when ``seconds`` passed first."""
        if seconds <= 0:
            return self._event.is_set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._event.wait()
        return self._event.is_set()


class QueueClock:
    """Now, as the queue sees it: PostgreSQL's clock (one clock for every host: leases and
    schedules agree across machines), read at most every ``REFRESH`` seconds and kept as an
    offset from this host's, so a unit of work pays no round trip for it; SQLite's is this
    host's. ``fixed``: a clock of the caller's own (tests)."""

    REFRESH = 30.0

    def __init__(self, fixed: Callable[[], datetime] | None = None) -> None:
        self._fixed = fixed
        self._offset: timedelta | None = None
        self._read_at = 0.0

    async def now(self, jobs: JobRepository) -> datetime:
        if self._fixed is not None:
            return self._fixed()
        if jobs.dialect != "postgresql":
            return datetime.now(UTC)
        if self._offset is None or time.monotonic() - self._read_at > self.REFRESH:
            database = await jobs.db_now()
            self._offset = database - datetime.now(UTC)
            self._read_at = time.monotonic()
        return datetime.now(UTC) + self._offset

    def wall(self) -> datetime:
        """Now without asking the database: the fixed clock (tests), else this host's clock
        corrected by the last offset read from PostgreSQL."""
        if self._fixed is not None:
            return self._fixed()
        return datetime.now(UTC) + (self._offset or timedelta(0))

    def now_in(self, jobs: JobUnitRepository) -> datetime:
        """:meth:`now` within a unit run in one call (a synchronous connection)."""
        if self._fixed is not None:
            return self._fixed()
        if jobs.dialect != "postgresql":
            return datetime.now(UTC)
        if self._offset is None or time.monotonic() - self._read_at > self.REFRESH:
            self._offset = jobs.db_now() - datetime.now(UTC)
            self._read_at = time.monotonic()
        return datetime.now(UTC) + self._offset


@dataclass(frozen=True)
class JobPage:
    jobs: list[Job]
    next_cursor: str | None


def _utc(value: datetime, name: str) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware (UTC)")
    return value.astimezone(UTC)


def _key(value: str | None, name: str) -> str | None:
    if value is not None and not 1 <= len(value) <= 255:
        raise ValueError(f"{name} must be 1 to 255 characters")
    return value


class JobQueue:
    def __init__(
        self,
        settings: JobsSettings,
        *,
        signal: JobSignal | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.settings = settings
        self.signal = signal or JobSignal()
        self.clock = QueueClock(clock)

    async def _now(self, jobs: JobRepository) -> datetime:
        return await self.clock.now(jobs)

    async def enqueue(
        self,
        session: AsyncSession,
        *,
        kind: str,
        payload: dict[str, Any],
        owner: str | None = None,
        connection_id: str | None = None,
        ordering_key: str | None = None,
        dedup_key: str | None = None,
        run_after: datetime | None = None,
        max_attempts: int | None = None,
    ) -> Job:
        """Queue a job in the caller's unit of work: it exists, and workers are woken, only
        once that unit commits. With a ``dedup_key`` an unfinished job already holds, that job
        is returned instead."""
        jobs = JobRepository(session)
        now = await self._now(jobs)
        values = self._values(now, kind, payload, owner, connection_id, ordering_key, dedup_key)
        job, inserted = await jobs.insert_job(
            self._due(values, now, run_after, max_attempts), now=now
        )
        if inserted:
            await jobs.notify(kind)
            jobs.on_commit(self.signal.notify)
        return job

    def enqueue_in(
        self,
        connection: Connection,
        *,
        kind: str,
        payload: dict[str, Any],
        owner: str | None = None,
        connection_id: str | None = None,
        ordering_key: str | None = None,
        dedup_key: str | None = None,
        idempotency_key: str | None = None,
    ) -> bool:
        """:meth:`enqueue` in a unit run in one call (:meth:`Database.run_unit
        <amobridge.storage.db.Database.run_unit>`), on its synchronous connection; whether a job
        was inserted. This process's worker is not woken by it: call :meth:`wake` once that
        unit has committed (PostgreSQL's workers are, by the NOTIFY sent in it).
        ``idempotency_key``: the job's own (see :meth:`new_idempotency_key`), when the caller
        stores it with what the job works on before the job exists."""
        jobs = JobUnitRepository(connection)
        now = self.clock.now_in(jobs)
        values = self._values(now, kind, payload, owner, connection_id, ordering_key, dedup_key)
        if idempotency_key is not None:
            values["idempotency_key"] = idempotency_key
        inserted = jobs.insert_job(self._due(values, now, None, None), now=now)
        if inserted:
            jobs.notify(kind)
        return inserted

    @staticmethod
    def new_idempotency_key() -> str:
        """A job idempotency key, as :meth:`enqueue` makes them."""
        return uuid.uuid4().hex

    def wake(self) -> None:
        """Wake this process's worker (after a unit that enqueued with :meth:`enqueue_in`
        committed)."""
        self.signal.notify()

    @staticmethod
    def _values(
        now: datetime,
        kind: str,
        payload: dict[str, Any],
        owner: str | None,
        connection_id: str | None,
        ordering_key: str | None,
        dedup_key: str | None,
    ) -> dict[str, Any]:
        if not kind or len(kind) > 64:
            raise ValueError("a job kind is 1 to 64 characters, e.g. sync.push_lead")
        if not isinstance(payload, dict):
            raise TypeError("a job's payload is a JSON object (a dict)")
        json.dumps(payload)  # refuse what the JSON column could not store, here and now
        if connection_id is not None and not 1 <= len(connection_id) <= 32:
            raise ValueError("connection_id must be 1 to 32 characters")
        return {
            "kind": kind,
            "owner": owner,
            "connection_id": connection_id,
            "payload": payload,
            "state": PENDING,
            "attempts": 0,
            "ordering_key": _key(ordering_key, "ordering_key"),
            "dedup_key": _key(dedup_key, "dedup_key"),
            "idempotency_key": JobQueue.new_idempotency_key(),
            "created_at": now,
            "updated_at": now,
        }

    def _due(
        self,
        values: dict[str, Any],
        now: datetime,
        run_after: datetime | None,
        max_attempts: int | None,
    ) -> dict[str, Any]:
        attempts = self.settings.max_attempts if max_attempts is None else max_attempts
        if attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        due = now if run_after is None else _utc(run_after, "run_after")
        return values | {"max_attempts": attempts, "run_after": due}

    async def get(self, session: AsyncSession, job_id: int, *, owner: str | None = None) -> Job:
        """The job; with ``owner``, only if it is that owner's (``NotFound`` otherwise, the
        same answer as for a job that does not exist)."""
        found = await JobRepository(session).find(job_id, owner=owner)
        if found is None:
            raise NotFound(f"no job {job_id}" + (f" for owner {owner!r}" if owner else ""))
        return found

    async def list(
        self,
        session: AsyncSession,
        *,
        owner: str | None = None,
        state: str | None = None,
        kind: str | None = None,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> JobPage:
        """Jobs newest first, ``limit`` a page; ``owner`` None lists every owner's (admins).
        ``next_cursor`` continues after the page (None: it was the last)."""
        if state is not None and state not in JOB_STATES:
            raise ServiceError(
                f"unknown job state {state!r}: one of {', '.join(JOB_STATES)}",
                code="bad_request",
            )
        size = DEFAULT_PAGE if limit is None else limit
        if not 1 <= size <= MAX_PAGE:
            raise ServiceError(f"limit must be 1 to {MAX_PAGE}", code="bad_request")
        before: int | None = None
        if cursor:
            if not cursor.isdigit() or len(cursor) > 19:
                raise ServiceError(
                    "invalid cursor: pass the nextCursor of the previous page", code="bad_request"
                )
            before = int(cursor)
        rows = await JobRepository(session).page(
            owner=owner, state=state, kind=kind, before_id=before, limit=size
        )
        more = len(rows) > size
        rows = rows[:size]
        return JobPage(rows, str(rows[-1].id) if more and rows else None)

    async def retry(self, session: AsyncSession, job_id: int, *, owner: str | None = None) -> Job:
        """A failed, cancelled or paused job back to pending now, its attempts reset."""
        jobs = JobRepository(session)
        job = await self.get(session, job_id, owner=owner)
        if job.state not in RETRYABLE_STATES:
            raise Conflict(
                f"job {job_id} is {job.state}: only a failed, cancelled or paused job can be "
                "retried"
            )
        if job.dedup_key is not None and job.state != PAUSED:
            other = await jobs.active_with_dedup_key(job.dedup_key, other_than=job.id)
            if other is not None:
                raise Conflict(
                    f"job {other} with the same dedup key is queued already: it does this "
                    f"job's work; retry job {job_id} once it has finished if it is still needed"
                )
        await jobs.set_pending(job.id, now=await self._now(jobs))
        await jobs.refresh(job)
        await jobs.notify(job.kind)
        jobs.on_commit(self.signal.notify)
        return job

    async def cancel(self, session: AsyncSession, job_id: int, *, owner: str | None = None) -> Job:
        """A pending, paused or failed job cancelled: it will not run (retry brings it back)."""
        jobs = JobRepository(session)
        job = await self.get(session, job_id, owner=owner)
        if job.state == RUNNING:
            raise Conflict(
                f"job {job_id} is running: a running job is not interrupted; cancel it if it "
                "fails or is retried later"
            )
        if job.state not in CANCELLABLE_STATES:
            raise Conflict(f"job {job_id} is {job.state} already: there is nothing to cancel")
        await jobs.set_cancelled(job.id, now=await self._now(jobs))
        await jobs.refresh(job)
        return job

    async def counts(self, session: AsyncSession, *, owner: str | None = None) -> dict[str, int]:
        """How many jobs are in each state (every state named, zeros included)."""
        found = await JobRepository(session).counts(owner=owner)
        return {state: found.get(state, 0) for state in JOB_STATES}
