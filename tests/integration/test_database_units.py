"""``Database.run_unit``: a write unit run in one call on the database's unit thread — committed
when the work returns, rolled back when it raises, one unit at a time, refused with 503 while the
storage cannot take it; and a job queued in one is claimed like any other (SQLite, PostgreSQL)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from sqlalchemy import Connection as SyncConnection
from sqlalchemy import func, insert, select
from test_failing_storage import write_protected

from amobridge.jobs import JobQueue
from amobridge.jobs.repository import JobRepository
from amobridge.settings import JobsSettings
from amobridge.storage.guard import StorageUnavailable
from amobridge.storage.tables import Connection, Job


def _add(owner: str) -> Any:
    def work(connection: SyncConnection) -> str:
        connection.execute(insert(Connection).values(id=owner, owner=owner, host="a.amocrm.ru"))
        return threading.current_thread().name

    return work


async def _owners(db: Any) -> list[str]:
    async with db.read() as session:
        return sorted((await session.scalars(select(Connection.owner))).all())


async def test_a_unit_commits_on_return_and_rolls_back_on_raise(db: Any) -> None:
    thread = await db.run_unit(_add("kept"))
    assert thread.startswith("amobridge-unit")
    assert thread != threading.current_thread().name

    def fails(connection: SyncConnection) -> None:
        _add("dropped")(connection)
        raise RuntimeError("the work failed after its insert")

    with pytest.raises(RuntimeError):
        await db.run_unit(fails)
    assert await _owners(db) == ["kept"]
    before = db.write_generation
    await db.run_unit(_add("third"))
    assert db.write_generation == before + 1  # caches see the write


async def test_units_run_one_at_a_time_in_the_order_asked(db: Any) -> None:
    order: list[int] = []
    inside = 0
    most = 0
    lock = threading.Lock()

    def work(n: int) -> Any:
        def run(connection: SyncConnection) -> None:
            nonlocal inside, most
            with lock:
                inside += 1
                most = max(most, inside)
            connection.execute(select(func.count()).select_from(Connection))
            order.append(n)
            with lock:
                inside -= 1

        return run

    await asyncio.gather(*(db.run_unit(work(n)) for n in range(20)))
    assert order == list(range(20))
    assert most == 1


async def test_a_job_queued_in_a_unit_is_there_once_it_commits(db: Any) -> None:
    queue = JobQueue(JobsSettings())
    woken = False

    def wake() -> None:
        nonlocal woken
        woken = True

    queue.signal.notify = wake  # type: ignore[method-assign]
    inserted = await db.run_unit(
        lambda connection: queue.enqueue_in(
            connection, kind="test.unit", payload={"n": 1}, ordering_key="unit:a"
        )
    )
    assert inserted is True
    assert woken is False  # the caller wakes the worker, once the unit committed
    queue.wake()
    assert woken is True
    async with db.read() as session:
        jobs = list((await session.scalars(select(Job))).all())
    assert [(j.kind, j.payload, j.state, j.ordering_key) for j in jobs] == [
        ("test.unit", {"n": 1}, "pending", "unit:a")
    ]
    assert jobs[0].turn is not None
    assert jobs[0].idempotency_key

    # A dedup key an unfinished job holds inserts nothing, as enqueue() does.
    def twice(connection: SyncConnection) -> list[bool]:
        return [
            queue.enqueue_in(connection, kind="test.unit", payload={}, dedup_key="only-one")
            for _ in range(2)
        ]

    assert await db.run_unit(twice) == [True, False]
    async with db.read() as session:
        held = await session.scalar(JobRepository.held_by("only-one"))
    assert held is not None


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_unit_is_refused_while_the_file_takes_no_writes(db: Any) -> None:
    await db.run_unit(_add("before"))
    assert db.path is not None
    with write_protected(db.path), pytest.raises(StorageUnavailable):
        await db.run_unit(_add("during"))
    for _ in range(50):  # the guard re-checks the files; the pools are reopened
        try:
            await db.run_unit(_add("after"))
            break
        except StorageUnavailable:
            await asyncio.sleep(0.05)
    assert await _owners(db) == ["after", "before"]
