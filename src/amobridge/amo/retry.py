"""Bounded retries and the per-account ban breaker.

What is retried (decided in ``client.py`` with :func:`failure_was_sent`):

========================================  ==========================  ===========================
failure                                    ``retry="safe"``            ``retry="create"``
========================================  ==========================  ===========================
connect error / connect or pool timeout    retried                     retried (nothing was sent)
timeout, read error, dropped connection    retried                     AmoAmbiguousWrite
5xx                                        retried                     AmoAmbiguousWrite
429                                        retried (server hint)       retried (never processed)
401                                        one refresh, one retry      one refresh, one retry
400/422, 402, 403, 404                     raised at once              raised at once
403 ban                                    AmoBanned + breaker         AmoBanned + breaker
========================================  ==========================  ===========================

Waits are full-jitter exponential (``uniform(0, min(cap, base * 2**n))``) unless amoCRM gave a
hint (``Retry-After`` or the 429 body's ``retry_after``); a hint above ``max_retry_after`` is not
waited out: AmoRateLimited is raised and the caller reschedules. Retries stop at ``max_attempts``
or when the next wait would pass ``max_total_seconds``.

:func:`set_testing` turns every backoff wait into zero (stamina's switch); tests may instead pass
``sleep=`` to a policy to record waits.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

Sleep = Callable[[float], Awaitable[None]]

_testing = False


def set_testing(enabled: bool = True) -> None:
    """Make every backoff wait zero (tests). The rate limiter still paces requests."""
    global _testing  # a process-wide test switch, as stamina has
    _testing = enabled


def is_testing() -> bool:
    return _testing


@dataclass(frozen=True)
class RetryPolicy:
    """How failed requests are retried; see the module docstring for what is retried."""

    max_attempts: int = 5
    """Attempts in all, the first included (1: never retry)."""
    max_total_seconds: float = 60.0
    """No retry starts once attempts and waits would exceed this (queueing for the limiter excluded)."""
    base: float = 0.5
    """First backoff ceiling, seconds; doubles each retry."""
    cap: float = 30.0
    """Largest backoff, seconds."""
    jitter: bool = True
    """Full jitter (uniform 0..ceiling); False waits the ceiling itself."""
    max_retry_after: float = 60.0
    """Longest server-requested wait (429 hint) waited out; longer ones raise AmoRateLimited."""
    sleep: Sleep | None = field(default=None, compare=False)
    """How to wait (default ``asyncio.sleep``); tests pass a recorder or a no-op."""
    rng: Callable[[], float] = field(default=random.random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base < 0 or self.cap < 0 or self.max_total_seconds < 0:
            raise ValueError("base, cap and max_total_seconds must not be negative")

    def backoff(self, retry_number: int) -> float:
        """The wait before retry ``retry_number`` (1 for the first retry)."""
        ceiling = min(self.cap, self.base * 2.0 ** max(0, retry_number - 1))
        return ceiling * self.rng() if self.jitter else ceiling

    def next_wait(self, *, attempts: int, spent: float, hint: float | None = None) -> float | None:
        """The wait before the next attempt, or None when no retry is allowed: ``attempts`` made so
        far, ``spent`` seconds used by them and earlier waits, amoCRM's ``hint`` if any."""
        if attempts >= self.max_attempts:
            return None
        wait = hint if hint is not None else self.backoff(attempts)
        if spent + wait > self.max_total_seconds:
            return None
        return wait

    async def wait(self, seconds: float) -> None:
        if _testing or seconds <= 0:
            await asyncio.sleep(0)
            return
        await (self.sleep or asyncio.sleep)(seconds)


def failure_was_sent(exc: BaseException) -> bool:
    """Whether a transport failure may have happened after the request reached amoCRM.

    Only a failure to connect (or to get a pooled connection) proves nothing was sent; timeouts
    while writing or reading, read errors and dropped connections might come after amoCRM acted.
    """
    return not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


class BanBreaker:
    """Per-account circuit breaker for amoCRM's 403 ban.

    amoCRM answers every call with 403 until support lifts the block and says nothing about when,
    so a trip lasts ``ban_seconds`` (a guess, default 1 h) during which the client raises
    ``AmoBanned`` without touching the network. Share one breaker between clients of the same
    account; :meth:`reset` ends a trip early (e.g. after support lifted the block).
    """

    def __init__(
        self, ban_seconds: float = 3600.0, *, clock: Callable[[], float] = time.time
    ) -> None:
        if ban_seconds <= 0:
            raise ValueError("ban_seconds must be positive")
        self.ban_seconds = ban_seconds
        self._clock = clock
        self._until: dict[str, float] = {}

    def now(self) -> float:
        return self._clock()

    def retry_at_if_tripped(self) -> float:
        """When a ban detected now is assumed to end."""
        return self._clock() + self.ban_seconds

    def trip(self, account: str, retry_at: float) -> None:
        self._until[account] = max(retry_at, self._until.get(account, 0.0))

    def banned_until(self, account: str) -> float | None:
        until = self._until.get(account)
        if until is None:
            return None
        if self._clock() >= until:
            del self._until[account]
            return None
        return until

    def reset(self, account: str | None = None) -> None:
        if account is None:
            self._until.clear()
        else:
            self._until.pop(account, None)
