"""Sandbox time: every timestamp the sandbox issues or checks comes from one :class:`Clock`.

Real time, optionally scaled (``scale`` sandbox seconds per real second) and shifted by
:meth:`Clock.advance`, so a test can expire a 24 h token or run amoCRM's one-hour webhook retry
without waiting. A frozen clock stands still until advanced.
"""

from __future__ import annotations

import time


class Clock:
    def __init__(self, *, start: float | None = None, scale: float = 1.0, frozen: bool = False):
        if scale <= 0:
            raise ValueError("scale must be positive")
        self._scale = scale
        self._origin_real = time.monotonic()
        self._origin = time.time() if start is None else start
        self._offset = 0.0
        self._frozen_at: float | None = None
        if frozen:  # exactly ``start``: no real time has passed yet
            self._frozen_at = self._origin

    @property
    def scale(self) -> float:
        return self._scale

    @property
    def frozen(self) -> bool:
        return self._frozen_at is not None

    def now(self) -> float:
        """Sandbox time as unix seconds (float)."""
        if self._frozen_at is not None:
            return self._frozen_at + self._offset
        return self._origin + (time.monotonic() - self._origin_real) * self._scale + self._offset

    def now_int(self) -> int:
        """Sandbox time as whole unix seconds, the way amoCRM reports dates."""
        return int(self.now())

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("the sandbox clock only moves forward")
        self._offset += seconds
        return self.now()

    def freeze(self) -> None:
        if self._frozen_at is None:
            self._frozen_at = self.now() - self._offset

    def unfreeze(self) -> None:
        if self._frozen_at is not None:
            self._origin = self._frozen_at
            self._origin_real = time.monotonic()
            self._frozen_at = None

    def real_seconds(self, sandbox_seconds: float) -> float:
        """How long a real wait lasts for ``sandbox_seconds`` of sandbox time."""
        return sandbox_seconds / self._scale
