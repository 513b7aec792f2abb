"""Proof on PostgreSQL with real worker processes: four processes claiming from one queue never
run a job twice (``FOR UPDATE SKIP LOCKED``), never run two jobs of one connection at once (the
per-connection claim lock), and when one of them is killed with SIGKILL mid-run, the jobs it
held are taken over once their leases run out: every job succeeds at least once.

Every execution is recorded in ``job_runs`` by the handler itself (see ``_jobs_procs.py``)."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from _jobs_procs import BATCH, RUNS_TABLE, SINGLE, context, run_worker
from sqlalchemy import func, insert, select, text

from amobridge.storage.db import Database
from amobridge.storage.tables import Job
from database_support import fresh_database
from process_support import STOP_DEADLINE

pytestmark = pytest.mark.postgres

PROCESSES = 4
CONNECTIONS = 20
SINGLES = 200  # one per claim, ten per connection
BATCHED = 1800  # BATCH_SIZE per claim, no connection


@pytest.fixture
def pg_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with fresh_database(request, "postgres", tmp_path) as url:
        yield url


@pytest.fixture
async def db(pg_url: str) -> AsyncIterator[Database]:
    database = Database(pg_url)
    async with database.transaction() as session:
        await session.execute(text(RUNS_TABLE))
    yield database
    await database.dispose()


async def enqueue_all(db: Database) -> None:
    """The jobs, written in one statement (JobQueue.enqueue one at a time would take longer
    than the proof itself), with the turns enqueue would give them: the singles' ten per
    connection, the batched ones one after another."""
    now = datetime.now(UTC)
    rows = [
        {
            "kind": SINGLE,
            "connection_id": f"c{n % CONNECTIONS}",
            "turn": n // CONNECTIONS,
            "payload": {"n": n},
        }
        for n in range(SINGLES)
    ] + [
        {"kind": BATCH, "connection_id": None, "turn": n, "payload": {"n": n}}
        for n in range(BATCHED)
    ]
    for row in rows:
        row.update(
            state="pending",
            attempts=0,
            max_attempts=8,
            run_after=now,
            idempotency_key=uuid.uuid4().hex,
            created_at=now,
            updated_at=now,
        )
    async with db.transaction() as session:
        await session.execute(insert(Job), rows)


class Workers:
    def __init__(self, url: str, settings: dict[str, Any], work_seconds: float) -> None:
        ctx = context()
        # One event each: setting an event another process waits on blocks until every waiter
        # has woken, and a killed one never does.
        self.stops = [ctx.Event() for _ in range(PROCESSES)]
        self.ready = [ctx.Event() for _ in range(PROCESSES)]
        self.procs = [
            ctx.Process(
                target=run_worker,
                args=(url, f"proc-{i}", settings, work_seconds, stop, ready),
                name=f"job-worker-{i}",
            )
            for i, (stop, ready) in enumerate(zip(self.stops, self.ready, strict=True))
        ]

    async def start(self) -> None:
        """Start every worker and wait until each one listens (they compete from the first
        job on)."""
        for proc in self.procs:
            await asyncio.to_thread(proc.start)
        for proc, ready in zip(self.procs, self.ready, strict=True):
            assert await asyncio.to_thread(ready.wait, 30), f"{proc.name} did not start"

    async def finish(self) -> None:
        for stop, proc in zip(self.stops, self.procs, strict=True):
            if proc.is_alive():
                stop.set()
        for proc in self.procs:
            await asyncio.to_thread(proc.join, STOP_DEADLINE)

    def kill(self, index: int) -> None:
        os.kill(self.procs[index].pid or 0, signal.SIGKILL)
        self.procs[index].join(STOP_DEADLINE)

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.is_alive():
                proc.kill()


async def succeeded(db: Database) -> int:
    async with db.read() as session:
        found = await session.scalar(
            select(func.count()).select_from(Job).where(Job.state == "succeeded")
        )
    return int(found or 0)


async def wait_for_succeeded(db: Database, count: int, deadline: float) -> None:
    limit = time.monotonic() + deadline
    while (done := await succeeded(db)) < count:
        assert time.monotonic() < limit, f"only {done} of {count} jobs succeeded in {deadline} s"
        await asyncio.sleep(0.1)


async def runs(db: Database) -> list[Any]:
    async with db.read() as session:
        return list(
            await session.execute(
                text("SELECT job_id, worker, connection_id, started, ended FROM job_runs")
            )
        )


def assert_no_connection_ran_twice_at_once(found: list[Any]) -> None:
    lanes: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for run in found:
        if run.connection_id is not None:
            lanes[run.connection_id].append((run.started, run.ended))
    assert len(lanes) == CONNECTIONS
    for connection, spans in lanes.items():
        spans.sort()
        for (_, ended), (started, _) in itertools.pairwise(spans):
            assert started >= ended, f"two jobs of {connection} ran at once"


async def test_four_processes_run_every_job_exactly_once(db: Database, pg_url: str) -> None:
    settings = {"concurrency": 4, "lease_seconds": 60, "poll_seconds": 1.0}
    workers = Workers(pg_url, settings, work_seconds=0.002)
    try:
        await workers.start()
        await enqueue_all(db)  # one NOTIFY wakes all four
        await wait_for_succeeded(db, SINGLES + BATCHED, deadline=90)
        await workers.finish()
        assert [proc.exitcode for proc in workers.procs] == [0] * PROCESSES
    finally:
        workers.cleanup()
    found = await runs(db)
    per_job = Counter(run.job_id for run in found)
    assert len(per_job) == SINGLES + BATCHED
    assert set(per_job.values()) == {1}, "a job ran twice"
    assert len({run.worker for run in found}) == PROCESSES  # the work was shared
    assert_no_connection_ran_twice_at_once(found)
    async with db.read() as session:
        attempts = set(await session.scalars(select(Job.attempts)))
    assert attempts == {1}


async def held_by(db: Database, worker: str) -> set[int]:
    async with db.read() as session:
        return set(
            await session.scalars(
                select(Job.id).where(Job.state == "running", Job.locked_by == worker)
            )
        )


async def test_a_killed_workers_jobs_are_taken_over(db: Database, pg_url: str) -> None:
    # Short leases, so the killed worker's jobs are taken over within seconds.
    settings = {"concurrency": 4, "lease_seconds": 2, "poll_seconds": 0.5, "resume_seconds": 0.5}
    workers = Workers(pg_url, settings, work_seconds=0.01)
    try:
        await workers.start()
        await enqueue_all(db)
        await wait_for_succeeded(db, (SINGLES + BATCHED) // 10, deadline=60)
        limit = time.monotonic() + 30
        while not await held_by(db, "proc-0"):  # kill it while it holds jobs
            assert time.monotonic() < limit, "proc-0 never held a job"
            await asyncio.sleep(0.01)
        workers.kill(0)
        held = await held_by(db, "proc-0")
        await wait_for_succeeded(db, SINGLES + BATCHED, deadline=90)
        await workers.finish()
    finally:
        workers.cleanup()
    assert held, "the killed worker held no job: kill it earlier"
    found = await runs(db)
    async with db.read() as session:
        every = set(await session.scalars(select(Job.id)))
    assert len(every) == SINGLES + BATCHED
    assert {run.job_id for run in found} == every  # each succeeded at least once
    by_job: dict[int, set[str]] = defaultdict(set)
    for run in found:
        by_job[run.job_id].add(run.worker)
    async with db.read() as session:
        rows = {
            job.id: job
            for job in await session.scalars(select(Job).where(Job.id.in_(sorted(held))))
        }
    for job_id in held:
        assert rows[job_id].state == "succeeded"
        assert rows[job_id].attempts >= 2  # the killed attempt counts
        assert by_job[job_id] - {"proc-0"}, f"job {job_id} was not run by another worker"
