"""Client-side pacing: amoCRM must never see more than ``rate`` requests per ``per`` seconds per
(integration, account).

amoCRM allows 7 requests per second and counts the arrival times of requests in a sliding window;
429s over the limit, repeated, get the whole account blocked (403). Pacing on our side is the only
real protection, so every API request (retries included) first passes
:meth:`RateLimitBackend.acquire`, and tells :meth:`RateLimitBackend.release` when its reply came.

**The rule** (:class:`PaceWindow`). A request holds a *slot* from ``acquire`` until ``release``
(its reply arrived) and the slot keeps counting for ``per + margin`` seconds after the release. A
grant needs fewer than ``capacity`` counted slots. A request arrives at amoCRM at some moment
between its acquire and its release, so any window of ``per`` seconds holds at most ``capacity``
arrivals *whatever the latency*: of ``capacity + 1`` arrivals inside one window, the one granted
last was granted while every other was still counted (each released after its own arrival, inside
the window, and counts ``per`` more). Counting from the grant alone does not hold: a request whose
send is delayed (the first connection's TCP and TLS handshake) lands next to the following ones, and
amoCRM sees ``rate + 1`` arrivals in a second. The ``margin`` (default 50 ms) absorbs the difference
between our clock and amoCRM's.

**Fractional rates.** ``capacity`` is ``max(1, floor(rate))`` and grants are at least
``per / rate`` seconds apart. So any ``per`` window holds at most ``floor(rate)`` arrivals (one when
``rate < 1``) and the long-run rate stays at most ``rate`` per ``per``: 0.5 means one request every
two seconds, 6.5 means at most six in any second. The spacing also spreads a burst over the
second instead of sending ``rate`` requests at once.

A slot never released (a caller that died between acquire and release) counts as released
``slot_timeout`` seconds after its grant, above any attempt deadline of the client.

:class:`InMemoryRateLimiter` applies the rule per key for one process; the service's cross-process
limiter (``amobridge.connect.ratelimit``) applies the same :class:`PaceWindow` while it holds a
key's lease.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from bisect import insort
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

DEFAULT_RATE = 7.0
DEFAULT_MARGIN = 0.05
DEFAULT_SLOT_TIMEOUT = 120.0
"""Seconds after its grant a never-released slot counts as released (the client's attempt
deadline is 60 s, so a live request always releases first)."""
EPSILON = 1e-6
"""Float slack: a wait computed as ``free_at - now`` may wake a rounding error short of
``free_at``; without it a fake clock could spin forever."""


@runtime_checkable
class RateLimitBackend(Protocol):
    """Paces requests per key (``"{integration}@{account host}"``). Every ``acquire`` is paired
    with exactly one ``release`` once that request's attempt ended (reply, error or timeout)."""

    async def acquire(self, key: str) -> None:
        """Return when one more request for ``key`` may be sent now (its slot is taken)."""
        ...

    async def release(self, key: str) -> None:
        """The reply of one request for ``key`` arrived: its slot counts ``per + margin`` more."""
        ...

    async def pause(self, key: str, seconds: float) -> None:
        """Admit nothing for ``key`` during the next ``seconds`` (amoCRM asked us to back off)."""
        ...


def validate(rate: float, per: float, margin: float, slot_timeout: float) -> None:
    if not rate > 0 or math.isinf(rate):
        raise ValueError("rate must be a positive number of requests")
    if not per > 0 or margin < 0:
        raise ValueError("per must be positive and margin not negative")
    if not slot_timeout > 0:
        raise ValueError("slot_timeout must be positive")


