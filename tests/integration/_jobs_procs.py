"""Worker processes of the multi-process job queue proofs.

Each process builds its own :class:`~amobridge.jobs.JobWorker` on the shared PostgreSQL
database, with a handler that records every execution in ``job_runs`` (a table of the test's
own: which job, which worker, which connection, when it started and ended). It sets ``ready``
once it listens for wake-ups, and runs until the test sets ``stop`` — or kills it with SIGKILL
(no shutdown code runs: its leases just run out).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Sequence
from typing import Any

RUNS_TABLE = """
CREATE TABLE job_runs (
    job_id BIGINT NOT NULL,
    worker TEXT NOT NULL,
    connection_id TEXT,
    started DOUBLE PRECISION NOT NULL,
    ended DOUBLE PRECISION NOT NULL
)
"""
SINGLE = "mp.single"  # one job per claim, on per-connection lanes (concurrency 1)
BATCH = "mp.batch"  # up to BATCH_SIZE jobs per claim, no connection
BATCH_SIZE = 20

_context: Any = None


def context() -> Any:
    """Fresh processes from a forkserver that imported the queue once (see ``_procs.py``)."""
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(["amobridge.jobs", "amobridge.storage.db", __name__])
    return _context


def run_worker(
    url: str, name: str, settings: dict[str, Any], work_seconds: float, stop: Any, ready: Any
) -> None:
    asyncio.run(_run(url, name, settings, work_seconds, stop, ready))


async def _run(
    url: str, name: str, settings: dict[str, Any], work_seconds: float, stop: Any, ready: Any
) -> None:
    from sqlalchemy import text

    from amobridge.jobs import JobContext, JobHandlers, JobQueue, JobWorker
    from amobridge.settings import JobsSettings
    from amobridge.storage.db import Database
    from amobridge.storage.tables import Job

    jobs_settings = JobsSettings(**settings)
    db = Database(url)
    handlers = JobHandlers()

    async def record(context: JobContext, batch: Sequence[Job]) -> None:
        started = time.time()
        await asyncio.sleep(work_seconds)  # the "amoCRM call"
        ended = time.time()
        async with context.db.transaction() as session:
            await session.execute(
                text(
                    "INSERT INTO job_runs (job_id, worker, connection_id, started, ended) "
                    "VALUES (:job_id, :worker, :connection_id, :started, :ended)"
                ),
                [
                    {
                        "job_id": job.id,
                        "worker": name,
                        "connection_id": job.connection_id,
                        "started": started,
                        "ended": ended,
                    }
                    for job in batch
                ],
            )

    handlers.register(SINGLE, record)
    handlers.register(BATCH, record, batch_size=BATCH_SIZE)
    worker = JobWorker(
        db, JobQueue(jobs_settings), handlers, jobs_settings, clients=None, worker_id=name
    )
    worker.start()
    try:
        await asyncio.wait_for(worker.listening.wait(), 30)
        ready.set()  # listening: the test queues the jobs once every worker is
        await asyncio.to_thread(stop.wait)
    finally:
        await worker.stop()
        await db.dispose()
