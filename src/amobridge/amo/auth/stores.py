"""Where token pairs live: the :class:`TokenStore` protocol, :class:`InMemoryTokenStore` and
:class:`JsonFileTokenStore`.

A store's ``save`` must be durable when it returns (the pair may be the only valid one), and its
``lock(key)`` is held around a refresh, so a store shared between processes must lock across them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from amobridge.amo.auth.tokens import TokenSet
from amobridge.amo.errors import AmoTokenStoreError


@runtime_checkable
class TokenStore(Protocol):
    """Where token pairs live, by ``key`` (one per integration and account).

    ``lock(key)`` returns an async context manager held around a refresh: the in-memory store uses
    an ``asyncio.Lock``, the JSON file store adds an ``fcntl`` file lock, the service a database
    lease. ``save`` must be durable when it returns: the pair it got may be the only valid one.
    """

    async def load(self, key: str) -> TokenSet | None: ...

    async def save(self, key: str, tokens: TokenSet) -> None: ...

    def lock(self, key: str) -> contextlib.AbstractAsyncContextManager[Any]: ...


class InMemoryTokenStore:
    """Tokens in a dict: for tests and short-lived scripts (a restart forgets the pair)."""

    def __init__(self, initial: Mapping[str, TokenSet] | None = None) -> None:
        self._data: dict[str, TokenSet] = dict(initial or {})
        self._locks: dict[str, asyncio.Lock] = {}

    def __repr__(self) -> str:
        return f"InMemoryTokenStore(keys={sorted(self._data)!r})"

    async def load(self, key: str) -> TokenSet | None:
        return self._data.get(key)

    async def save(self, key: str, tokens: TokenSet) -> None:
        self._data[key] = tokens

    def lock(self, key: str) -> contextlib.AbstractAsyncContextManager[Any]:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock


class JsonFileTokenStore:
    """Tokens in one JSON file (``{key: pair}``), written atomically (temp file, fsync, rename) with
    mode 0600. ``lock(key)`` holds an ``asyncio.Lock`` and an ``fcntl.flock`` on a per-key lock file
    next to it, so processes sharing the file refresh one at a time. POSIX only.

    The file holds tokens in plain text: keep it out of version control and backups you share.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, lock_timeout: float = 60.0, poll: float = 0.01
    ) -> None:
        self.path = Path(path)
        self.lock_timeout = lock_timeout
        self._poll = poll
        self._locks: dict[str, asyncio.Lock] = {}

    def __repr__(self) -> str:
        return f"JsonFileTokenStore({str(self.path)!r})"

    async def load(self, key: str) -> TokenSet | None:
        data = await asyncio.to_thread(self._read)
        item = data.get(key)
        if not isinstance(item, dict):
            return None
        try:
            return TokenSet.from_dict(item)
        except (ValueError, TypeError):  # a damaged entry reads as "no tokens": connect again
            return None

    async def save(self, key: str, tokens: TokenSet) -> None:
        await asyncio.to_thread(self._write, key, tokens.to_dict())

    def lock(self, key: str) -> contextlib.AbstractAsyncContextManager[Any]:
        return self._key_lock(key)

    @contextlib.asynccontextmanager
    async def _key_lock(self, key: str) -> AsyncIterator[None]:
        import fcntl

        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        lock_path = self.path.with_name(f"{self.path.name}.{digest}.lock")
        async with lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                deadline = time.monotonic() + self.lock_timeout
                wait = self._poll
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            raise AmoTokenStoreError(
                                f"could not lock {lock_path} within {self.lock_timeout:g} s: "
                                "another process holds it; check for a stuck process"
                            ) from None
                        await asyncio.sleep(wait)  # another process refreshes: poll its lock
                        wait = min(wait * 2, 0.2)
                yield
            finally:
                os.close(fd)  # closing the descriptor releases the flock

    def _read(self) -> dict[str, Any]:
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        if not raw.strip():
            return {}
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise AmoTokenStoreError(f"{self.path} does not hold a JSON object of token pairs")
        return data

    def _write(self, key: str, item: dict[str, Any]) -> None:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        guard = os.open(
            self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600
        )
        try:
            fcntl.flock(guard, fcntl.LOCK_EX)  # short: read-modify-write of the file
            data = self._read()
            data[key] = item
            fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    json.dump(data, handle, indent=2, sort_keys=True)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.chmod(tmp, 0o600)
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        finally:
            os.close(guard)
