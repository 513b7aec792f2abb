"""Group commit: many callers' writes in one unit of work, each caller answered after its commit.

A hot write path (a webhook delivery, an accepted lead) costs the database mostly per unit of
work — the write lock, ``BEGIN``/``COMMIT``, the WAL append on SQLite, the fsync on PostgreSQL —
not per row. :class:`GroupCommit` takes whatever callers are waiting when its writer is free (at
most ``max_batch``) into one unit and resumes each caller with its own result once that unit has
committed, so nothing is answered before it is durable (invariant 1). Items that arrive while a
unit is being written go into the next one; alone, an item is written at once, with no wait for
company.

One item must not sink the others: when a unit fails with an error that is not the storage's,
its items are written again one per unit, so only the caller whose item fails sees the error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from amobridge.storage.guard import StorageUnavailable

log = logging.getLogger("amobridge.storage")

Item = TypeVar("Item")
Result = TypeVar("Result")
MAX_BATCH = 256
STOPPING = "the service is stopping: send it again"


@dataclass
class _Lane(Generic[Item, Result]):
    """The batcher's state on one event loop (tests run a loop each; a server runs one)."""

    loop: asyncio.AbstractEventLoop
    items: deque[tuple[Item, asyncio.Future[Result]]] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    writing: set[asyncio.Task[None]] = field(default_factory=set)


class GroupCommit(Generic[Item, Result]):
    """``await submit(item)``: ``item`` written by ``write`` in a unit of work with whatever
    else was waiting; its result once that unit committed.

    ``write(items)`` writes ``items`` in one unit and returns one result per item, in order.
    ``writers`` units may be written at the same time (1: one at a time, all SQLite has).
    ``what`` names the items in log lines."""

    def __init__(
        self,
        write: Callable[[list[Item]], Awaitable[list[Result]]],
        *,
        what: str,
        max_batch: int = MAX_BATCH,
        writers: int = 1,
    ) -> None:
        self._write = write
        self._what = what
        self._max_batch = max_batch
        self._writers = writers
        self._lane: _Lane[Item, Result] | None = None

    def _current(self) -> _Lane[Item, Result]:
        loop = asyncio.get_running_loop()
        lane = self._lane
        if lane is None or lane.loop is not loop:
            lane = self._lane = _Lane(loop)
        if lane.task is None or lane.task.done():
            lane.task = loop.create_task(self._run(lane), name=f"group commit: {self._what}")
        return lane

    async def submit(self, item: Item) -> Result:
        lane = self._current()
        future: asyncio.Future[Result] = lane.loop.create_future()
        lane.items.append((item, future))
        lane.wake.set()
        return await future

    async def _run(self, lane: _Lane[Item, Result]) -> None:
        free = asyncio.Semaphore(self._writers)
        while True:
            if not lane.items:
                lane.wake.clear()
                await lane.wake.wait()
                continue
            await free.acquire()  # meanwhile the next batch gathers
            batch = [lane.items.popleft() for _ in range(min(len(lane.items), self._max_batch))]
            if not batch:
                free.release()
                continue
            # A caller that went away (its client hung up) is still written: the client sends
            # it again, and the copy is then found (a duplicate, the same idempotency key).
            task = lane.loop.create_task(self._write_batch(batch))
            lane.writing.add(task)

            def finished(done: asyncio.Task[None]) -> None:
                lane.writing.discard(done)
                free.release()

            task.add_done_callback(finished)

    async def _write_batch(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        try:
            results = await self._write([item for item, _ in batch])
        except StorageUnavailable as exc:
            _fail(batch, exc)
            return
        except asyncio.CancelledError:
            _fail(batch, StorageUnavailable(STOPPING))
            raise
        except Exception as exc:
            if len(batch) == 1:
                if not getattr(exc, "status_code", 500) < 500:
                    log.exception("%s could not be stored", self._what)
                _fail(batch, exc)
                return
            # One item must not sink the others: each alone, so only its caller fails.
            for one in batch:
                await self._write_batch([one])
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def aclose(self) -> None:
        lane, self._lane = self._lane, None
        if lane is None or lane.task is None:
            return
        tasks = [lane.task, *lane.writing]
        for task in tasks:
            task.cancel()
        if lane.loop is asyncio.get_running_loop():
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        _fail(list(lane.items), StorageUnavailable(STOPPING))
        lane.items.clear()


def _fail(batch: list[tuple[Item, asyncio.Future[Result]]], error: BaseException) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(error)
