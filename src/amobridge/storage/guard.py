"""Is the database still the file we opened, and can it take writes?

SQLite keeps the service's state in three files (``amobridge.db`` and its ``-wal`` and ``-shm``
companions). Two ways they fail under a running service, and what this module does about each:

- **They stop taking writes** (a read-only remount, ``chattr +i``, a permission change, a full
  disk). SQLite maps the ``-shm`` file into memory; on Linux, writing to that mapping once the
  file is immutable kills the process with SIGBUS — no exception, no log line. So before a unit of
  work touches the database, :meth:`SqliteFileGuard.problem` asks the kernel whether each file is
  still writable (``access(W_OK)``, which sees read-only mounts, immutable files and, for a
  non-root user, permissions) and the unit is refused with :class:`StorageUnavailable` (HTTP 503)
  instead. When the files take writes again, the next unit goes through: recovery needs no restart.
- **The file is deleted or replaced** (``rm``, a restore that moved another file in). Open
  connections would go on writing into the deleted file, and everything written would be gone at
  the next start. The guard remembers the file's identity (device and inode) and refuses every
  unit once the path no longer names that file. Moving the same file back clears it; anything else
  needs a restart, whose start-up check (``storage.identity``) tells whether the file now at the
  path is the same database.

The checks are a handful of ``stat``/``access`` calls, a few microseconds per unit of work. A file
that becomes read-only between the check and the write is still a (very narrow) window.

Errors the database driver raises for the same reasons (``disk I/O error``, ``attempt to write a
readonly database``, a PostgreSQL server gone or read-only) become :class:`StorageUnavailable` too,
and the connection pools are reopened once the storage answers again, so no connection opened
read-only while the files were write-protected lingers.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import exc as sa_exc

from amobridge.errors import ServiceError


class StorageUnavailable(ServiceError):
    """The database cannot be used right now (503): the reason says why and what to do."""

    status_code = 503
    code = "storage_unavailable"


class SqliteFileGuard:
    """The identity and writability of one SQLite database file and its companions."""

    def __init__(self, path: Path) -> None:
        self.path = path.absolute()
        self.folder = self.path.parent
        self._files = (
            self.path,
            self.path.with_name(self.path.name + "-wal"),
            self.path.with_name(self.path.name + "-shm"),
        )
        self.identity: tuple[int, int] | None = None

    def remember(self) -> None:
        """Take the file now at the path as the one this process uses (after migrations)."""
        try:
            found = os.stat(self.path)
        except OSError:
            return
        self.identity = (found.st_dev, found.st_ino)

    def problem(self) -> str | None:
        """Why a unit of work must not touch the database now, or ``None``."""
        try:
            found = os.stat(self.path)
        except FileNotFoundError:
            if self.identity is None:
                return None  # not created yet: the migrations create it
            return (
                f"the database file {self.path} is gone (deleted or moved) while the service "
                "ran; nothing more is written. Put the file back, or restore it from a backup "
                "and restart the service"
            )
        except OSError as exc:
            return f"the database file {self.path} cannot be read: {exc.strerror}"
        identity = (found.st_dev, found.st_ino)
        if self.identity is None:
            self.identity = identity
        elif identity != self.identity:
            return (
                f"the database file {self.path} was replaced by another file while the service "
                "ran; nothing more is written. Restart the service: its start-up check tells "
                "whether the new file is the same database"
            )
        unwritable = self.unwritable()
        if unwritable is not None:
            return (
                f"{unwritable} does not take writes (a read-only file system, an immutable file "
                "or its permissions); requests that need the database answer 503 until it is "
                "writable again, then the service recovers by itself"
            )
        return None

    def unwritable(self) -> Path | None:
        """The first of the database's files (or its folder) that does not take writes."""
        for file in self._files:
            if not os.access(file, os.W_OK) and os.path.exists(file):
                return file
        if not os.access(self.folder, os.W_OK):
            return self.folder
        return None


_READ_ONLY_UNIT = ("readonly database", "read-only transaction")


def is_storage_failure(error: BaseException, *, read_unit: bool = False) -> bool:
    """Whether a driver error means the storage failed (rather than a bug or bad data)."""
    if isinstance(
        error,
        sa_exc.IntegrityError | sa_exc.DataError | sa_exc.ProgrammingError,
    ):
        return False
    if not isinstance(error, sa_exc.DBAPIError):
        return False
    if error.connection_invalidated:
        return True
    message = str(error.orig).lower()
    if read_unit and any(part in message for part in _READ_ONLY_UNIT):
        return False  # a write attempted in a read unit: a bug, reported as such
    if "no such table" in message:
        return True  # the schema is gone: the file was emptied or swapped
    return (
        isinstance(
            error,
            sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.InternalError,
        )
        or type(error) is sa_exc.DatabaseError
    )


def failure_reason(error: BaseException) -> str:
    """The driver's own words, short, for a 503's ``detail`` (no SQL, no parameters)."""
    orig = getattr(error, "orig", None) or error
    text = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    return f"the database failed: {text[:200]}"
