"""The worker: claims due jobs, runs their handlers outside any transaction, commits outcomes.

One loop per process claims while it has a free slot (``AMOBRIDGE_JOBS__CONCURRENCY``) and
runs each claimed batch as a task of its own; one heartbeat renews the leases of every batch in
flight. Idle, it waits for a wake-up (:class:`~amobridge.jobs.service.JobSignal`: an enqueue
in this process, a NOTIFY on PostgreSQL, a finished handler), the next job that becomes due, or
the poll interval, whichever is first. Every ``resume_seconds`` it runs the queue's upkeep
(:mod:`amobridge.jobs.tasks`).

Stopping lets running handlers finish for ``shutdown_grace_seconds``; those still running are
cancelled, what they reported is committed and the rest is handed back (pending, the attempt
not counted), so another worker takes it at once instead of after the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from amobridge.connect.clients import ConnectionClients
from amobridge.jobs.handlers import (
    CONNECTION_PAUSES,
    WAIT_FOR_CONNECTION,
    JobContext,
    JobHandlers,
    Outcome,
    describe_error,
    outcome_for,
)
from amobridge.jobs.repository import FAILED, PAUSED, PENDING, SUCCEEDED, JobRepository
from amobridge.jobs.service import JobQueue, QueueClock
from amobridge.jobs.tasks import JobTasks
from amobridge.settings import JobsSettings
from amobridge.storage.db import Database
from amobridge.storage.guard import StorageUnavailable
from amobridge.storage.listen import listen
from amobridge.storage.tables import Job

log = logging.getLogger("amobridge.jobs")

SQLITE_POLL_MAX = 1.0  # SQLite has no NOTIFY: another process's enqueue is seen this fast
COMMIT_TRIES = 3
DEFER_DEFAULT = 1.0  # seconds a 429 without a hint waits
TAKEOVER_EVERY = timedelta(seconds=1)


def new_worker_id() -> str:
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Backoff:
    """Capped exponential backoff with jitter: attempt n waits between half and all of
    ``min(cap, base * 2**(n-1))`` (never nothing, so a burst of failures spreads out)."""

    def __init__(
        self, base: float, cap: float, *, rng: Callable[[], float] = random.random
    ) -> None:
        self.base = base
        self.cap = cap
        self._rng = rng

    def ceiling(self, attempt: int) -> float:
        return float(min(self.cap, self.base * 2 ** max(0, min(attempt - 1, 62))))

    def delay(self, attempt: int) -> float:
        ceiling = self.ceiling(attempt)
        return ceiling / 2 + self._rng() * ceiling / 2


class JobWorker:
    def __init__(
        self,
        db: Database,
        queue: JobQueue,
        handlers: JobHandlers,
        settings: JobsSettings,
        *,
        clients: ConnectionClients,
        services: Any = None,
        worker_id: str | None = None,
        concurrency: int | None = None,
        clock: Callable[[], datetime] | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.db = db
        self.queue = queue
        self.handlers = handlers
        self.settings = settings
        self.clients = clients
        self.services = services
        self.worker_id = worker_id or new_worker_id()
        self.concurrency = concurrency or settings.concurrency
        self.clock = QueueClock(clock) if clock is not None else queue.clock
        self.backoff = backoff or Backoff(
            settings.backoff_base_seconds, settings.backoff_cap_seconds
        )
        self.tasks = JobTasks(db, signal=queue.signal, clock=self.clock, handlers=handlers)
        self.signal = queue.signal
        self._takeover_at: datetime | None = None
        self._inflight: dict[int, int] = {}  # job id → the attempt this worker holds
        self._taken_over: set[int] = set()  # claimed from a worker whose lease ran out
        self._running: set[asyncio.Task[None]] = set()
        self._freed = asyncio.Event()
        self._stopping = False
        self._loop_task: asyncio.Task[None] | None = None
        self._helpers: list[asyncio.Task[None]] = []
        self.listening = asyncio.Event()  # PostgreSQL: the LISTEN connection is subscribed

    # --- time ------------------------------------------------------------------------------------

    async def _now(self, jobs: JobRepository) -> datetime:
        return await self.clock.now(jobs)

    @property
    def poll_seconds(self) -> float:
        poll = self.settings.poll_seconds
        return min(poll, SQLITE_POLL_MAX) if self.db.is_sqlite else poll

    # --- one claim, one run ----------------------------------------------------------------------

    async def claim(self) -> list[Job]:
        """Claim the next batch for this worker (nothing when nothing is due)."""
        kinds = self.handlers.kinds()
        if not kinds:
            return []
        async with self.db.transaction() as session:
            jobs = JobRepository(session)
            now = await self._now(jobs)
            # Leases run out rarely: looking for them once a second is soon enough, and saves
            # every other claim a query.
            takeover = self._takeover_at is None or now >= self._takeover_at
            claimed = await jobs.claim(
                kinds=kinds,
                batch_sizes=self.handlers.batch_sizes(),
                worker_id=self.worker_id,
                now=now,
                lease_until=now + timedelta(seconds=self.settings.lease_seconds),
                connection_concurrency=self.settings.connection_concurrency,
                takeover=takeover,
            )
            if takeover and not claimed.took_over:  # none found: look again in a second
                self._takeover_at = now + TAKEOVER_EVERY
            if claimed.took_over:  # their last attempt's worker may still be at work
                self._taken_over.update(job.id for job in claimed.jobs)
            return claimed.jobs

    async def execute(self, jobs: Sequence[Job]) -> dict[int, Outcome]:
        """Run the handler of a claimed batch and commit the outcomes (see the module
        docstring for a cancelled run); the outcome of each job."""
        for job in jobs:
            self._inflight[job.id] = job.attempts
        outcomes: dict[int, Outcome] = {}
        try:
            outcomes = await self._call(jobs)
            await self._commit(jobs, outcomes)
            return outcomes
        except asyncio.CancelledError:
            await self._commit(jobs, outcomes, hand_back=True)
            raise
        finally:
            for job in jobs:
                self._inflight.pop(job.id, None)

    async def run_once(self) -> list[Job]:
        """Claim one batch and run it to the end (tests, scripts); the jobs claimed."""
        jobs = await self.claim()
        if jobs:
            await self.execute(jobs)
        return jobs

    async def _call(self, jobs: Sequence[Job]) -> dict[int, Outcome]:
        spec = self.handlers.get(jobs[0].kind)
        taken_over = frozenset(job.id for job in jobs if job.id in self._taken_over)
        self._taken_over.difference_update(taken_over)
        context = JobContext(
            jobs,
            self.services,
            self.clients,
            self.db,
            self.worker_id,
            taken_over=taken_over,
            started_at=self.clock.wall(),
        )
        if spec is None:  # the claim takes only registered kinds; a handler removed since
            context.report_error(LookupError(f"no handler for job kind {jobs[0].kind!r}"))
            return dict(context.outcomes)
        ids = [job.id for job in jobs]
        limit = self.settings.handler_timeout_seconds
        try:
            async with asyncio.timeout(limit) as deadline:
                await spec.handler(context, jobs)
        except TimeoutError as raised:
            exc = raised
            if deadline.expired():
                exc = TimeoutError(f"the handler ran longer than {limit:g} s and was stopped")
            log.warning("jobs %s (%s) timed out: %s", ids, spec.kind, exc)
            context.report_error(exc)
        except Exception as exc:
            outcome = outcome_for(exc)
            if outcome.kind == "failed":
                log.exception("jobs %s (%s) failed: %s", ids, spec.kind, describe_error(exc))
            else:
                log.warning(
                    "jobs %s (%s): %s → %s", ids, spec.kind, describe_error(exc), outcome.kind
                )
            context.report_error(exc)
        for job in jobs:
            context.outcomes.setdefault(job.id, Outcome("succeeded"))
        return dict(context.outcomes)

    def _values(self, job: Job, outcome: Outcome, now: datetime) -> dict[str, Any]:
        """The columns an outcome writes (attempt ``job.attempts`` is the one just run)."""
        waits = outcome.kind == "paused" and outcome.reason in WAIT_FOR_CONNECTION
        if waits and job.connection_id is None:
            # No connection to wait for: a job without one is retried (and counted).
            outcome = Outcome("retry", error=outcome.error or f"paused: {outcome.reason}")
        values: dict[str, Any] = {"updated_at": now}
        if outcome.error is not None:
            values["last_error"] = outcome.error
        if outcome.kind == "succeeded":
            values.update(state=SUCCEEDED, result=outcome.result, finished_at=now)
        elif outcome.kind == "failed":
            values.update(state=FAILED, finished_at=now)
        elif outcome.kind == "retry":
            if job.attempts >= job.max_attempts:
                values.update(state=FAILED, finished_at=now)
                values["last_error"] = (
                    f"{outcome.error or 'failed'} (attempt {job.attempts} of "
                    f"{job.max_attempts}: no attempts left)"
                )
            else:
                delay = outcome.delay
                if delay is None:
                    delay = self.backoff.delay(job.attempts)
                values.update(state=PENDING, run_after=now + timedelta(seconds=max(0.0, delay)))
        elif outcome.kind == "defer":
            delay = DEFER_DEFAULT if outcome.delay is None else max(0.0, outcome.delay)
            values.update(
                state=PENDING,
                attempts=job.attempts - 1,
                run_after=now + timedelta(seconds=delay),
            )
        else:  # paused
            values.update(
                state=PAUSED,
                attempts=job.attempts - 1,
                paused_reason=outcome.reason,
                paused_until=outcome.until,
            )
        return values

    async def _commit(
        self, jobs: Sequence[Job], outcomes: dict[int, Outcome], *, hand_back: bool = False
    ) -> None:
        """Write the outcomes, in one unit, of the jobs this worker still holds; with
        ``hand_back``, jobs without an outcome are handed back. A database that cannot take
        the write is tried again briefly; after that the leases run out and the jobs are taken
        over (their handlers must be safe to re-run)."""
        for attempt in range(1, COMMIT_TRIES + 1):
            try:
                await self._write_outcomes(jobs, outcomes, hand_back=hand_back)
                return
            except StorageUnavailable as exc:
                if attempt == COMMIT_TRIES:
                    log.warning(
                        "outcomes of jobs %s not written (%s): they run again once their "
                        "lease is over",
                        [job.id for job in jobs],
                        exc.detail,
                    )
                    return
                await asyncio.sleep(0.25 * 2**attempt)

    async def _write_outcomes(
        self, jobs: Sequence[Job], outcomes: dict[int, Outcome], *, hand_back: bool
    ) -> None:
        requeued = False
        async with self.db.transaction() as session:
            repo = JobRepository(session)
            now = await self._now(repo)
            paused_connections: set[str] = set()
            unfinished = [job.id for job in jobs if job.id not in outcomes]
            if hand_back and unfinished:
                await repo.release(unfinished, worker_id=self.worker_id, now=now)
                requeued = True
            for job in jobs:
                outcome = outcomes.get(job.id)
                if outcome is None:
                    continue
                values = self._values(job, outcome, now)
                held = await repo.finish(
                    job.id, attempt=job.attempts, worker_id=self.worker_id, values=values
                )
                if not held:
                    log.info(
                        "job %s was taken over by another worker: its outcome here (%s) is dropped",
                        job.id,
                        outcome.kind,
                    )
                    continue
                requeued = requeued or values.get("state") == PENDING
                if (
                    outcome.kind == "paused"
                    and outcome.reason in CONNECTION_PAUSES
                    and job.connection_id is not None
                    and job.connection_id not in paused_connections
                ):
                    paused_connections.add(job.connection_id)
                    count = await repo.pause_connection(
                        job.connection_id,
                        reason=outcome.reason,
                        until=outcome.until,
                        error=outcome.error,
                        now=now,
                    )
                    log.warning(
                        "connection %s: jobs paused (%s), %d queued ones with them",
                        job.connection_id,
                        outcome.reason,
                        count,
                    )
            if requeued:
                await repo.notify("requeued")
                repo.on_commit(self.signal.notify)

    # --- the loop --------------------------------------------------------------------------------

    def start(self) -> None:
        """Run the loop, the heartbeat and (PostgreSQL) the LISTEN connection as tasks."""
        if self._loop_task is not None:
            return
        self._stopping = False
        self._helpers.append(asyncio.create_task(self._heartbeat(), name="jobs-heartbeat"))
        if not self.db.is_sqlite:
            self._helpers.append(
                asyncio.create_task(
                    listen(
                        self.db.url,
                        "amobridge_jobs",
                        self.signal.notify,
                        on_listening=self.listening.set,
                    ),
                    name="jobs-listen",
                )
            )
        self._loop_task = asyncio.create_task(self._loop(), name="jobs-worker")

    async def stop(self, grace: float | None = None) -> None:
        """Stop claiming; let running handlers finish within ``grace`` seconds (default the
        setting), then cancel them and hand their jobs back."""
        self._stopping = True
        self.signal.notify()
        self._freed.set()
        if self._loop_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        wait = self.settings.shutdown_grace_seconds if grace is None else grace
        if self._running:
            _, late = await asyncio.wait(set(self._running), timeout=wait)
            for task in late:
                task.cancel()
            for task in late:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for helper in self._helpers:
            helper.cancel()
        for helper in self._helpers:
            with contextlib.suppress(asyncio.CancelledError):
                await helper
        self._helpers.clear()
        self.listening.clear()

    async def _loop(self) -> None:
        next_upkeep = 0.0
        while True:
            if time.monotonic() >= next_upkeep:
                await self._upkeep()
                next_upkeep = time.monotonic() + self.settings.resume_seconds
            if len(self._running) >= self.concurrency:
                self._freed.clear()
                if self._stopping:
                    return
                await self._wait(self._freed, self.poll_seconds)
                continue
            self.signal.clear()
            if self._stopping:
                return
            try:
                jobs = await self.claim()
            except StorageUnavailable as exc:
                log.warning("job claims paused: %s", exc.detail)
                jobs = []
            except Exception:  # a bad round must not end the worker; it is logged
                log.exception("job claim failed")
                jobs = []
            if jobs:
                self._spawn(jobs)
                continue
            wait = min(self.poll_seconds, max(0.0, next_upkeep - time.monotonic()))
            wait = min(wait, await self._until_next_due())
            await self.signal.wait(wait)

    @staticmethod
    async def _wait(event: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await event.wait()

    def _spawn(self, jobs: Sequence[Job]) -> None:
        task = asyncio.create_task(self._execute_logged(jobs), name=f"job-{jobs[0].id}")
        self._running.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._running.discard(finished)
            self._freed.set()
            self.signal.notify()  # the connection's next job may be claimable now

        task.add_done_callback(done)

    async def _execute_logged(self, jobs: Sequence[Job]) -> None:
        try:
            await self.execute(jobs)
        except asyncio.CancelledError:
            raise
        except Exception:  # outcomes could not be written; the leases will run out
            log.exception("jobs %s: running them failed", [job.id for job in jobs])

    async def _until_next_due(self) -> float:
        kinds = self.handlers.kinds()
        if not kinds:
            return self.poll_seconds
        try:
            async with self.db.read() as session:
                jobs = JobRepository(session)
                now = await self._now(jobs)
                due = await jobs.next_due(kinds, now=now)
        except Exception:  # only a wake-up time: polling covers it
            return self.poll_seconds
        if due is None:
            return self.poll_seconds
        return max(0.0, (due - now).total_seconds())

    async def _upkeep(self) -> None:
        try:
            await self.tasks.upkeep()
        except StorageUnavailable as exc:
            log.warning("job upkeep paused: %s", exc.detail)
        except Exception:  # the next round tries again
            log.exception("job upkeep failed")

    async def _heartbeat(self) -> None:
        every = self.settings.lease_seconds / 3
        while True:
            await asyncio.sleep(every)
            await self.renew_leases()

    async def renew_leases(self) -> None:
        """Extend the lease of every job in flight here; one running here that another worker
        took over (this worker stalled past its lease) keeps running, but its outcome is
        dropped."""
        held = list(self._inflight)
        if not held:
            return
        try:
            async with self.db.transaction() as session:
                jobs = JobRepository(session)
                now = await self._now(jobs)
                renewed = await jobs.renew(
                    held,
                    worker_id=self.worker_id,
                    until=now + timedelta(seconds=self.settings.lease_seconds),
                )
        except StorageUnavailable as exc:
            log.warning("job leases not renewed: %s", exc.detail)
            return
        except Exception:
            log.exception("job lease renewal failed")
            return
        lost = set(held) - set(renewed) - (set(held) - set(self._inflight))
        if lost:
            log.warning("jobs %s were taken over by another worker", sorted(lost))
