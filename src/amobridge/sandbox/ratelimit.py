"""amoCRM's request limits: 7 requests/second, 429 over it, an account-wide 403 ban when the
429s keep coming.

amoCRM states the limit (https://www.amocrm.ru/developers/content/api/recommendations) but does
not say how it counts "7 per second", so the counting rule is a setting
(``rate_rule``), each rule one :class:`Meter` per key (integration and account, or client IP; and
the account-wide cap), all on sandbox time:

- ``sliding`` (default): at most ``N`` arrivals in any one-second interval — a request is allowed
  while fewer than ``N`` requests of its key arrived in ``(now - 1 s, now]``. The strictest: a
  client that never draws a 429 from it draws none from the others.
- ``fixed``: at most ``N`` per whole second of sandbox time (``[k, k + 1)``), so up to ``2N`` pass
  within a few milliseconds across a boundary.
- ``token_bucket``: a bucket of ``N`` tokens, refilled at ``N`` per second: a burst of ``N``, then
  one request every ``1/N`` s.

Refused requests take nothing (amoCRM answered them without work) but count as violations; the
``ban_after_violations``-th violation within ``ban_window`` bans the account, under every rule.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from amobridge.sandbox.clock import Clock
from amobridge.sandbox.config import RateRule, SandboxConfig

WINDOW = 1.0
CLOCK_RESOLUTION = 1e-6
"""Seconds of refill a bucket may fall short of a whole token by and still count it: sandbox
times are unix seconds in floats (about 2e-7 s apart at today's dates), so a request ``1/N`` s
after the last one may find a hair under one token."""


@dataclass
class Decision:
    allowed: bool
    banned_until: float | None = None
    reason: str = ""


class Meter(Protocol):
    """One key's count under one rule. ``admits`` brings the meter up to ``now`` and answers
    without taking anything; ``take`` counts one admitted request (at that same ``now``)."""

    rule: RateRule

    def admits(self, now: float, limit: int) -> bool: ...

    def take(self, now: float) -> None: ...


class SlidingWindow:
    """The arrival times of the requests admitted in the last second."""

    rule: RateRule = "sliding"

    def __init__(self) -> None:
        self._arrivals: deque[float] = deque()

    def admits(self, now: float, limit: int) -> bool:
        edge = now - WINDOW
        while self._arrivals and self._arrivals[0] <= edge:
            self._arrivals.popleft()
        return len(self._arrivals) < limit

    def take(self, now: float) -> None:
        self._arrivals.append(now)


class FixedWindow:
    """A count per whole second of sandbox time, reset when the second changes."""

    rule: RateRule = "fixed"

    def __init__(self) -> None:
        self._second: int | None = None
        self._count = 0

    def admits(self, now: float, limit: int) -> bool:
        second = math.floor(now)
        if second != self._second:
            self._second, self._count = second, 0
        return self._count < limit

    def take(self, now: float) -> None:
        self._count += 1


class TokenBucket:
    """``limit`` tokens at most, ``limit`` more each second; a new key starts full."""

    rule: RateRule = "token_bucket"

    def __init__(self) -> None:
        self._tokens: float | None = None
        self._at = 0.0

    def admits(self, now: float, limit: int) -> bool:
        if self._tokens is None:
            tokens = float(limit)
        else:
            tokens = min(float(limit), self._tokens + max(0.0, now - self._at) * limit)
        self._tokens, self._at = tokens, now
        return tokens + CLOCK_RESOLUTION * limit >= 1

    def take(self, now: float) -> None:
        assert self._tokens is not None, "admits() comes first"
        self._tokens = max(0.0, self._tokens - 1)


METERS: dict[RateRule, Callable[[], Meter]] = {
    "sliding": SlidingWindow,
    "fixed": FixedWindow,
    "token_bucket": TokenBucket,
}


@dataclass
class _AccountState:
    violations: deque[float] = field(default_factory=deque)
    banned_until: float | None = None


class RateLimiter:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._meters: dict[tuple[object, ...], Meter] = {}
        self._accounts: dict[int, _AccountState] = {}

    def reset(self) -> None:
        self._meters.clear()
        self._accounts.clear()

    def banned_until(self, account_id: int) -> float | None:
        state = self._accounts.get(account_id)
        if state is None or state.banned_until is None:
            return None
        if self._clock.now() >= state.banned_until:
            state.banned_until = None
            state.violations.clear()
            return None
        return state.banned_until

    def ban(self, account_id: int, seconds: float) -> float:
        state = self._accounts.setdefault(account_id, _AccountState())
        state.banned_until = self._clock.now() + seconds
        return state.banned_until

    def unban(self, account_id: int | None = None) -> None:
        targets = [account_id] if account_id is not None else list(self._accounts)
        for target in targets:
            state = self._accounts.get(target)
            if state is not None:
                state.banned_until = None
                state.violations.clear()

    def check(
        self, config: SandboxConfig, *, account_id: int, client_id: str, client_ip: str
    ) -> Decision:
        """Admit or refuse one authenticated API request (call only when it would be served)."""
        banned = self.banned_until(account_id)
        if banned is not None:
            return Decision(False, banned, "banned")
        if not config.rate_limit_enabled:
            return Decision(True)
        now = self._clock.now()
        if config.rate_scope == "ip":
            key: tuple[object, ...] = ("ip", client_ip)
        else:
            key = ("integration", client_id, account_id)
        meters = [(self._meter(config.rate_rule, key), config.rate_limit_rps)]
        if config.account_rps_cap is not None:
            account_key = ("account", account_id)
            meters.append((self._meter(config.rate_rule, account_key), config.account_rps_cap))
        # Every meter must admit before any takes: a refused request uses up no budget.
        if not all(meter.admits(now, limit) for meter, limit in meters):
            return self._violation(config, account_id, now)
        for meter, _ in meters:
            meter.take(now)
        return Decision(True)

    def force_violation(self, config: SandboxConfig, account_id: int) -> Decision:
        """Count a 429 that fault injection produced, exactly like a real one."""
        return self._violation(config, account_id, self._clock.now())

    def _violation(self, config: SandboxConfig, account_id: int, now: float) -> Decision:
        state = self._accounts.setdefault(account_id, _AccountState())
        state.violations.append(now)
        while state.violations and state.violations[0] <= now - config.ban_window:
            state.violations.popleft()
        if len(state.violations) >= config.ban_after_violations:
            state.banned_until = now + config.ban_seconds
            return Decision(False, state.banned_until, "banned")
        return Decision(False, None, "rate_limited")

    def _meter(self, rule: RateRule, key: tuple[object, ...]) -> Meter:
        """The key's meter under ``rule``; a rule changed on a running sandbox starts afresh."""
        meter = self._meters.get(key)
        if meter is None or meter.rule != rule:
            meter = self._meters[key] = METERS[rule]()
        return meter
