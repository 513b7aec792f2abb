"""On PostgreSQL an idle worker is woken by ``NOTIFY amobridge_jobs`` when another process's
unit that queued a job commits: the handler starts well within the poll interval (30 s here)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from amobridge.jobs import Job, JobContext, JobHandlers, JobQueue, JobWorker
from amobridge.settings import JobsSettings
from amobridge.storage.db import Database
from database_support import fresh_database

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with fresh_database(request, "postgres", tmp_path) as url:
        yield url


async def test_an_idle_worker_wakes_on_notify(pg_url: str) -> None:
    settings = JobsSettings(poll_seconds=30, resume_seconds=300)
    started: asyncio.Queue[float] = asyncio.Queue()

    async def handle(context: JobContext, batch: Sequence[Job]) -> None:
        started.put_nowait(time.monotonic())

    handlers = JobHandlers()
    handlers.register("t.wake", handle)
    worker_db, producer_db = Database(pg_url), Database(pg_url)
    # The producer's queue shares nothing with the worker's: only the database can wake it.
    producer = JobQueue(settings)
    worker = JobWorker(worker_db, JobQueue(settings), handlers, settings, clients=None)
    worker.start()
    try:
        await asyncio.wait_for(worker.listening.wait(), 10)
        await asyncio.sleep(0.2)  # idle, waiting for up to 30 s
        latencies = []
        for n in range(3):
            async with producer_db.transaction() as session:
                await producer.enqueue(session, kind="t.wake", payload={"n": n})
            committed = time.monotonic()
            latencies.append(await asyncio.wait_for(started.get(), 10) - committed)
        assert max(latencies) < 2.0, latencies  # woken, not polled
    finally:
        await worker.stop()
        await worker_db.dispose()
        await producer_db.dispose()
