"""The SDK's ``RateLimitBackend`` shared by every process through the database (invariant 4).

**A pace lease per key.** One process at a time paces a key: it holds the key's lease (its
``rate_limits`` row names the holder and an expiry on the database's clock) and applies the rule of
:class:`~amobridge.amo.ratelimit.PaceWindow` in memory, so an amoCRM call costs no database round
trip. A background *keeper* task per limiter does all the SQL (``ratelimit_leases.py``), a few
batched statements per tick whatever the number of keys, never on a caller's path:

- a key with local demand and no lease: take it when it is free, else mark the row "wanted" and
  poll (every ``poll_interval``) until the holder hands it on;
- a held key: renew it (every ``lease_seconds * 2/3``, one statement for all keys due) while it
  has local demand — requests waiting or in flight, or a grant since the last renewal — and hand
  it back when it has none, writing the end times of its latest slots so the next holder continues
  the window (no burst at a handoff);
- when another process wants a held key, the holder hands it on as soon as nothing is queued or in
  flight here, or after one lease term at most: it stops granting, lets its requests in flight
  finish, hands back. Processes sharing a busy key take turns.

**Stalls.** A holder grants only until a local monotonic deadline, ``lease_seconds * 5/6`` after it
*sent* the statement that took or renewed the lease, while the database expires it
``lease_seconds`` after the statement *ran*: a holder whose renewals stall (database slow or
unreachable, process paused) stops granting before anyone else may take over. Taking an expired
lease (never handed back, so its last slots are unknown) pauses the key for one full window.

Why the database and not Redis: the database is already required and shared by every replica and
worker, and with the lease the limiter's load on it is a renewal per process every ~2 s and a
contention check per poll interval, whatever the request rate (``docs/rate-limits.md`` has the
measurements).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from amobridge.amo.ratelimit import (
    DEFAULT_MARGIN,
    DEFAULT_RATE,
    DEFAULT_SLOT_TIMEOUT,
    EPSILON,
    PaceWindow,
    Wakeup,
    validate,
)
from amobridge.connect.ratelimit_leases import HandBack, LeaseStore, Taken
from amobridge.storage.db import Database

log = logging.getLogger(__name__)

DEFAULT_LEASE_SECONDS = 3.0
DEFAULT_POLL_INTERVAL = 0.1


@dataclass
class _Key:
    window: PaceWindow
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    changed: Wakeup = field(default_factory=Wakeup)
    waiting: int = 0  # acquire calls queued or waiting (local demand)
    deadline: float | None = None  # grant only before this (local clock); None: no lease
    renew_at: float = 0.0
    taken_at: float = 0.0
    active: bool = False  # granted since the lease was taken or last renewed
    handing_off: bool = False  # another process waits: grant nothing more, hand back when idle
    yield_until: float = 0.0  # after handing on a turn, leave the lease to the others a moment
    marked_at: float = -math.inf  # when this process last marked the row "wanted"
    error: BaseException | None = None  # the keeper failed while this key waited for its lease

    def grants_now(self, now: float) -> bool:
        return self.deadline is not None and not self.handing_off and now < self.deadline

    def wants_lease(self) -> bool:
        return self.deadline is None and self.waiting > 0

    def forgettable(self, now: float) -> bool:
        window = self.window
        return (
            self.deadline is None
            and not self.waiting
            and not window.busy
            and window.paused_until <= now
            and not window.ends(now)
        )


class DatabaseRateLimiter:
    """Paces every key across all processes sharing ``db``; ``rate`` per ``per`` seconds with the
    rule of :class:`~amobridge.amo.ratelimit.PaceWindow`.

    ``clock`` (local monotonic) and ``sleep`` are injectable; ``wall`` is SQLite's database
    clock. :meth:`close` hands every idle lease back (call it at shutdown; otherwise the leases
    expire and the next holder waits one window).
    """

    def __init__(
        self,
        db: Database,
        rate: float = DEFAULT_RATE,
        per: float = 1.0,
        *,
        margin: float = DEFAULT_MARGIN,
        slot_timeout: float = DEFAULT_SLOT_TIMEOUT,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        validate(rate, per, margin, slot_timeout)
        if not lease_seconds > 0 or not poll_interval > 0:
            raise ValueError("lease_seconds and poll_interval must be positive")
        self._db = db
        self.rate = rate
        self.per = per
        self.margin = margin
        self.slot_timeout = slot_timeout
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self._clock = clock
        self._wall = wall
        self._sleep = sleep
        self._keys: dict[str, _Key] = {}
        self._keeper: asyncio.Task[None] | None = None
        self._known: set[str] = set()  # keys whose row exists
        self._closing = False
        self._kick = Wakeup()
        self._store = self._new_store()

    def __repr__(self) -> str:
        return (
            f"DatabaseRateLimiter(rate={self.rate:g}, per={self.per:g}, margin={self.margin:g}, "
            f"lease_seconds={self.lease_seconds:g})"
        )

    @property
    def holder(self) -> str:
        """This limiter's name in ``rate_limits.lease_holder``."""
        return self._store.holder

    def lease_deadline(self, key: str) -> float | None:
        """Until when (on ``clock``) this process may grant requests for ``key``; None when it
        holds no lease of it."""
        state = self._keys.get(key)
        return None if state is None else state.deadline

    def _new_store(self) -> LeaseStore:
        holder = f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        window = self.per + self.margin
        return LeaseStore(
            self._db, holder, self.lease_seconds, window, clock=self._clock, wall=self._wall
        )

    def _state(self, key: str) -> _Key:
        state = self._keys.get(key)
        if state is None:
            window = PaceWindow(
                self.rate, self.per, margin=self.margin, slot_timeout=self.slot_timeout
            )
            state = self._keys[key] = _Key(window)
        return state

    # --- the RateLimitBackend protocol ------------------------------------------------------------

    async def acquire(self, key: str) -> None:
        self._ensure_keeper()
        state = self._state(key)
        state.waiting += 1
        try:
            async with state.lock:  # FIFO within the process
                while True:
                    if state.error is not None:
                        error, state.error = state.error, None
                        raise error
                    now = self._clock()
                    if not state.grants_now(now):
                        self._kick.set()
                        # The keeper sets ``changed`` when the lease comes (or the keeper
                        # failed); the timeout only guards against a lost wake-up.
                        state.changed.clear()
                        await state.changed.wait(self.lease_seconds, self._sleep)
                        continue
                    at = state.window.next_grant(now)
                    if at <= now + EPSILON:
                        state.window.grant(now)
                        state.active = True
                        return
                    assert state.deadline is not None
                    state.changed.clear()
                    await state.changed.wait(min(at, state.deadline) - now, self._sleep)
        finally:
            state.waiting -= 1

    async def release(self, key: str) -> None:
        state = self._keys.get(key)
        if state is None:
            return
        state.window.release(self._clock())
        state.changed.set()
        if state.handing_off and not state.window.busy:
            self._kick.set()

    async def pause(self, key: str, seconds: float) -> None:
        if seconds <= 0:
            return
        self._state(key).window.pause(self._clock() + seconds)
        try:
            await self._store.pause(key, seconds)  # and the next holder, in whatever process
        except Exception as exc:  # this process holds the pause already; the 429's retry goes on
            log.warning("rate limiter: could not share a pause of %s (%s)", key, type(exc).__name__)

    async def close(self) -> None:
        """Stop the keeper and hand back every lease with nothing in flight."""
        keeper, self._keeper = self._keeper, None
        if keeper is not None and not keeper.done():
            # Let a tick under way finish (a take it committed is then known, and handed back);
            # cancel only a keeper stuck on the database.
            self._closing = True
            self._kick.set()
            try:
                await asyncio.wait_for(asyncio.shield(keeper), self.lease_seconds)
            except TimeoutError:
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper
            finally:
                self._closing = False
        # In flight: its lease expires and the next holder waits one window.
        idle = [k for k, s in self._keys.items() if s.deadline is not None and not s.window.busy]
        try:
            if idle:
                await self._hand_back(idle)
        except Exception as exc:
            log.warning("rate limiter: could not hand leases back (%s)", type(exc).__name__)
        finally:
            await self._store.disconnect()

    # --- the keeper ---------------------------------------------------------------------------------

    def _ensure_keeper(self) -> None:
        loop = asyncio.get_running_loop()
        keeper = self._keeper
        if keeper is not None and not keeper.done() and keeper.get_loop() is loop:
            return
        if keeper is not None and keeper.get_loop() is not loop:
            # Used from a new event loop (tests, a restarted worker): the old loop's waiters and
            # leases are gone with it. A new holder name, so its leases count as expired.
            self._keys.clear()
            self._known.clear()
            self._store = self._new_store()
        self._kick = Wakeup()
        self._keeper = loop.create_task(self._keep(), name="rate-limit keeper")

    async def _keep(self) -> None:
        try:
            await self._keep_leases()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._store.disconnect())

    async def _keep_leases(self) -> None:
        failures = 0
        while True:
            if self._closing or not any(
                s.deadline is not None or s.wants_lease() for s in self._keys.values()
            ):
                return  # nothing held, nothing wanted: the next acquire starts a new keeper
            # Cleared before the tick looks at the keys: a kick during the tick means another
            # tick right after it, not one poll interval later.
            self._kick.clear()
            try:
                await self._tick()
                failures = 0
            except Exception as exc:
                failures += 1
                log.warning("rate limiter: lease update failed (%s)", type(exc).__name__)
                # Held leases keep granting until their deadline. Callers waiting for a lease
                # hear the error once the database failed twice in a row (not for one dropped
                # connection, which the next tick replaces).
                if failures >= 2:
                    for state in self._keys.values():
                        if state.wants_lease():
                            state.error = exc
                            state.changed.set()
            await self._kick.wait(self._next_tick(), self._sleep)

    def _next_tick(self) -> float:
        now = self._clock()
        delay = self.lease_seconds
        for state in self._keys.values():
            if state.deadline is not None:
                # held keys are polled too: another process may be waiting for them
                delay = min(delay, state.renew_at - now, self.poll_interval)
            elif state.wants_lease():
                delay = min(delay, self.poll_interval)
        return max(delay, 0.0)

    async def _tick(self) -> None:
        self._forget_idle()
        held = any(s.deadline is not None for s in self._keys.values())
        contended = await self._store.contended() if held else set()
        await self._tend_held(contended)
        now = self._clock()
        wanted = [k for k, s in self._keys.items() if s.wants_lease()]
        if not wanted:
            return
        # Right after handing a turn on, leave the key to the process that asked for it.
        ready = [k for k in wanted if now >= self._keys[k].yield_until]
        taken: set[str] = set()
        if ready:
            new = [k for k in ready if k not in self._known]
            if new:
                await self._store.insert(new)
                self._known.update(new)
            for lease in await self._store.take(ready):
                self._took(self._keys[lease.key], lease)
                taken.add(lease.key)
                log.debug(
                    "rate limiter: took the lease of %s (expired: %s)", lease.key, lease.expired
                )
        # Mark the others' rows "wanted", again only when the mark is about to lapse.
        mark = [
            k
            for k in wanted
            if k not in taken and now >= self._keys[k].marked_at + self.lease_seconds / 2
        ]
        if mark:
            await self._store.want(mark)
            for key in mark:
                self._keys[key].marked_at = now

    def _forget_idle(self) -> None:
        """Drop the state of keys with nothing held, queued, in flight or still counted, so
        each tick looks at the keys in use, not at every key this process ever paced."""
        now = self._clock()
        for key in [k for k, s in self._keys.items() if s.forgettable(now)]:
            del self._keys[key]

    async def _tend_held(self, contended: set[str]) -> None:
        now = self._clock()
        renew: list[str] = []
        hand_back: list[str] = []
        for key, state in self._keys.items():
            if state.deadline is None:
                continue
            # Another process waits: hand on now if nothing is queued or in flight here, else
            # after one lease term (so processes sharing a busy key take turns).
            idle_now = not state.waiting and not state.window.busy
            turn_over = idle_now or now - state.taken_at >= self.lease_seconds
            if key in contended and not state.handing_off and turn_over:
                state.handing_off = True
                state.changed.set()
            if state.handing_off and not state.window.busy:
                hand_back.append(key)
            elif now >= state.renew_at:
                idle = not state.waiting and not state.window.busy and not state.active
                (hand_back if idle else renew).append(key)
        if hand_back:
            await self._hand_back(hand_back)
        if renew:
            await self._renew(renew)

    async def _renew(self, keys: list[str]) -> None:
        until, reading = await self._store.renew(keys)
        for key in keys:
            state = self._keys[key]
            if key in until and reading is not None:
                self._set_lease(state, reading.sent)
                state.active = False
            else:  # taken over after it expired: our slots stay counted in our window
                log.warning("rate limiter: lost the lease of %s (it expired)", key)
                self._drop_lease(state)

    def _took(self, state: _Key, taken: Taken) -> None:
        reading = taken.reading
        clock, now = self._store.clock_map, reading.received
        # An expired lease came with a pause of one window (the take wrote it).
        state.window.load(
            (clock.local_latest(t, now) for t in taken.grants),
            paused_until=clock.local_latest(taken.paused_until, now),
        )
        self._set_lease(state, reading.sent)
        state.taken_at = reading.sent
        state.active = False
        state.handing_off = False
        state.changed.set()

    def _set_lease(self, state: _Key, sent: float) -> None:
        # The database expires the lease ``lease_seconds`` after the statement ran, which was
        # after ``sent``: stopping at 5/6 of that keeps a stalled holder clear of a taker.
        state.deadline = sent + self.lease_seconds * 5 / 6
        state.renew_at = sent + self.lease_seconds * 2 / 3
        state.changed.set()

    def _drop_lease(self, state: _Key) -> None:
        state.deadline = None
        state.handing_off = False
        state.changed.set()

    async def _hand_back(self, keys: list[str]) -> None:
        now = self._clock()
        clock = self._store.clock_map  # a lease was taken, so a statement read the clock
        leases = []
        for key in keys:
            window = self._keys[key].window
            paused = window.paused_until
            leases.append(
                HandBack(
                    key,
                    # Local → database time, biased late: a handed-on slot end only moves later.
                    [clock.db_latest(t, now) for t in window.ends(now)],
                    clock.db_latest(paused, now) if paused > now else 0.0,
                )
            )
        await self._store.hand_back(leases)
        log.debug("rate limiter: handed back %s", ", ".join(keys))
        for key in keys:
            state = self._keys[key]
            if state.waiting:  # a turn handed on: let the process that asked take it first
                state.yield_until = now + 2 * self.poll_interval
            self._drop_lease(state)
