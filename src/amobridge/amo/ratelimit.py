"""Client-side pacing: at most ``rate`` requests per ``per`` seconds per (integration, account).

amoCRM allows 7 requests per second (§7) and counts a sliding window over arrival times; repeated
429s get the whole account blocked (403). Pacing on our side is the only real protection, so every
API request (retries included) first passes :meth:`RateLimitBackend.acquire`.

:class:`InMemoryRateLimiter` keeps, per key, the times of the last ``rate`` grants and admits a
request only when the oldest of them is at least ``per + margin`` seconds old. So any window of
``per + margin`` seconds holds at most ``rate`` grants, whatever the concurrency. The ``margin``
(default 50 ms) absorbs the jitter between our grant and the server's arrival time: a request
granted a little later than another can reach amoCRM a little earlier. Waiters queue FIFO (one
``asyncio.Lock`` per key, held while waiting), so no request starves.

The service supplies a cross-process backend with the same two methods.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

DEFAULT_RATE = 7
DEFAULT_MARGIN = 0.05
_EPSILON = 1e-6


@runtime_checkable
class RateLimitBackend(Protocol):
    """Paces requests per key (``"{integration}@{account host}"``)."""

    async def acquire(self, key: str) -> None:
        """Return when one more request for ``key`` may be sent now (and count it)."""
        ...

    async def pause(self, key: str, seconds: float) -> None:
        """Admit nothing for ``key`` during the next ``seconds`` (amoCRM asked us to back off)."""
        ...


@dataclass
class _KeyState:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    grants: deque[float] = field(default_factory=deque)
    paused_until: float = 0.0


class InMemoryRateLimiter:
    """A sliding-window limiter for one process and one event loop.

    Share one instance between all clients of the same integration and account in a process.
    ``clock`` and ``sleep`` are injectable (a fake clock proves the bound without waiting).
    """

    def __init__(
        self,
        rate: int = DEFAULT_RATE,
        per: float = 1.0,
        *,
        margin: float = DEFAULT_MARGIN,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate < 1:
            raise ValueError("rate must be at least 1 request")
        if per <= 0 or margin < 0:
            raise ValueError("per must be positive and margin not negative")
        self.rate = rate
        self.per = per
        self.margin = margin
        self._window = per + margin
        self._clock = clock
        self._sleep = sleep
        self._keys: dict[str, _KeyState] = {}

    def __repr__(self) -> str:
        return f"InMemoryRateLimiter(rate={self.rate}, per={self.per}, margin={self.margin})"

    def _state(self, key: str) -> _KeyState:
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _KeyState()
        return state

    async def acquire(self, key: str) -> None:
        state = self._state(key)
        async with state.lock:  # FIFO: asyncio.Lock wakes waiters in arrival order
            while True:
                now = self._clock()
                if state.paused_until > now:
                    await self._sleep(state.paused_until - now)
                    continue
                grants = state.grants
                # _EPSILON: a wait computed as ``grants[0] + window - now`` can land a rounding
                # error short of the window; without it a fake clock could spin forever.
                while len(grants) >= self.rate and now - grants[0] >= self._window - _EPSILON:
                    grants.popleft()
                if len(grants) < self.rate:
                    grants.append(now)
                    return
                await self._sleep(grants[0] + self._window - now)

    async def pause(self, key: str, seconds: float) -> None:
        if seconds <= 0:
            return
        state = self._state(key)
        state.paused_until = max(state.paused_until, self._clock() + seconds)
