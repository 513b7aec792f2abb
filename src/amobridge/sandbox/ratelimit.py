"""amoCRM's request limits (§7): 7 requests/second, 429 over it, an account-wide 403 ban when the
429s keep coming.

Windows slide over the last second of sandbox time: a request is allowed while fewer than
``rate_limit_rps`` requests of the same key arrived in ``(now - 1 s, now]``. Rejected requests do not
count towards the window (amoCRM answered them without work) but do count as violations.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from amobridge.sandbox.clock import Clock
from amobridge.sandbox.config import SandboxConfig

WINDOW = 1.0


@dataclass
class Decision:
    allowed: bool
    banned_until: float | None = None
    reason: str = ""


@dataclass
class _AccountState:
    violations: deque[float] = field(default_factory=deque)
    banned_until: float | None = None


class RateLimiter:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._windows: dict[tuple[object, ...], deque[float]] = {}
        self._accounts: dict[int, _AccountState] = {}

    def reset(self) -> None:
        self._windows.clear()
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
        windows = [(self._window(key, now), config.rate_limit_rps)]
        if config.account_rps_cap is not None:
            windows.append((self._window(("account", account_id), now), config.account_rps_cap))
        if any(len(window) >= limit for window, limit in windows):
            return self._violation(config, account_id, now)
        for window, _ in windows:
            window.append(now)
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

    def _window(self, key: tuple[object, ...], now: float) -> deque[float]:
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = deque()
        edge = now - WINDOW
        while window and window[0] <= edge:
            window.popleft()
        return window