class PaceWindow:
    """The rule for one key, as pure state: every method takes the current time (any monotonic
    clock; the caller owns it). See the module docstring for the rule and its guarantee."""

    def __init__(
        self,
        rate: float = DEFAULT_RATE,
        per: float = 1.0,
        *,
        margin: float = DEFAULT_MARGIN,
        slot_timeout: float = DEFAULT_SLOT_TIMEOUT,
    ) -> None:
        validate(rate, per, margin, slot_timeout)
        self.capacity = max(1, math.floor(rate + EPSILON))
        self.spacing = per / rate
        self.window = per + margin
        self.slot_timeout = slot_timeout
        self._busy: deque[float] = deque()  # grant times of unreleased slots, oldest first
        self._ends: list[float] = []  # sorted release times of slots that may still count
        self._last_grant = -math.inf
        self.paused_until = -math.inf

    @property
    def busy(self) -> int:
        """Slots granted and not released yet (requests in flight)."""
        return len(self._busy)

    def next_grant(self, now: float) -> float:
        """The earliest time ``>= now`` a grant is allowed if no slot is released meanwhile (a
        release can only make it earlier). ``<= now`` means: grant now."""
        self._expire(now)
        at = max(now, self.paused_until, self._last_grant + self.spacing)
        over = len(self._busy) + len(self._ends) - self.capacity
        if over >= 0:
            # ``over + 1`` counted slots must stop counting first: the (over+1)-th to free.
            frees = heapq.merge(
                (end + self.window for end in self._ends),
                (grant + self.slot_timeout + self.window for grant in self._busy),
            )
            at = max(at, next(itertools.islice(frees, over, None)))
        return at

    def grant(self, now: float) -> None:
        """Take a slot at ``now`` (only when :meth:`next_grant` allowed it)."""
        self._busy.append(now)
        self._last_grant = max(self._last_grant, now)

    def release(self, now: float) -> None:
        """One request's reply arrived. The oldest busy slot ends (busy slots are alike; ending
        the oldest keeps the later slot timeouts). A release with nothing busy (its slot timed out
        already) changes nothing."""
        if self._busy:
            self._busy.popleft()
            insort(self._ends, now)
            self._trim()

    def pause(self, until: float) -> None:
        self.paused_until = max(self.paused_until, until)

    def ends(self, now: float) -> list[float]:
        """The release times that still count at ``now``: what a next holder must respect."""
        self._expire(now)
        return list(self._ends)

    def load(self, ends: Iterable[float], *, paused_until: float = -math.inf) -> None:
        """Continue a window another pacer kept: its slots' release times (and pause) count here
        too. The last grant is taken to be the latest release (grants come before releases), so
        the spacing also holds across the handoff."""
        for end in ends:
            insort(self._ends, end)
            self._last_grant = max(self._last_grant, end)
        self._trim()
        self.pause(paused_until)

    def _expire(self, now: float) -> None:
        busy = self._busy
        while busy and busy[0] + self.slot_timeout <= now + EPSILON:
            insort(self._ends, busy.popleft() + self.slot_timeout)
        ends = self._ends
        stale = 0
        while stale < len(ends) and ends[stale] + self.window <= now + EPSILON:
            stale += 1
        if stale:
            del ends[:stale]
        self._trim()

    def _trim(self) -> None:
        # Only the latest ``capacity`` release times can decide a grant: a grant needs the
        # (n - capacity + 1)-th oldest of n counted slots freed, and with the older ones dropped
        # that is still the same slot. So the state stays small whatever the history.
        extra = len(self._ends) - self.capacity
        if extra > 0:
            del self._ends[:extra]


class Wakeup:
    """An event for waiters that also sleep: :meth:`wait` returns after ``seconds`` or as soon
    as :meth:`set` is called (or was, since the last :meth:`clear`).

    With the real ``asyncio.sleep`` it costs one future and one timer (a task per wait would put
    two more scheduling hops between a freed slot and its grant); an injected ``sleep`` (a fake
    clock) runs as a task beside it."""

    def __init__(self) -> None:
        self._set = False
        self._waiters: set[asyncio.Future[None]] = set()

    def set(self) -> None:
        self._set = True
        for waiter in self._waiters:
            _resolve(waiter)

    def clear(self) -> None:
        self._set = False

    async def wait(
        self, seconds: float, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    ) -> None:
        if self._set:
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.add(waiter)
        try:
            if sleep is asyncio.sleep:
                timer = loop.call_later(max(0.0, seconds), _resolve, waiter)
                try:
                    await waiter
                finally:
                    timer.cancel()
            else:
                sleeper = asyncio.ensure_future(sleep(seconds))
                sleeper.add_done_callback(lambda _: _resolve(waiter))
                try:
                    await waiter
                finally:
                    sleeper.cancel()
        finally:
            self._waiters.discard(waiter)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


@dataclass
class _KeyState:
    window: PaceWindow
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    released: Wakeup = field(default_factory=Wakeup)


class InMemoryRateLimiter:
    """:class:`PaceWindow` per key for one process and one event loop.

    Share one instance between all clients of the same integration and account in a process.
    Waiters queue FIFO (one ``asyncio.Lock`` per key, held while waiting), so no request starves.
    ``clock`` and ``sleep`` are injectable (a fake clock proves the bound without waiting).
    """

    def __init__(
        self,
        rate: float = DEFAULT_RATE,
        per: float = 1.0,
        *,
        margin: float = DEFAULT_MARGIN,
        slot_timeout: float = DEFAULT_SLOT_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        validate(rate, per, margin, slot_timeout)
        self.rate = rate
        self.per = per
        self.margin = margin
        self.slot_timeout = slot_timeout
        self._clock = clock
        self._sleep = sleep
        self._keys: dict[str, _KeyState] = {}

    def __repr__(self) -> str:
        return f"InMemoryRateLimiter(rate={self.rate:g}, per={self.per:g}, margin={self.margin:g})"

    def _state(self, key: str) -> _KeyState:
        state = self._keys.get(key)
        if state is None:
            window = PaceWindow(
                self.rate, self.per, margin=self.margin, slot_timeout=self.slot_timeout
            )
            state = self._keys[key] = _KeyState(window)
        return state

    async def acquire(self, key: str) -> None:
        state = self._state(key)
        async with state.lock:  # FIFO: asyncio.Lock wakes waiters in arrival order
            while True:
                now = self._clock()
                at = state.window.next_grant(now)
                if at <= now + EPSILON:
                    state.window.grant(now)
                    return
                if state.window.busy:
                    # A release frees a slot sooner than its timeout: wake up and recompute.
                    state.released.clear()
                    await state.released.wait(at - now, self._sleep)
                else:
                    await self._sleep(at - now)

    async def release(self, key: str) -> None:
        state = self._keys.get(key)
        if state is not None:
            state.window.release(self._clock())
            state.released.set()

    async def pause(self, key: str, seconds: float) -> None:
        if seconds <= 0:
            return
        self._state(key).window.pause(self._clock() + seconds)
