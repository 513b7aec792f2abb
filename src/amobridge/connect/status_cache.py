"""This process's recent answers of ``GET /amocrm/status``, so a host app that polls the status
costs no unit of work per request.

An answer is served again only while both hold:
- it is younger than ``ttl`` — ``AMOBRIDGE_AMO__CONNECTION_CHECK_MS``, the same bound on how stale
  a process's view of a connection may be that the cached amoCRM clients keep: a change made by
  another process shows within that time;
- this process has finished no write unit since the answer was read
  (:attr:`~amobridge.storage.db.Database.write_generation` is unchanged): a connect, an import, a
  disconnect, a refresh or an error stored here shows at once, and a write request's own caller
  never reads its old status back.

The generation is taken *before* the read, so an answer that might predate a write is already
stale once that write's unit ends. Requests that miss together share one read (per owner and
generation): without that, every poller that arrived while an answer expired opened a read unit
of its own at the same moment. ``ttl`` 0 turns the cache off. Answers carry no token.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

STATUS_CACHE_SIZE = 4096


@dataclass(frozen=True)
class _Answer:
    value: dict[str, Any]
    generation: int
    read_at: float


class StatusCache:
    def __init__(
        self,
        ttl: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        size: int = STATUS_CACHE_SIZE,
    ) -> None:
        self.ttl = ttl
        self._clock = clock
        self._size = size
        self._answers: OrderedDict[str, _Answer] = OrderedDict()
        self._reads: dict[tuple[str, int], asyncio.Future[dict[str, Any]]] = {}

    async def fetch(
        self, owner: str, generation: int, read: Callable[[], Awaitable[dict[str, Any]]]
    ) -> dict[str, Any]:
        """The answer for ``owner``: remembered, or from ``read()`` — one call for every request
        that misses with the same ``generation`` (the write generation before it asked)."""
        found = self.get(owner, generation)
        if found is not None:
            return found
        if self.ttl <= 0:
            return await read()
        key = (owner, generation)
        flight = self._reads.get(key)
        if flight is None:
            flight = asyncio.ensure_future(self._read(owner, generation, read))
            self._reads[key] = flight
            flight.add_done_callback(lambda done: self._landed(key, done))
        # Shielded: a caller that goes away does not cancel the read the others wait for.
        return dict(await asyncio.shield(flight))

    def _landed(self, key: tuple[str, int], done: asyncio.Future[dict[str, Any]]) -> None:
        self._reads.pop(key, None)
        if not done.cancelled():
            done.exception()  # seen here: the callers still waiting get it; nobody else must

    async def _read(
        self, owner: str, generation: int, read: Callable[[], Awaitable[dict[str, Any]]]
    ) -> dict[str, Any]:
        read_at = self._clock()
        value = await read()
        self.put(owner, value, generation=generation, read_at=read_at)
        return value

    def get(self, owner: str, generation: int) -> dict[str, Any] | None:
        """A copy of the answer for ``owner`` if it is still good, else None."""
        found = self._answers.get(owner)
        if found is None:
            return None
        if found.generation != generation or self._clock() - found.read_at >= self.ttl:
            del self._answers[owner]
            return None
        return dict(found.value)

    def put(self, owner: str, value: dict[str, Any], *, generation: int, read_at: float) -> None:
        """Remember ``value``, read at ``read_at`` when the write generation was ``generation``
        (both taken before the read began)."""
        if self.ttl <= 0:
            return
        newer = self._answers.get(owner)
        if newer is not None and newer.generation > generation:
            return  # a read that began before a write ended must not replace one from after it
        self._answers[owner] = _Answer(dict(value), generation, read_at)
        self._answers.move_to_end(owner)
        while len(self._answers) > self._size:
            self._answers.popitem(last=False)
