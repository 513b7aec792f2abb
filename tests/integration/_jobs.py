"""Helpers of the job queue tests: a queue, a worker and a clock the test moves by hand (so a
backoff, a ban or a lease runs out without anyone sleeping), on the test's own database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from amobridge.jobs import JobHandlers, JobQueue, JobWorker
from amobridge.jobs.worker import Backoff
from amobridge.settings import JobsSettings
from amobridge.storage.db import Database
from amobridge.storage.tables import Connection, Job


class Clock:
    """Now, as the queue and the worker see it; moved forward by the test."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Jobs:
    db: Database
    queue: JobQueue
    handlers: JobHandlers
    clock: Clock
    settings: JobsSettings
    workers: list[JobWorker] = field(default_factory=list)

    def worker(self, name: str = "w1", **over: Any) -> JobWorker:
        found = JobWorker(
            self.db,
            self.queue,
            self.handlers,
            self.settings,
            clients=None,  # type: ignore[arg-type]  # these handlers call no amoCRM
            worker_id=name,
            clock=self.clock,
            backoff=Backoff(
                self.settings.backoff_base_seconds,
                self.settings.backoff_cap_seconds,
                rng=over.pop("rng", lambda: 0.5),
            ),
            **over,
        )
        self.workers.append(found)
        return found

    async def enqueue(self, **fields: Any) -> Job:
        fields.setdefault("payload", {})
        async with self.db.transaction() as session:
            return await self.queue.enqueue(session, **fields)

    async def many(self, count: int, **fields: Any) -> list[Job]:
        fields.setdefault("payload", {})
        async with self.db.transaction() as session:
            return [await self.queue.enqueue(session, **fields) for _ in range(count)]

    async def job(self, job_id: int) -> Job:
        async with self.db.read() as session:
            found = await session.scalar(select(Job).where(Job.id == job_id))
        assert found is not None
        return found

    async def states(self) -> dict[int, str]:
        async with self.db.read() as session:
            return dict((await session.execute(select(Job.id, Job.state))).all())

    async def connection(self, status: str = "active") -> str:
        async with self.db.transaction() as session:
            row = Connection(owner=f"owner-{datetime.now(UTC).timestamp()}", host="acme.amocrm.ru")
            row.status = status
            session.add(row)
            await session.flush()
            return row.id

    async def set_status(self, connection_id: str, status: str) -> None:
        async with self.db.transaction() as session:
            await session.execute(
                update(Connection).where(Connection.id == connection_id).values(status=status)
            )


@asynccontextmanager
async def job_queue(database_url: str, **settings: Any) -> AsyncIterator[Jobs]:
    values: dict[str, Any] = {
        "max_attempts": 3,
        "backoff_base_seconds": 10.0,
        "backoff_cap_seconds": 100.0,
        "lease_seconds": 30.0,
        "poll_seconds": 0.5,
        "resume_seconds": 0.2,
        "shutdown_grace_seconds": 1.0,
    }
    values.update(settings)
    jobs_settings = JobsSettings(**values)
    clock = Clock()
    db = Database(database_url)
    try:
        yield Jobs(db, JobQueue(jobs_settings, clock=clock), JobHandlers(), clock, jobs_settings)
    finally:
        await db.dispose()
