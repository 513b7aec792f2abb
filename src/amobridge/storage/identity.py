"""Start only on the database this service has been using, and only if it takes writes.

A SQLite database that went missing would otherwise be recreated empty at the next start, and
every connection would be silently gone. So the database names itself: one row in
``storage_marker`` with a random ``instance_id``, written at the first start, and for SQLite the
same id in a file next to the database (``amobridge.db.instance``). At every start:

- :func:`preflight` (before migrations, which would create a missing file): the database file is
  missing although the ``.instance`` file says one was here → refuse; the file or its folder does
  not take writes → refuse.
- :func:`establish` (after migrations): the database has no marker row although the ``.instance``
  file names one (an empty database put in its place) → refuse; it names another database →
  refuse; otherwise the marker row and the ``.instance`` file are written if missing, which is also
  a first write that proves the database takes writes (PostgreSQL too).

Every refusal says what happened and the two ways on: restore the database, or delete the
``.instance`` file to start afresh on purpose. PostgreSQL has no file next to it, so there only the
write check applies.
"""

from __future__ import annotations

import os
from pathlib import Path

from amobridge.errors import ConfigurationError
from amobridge.storage.db import Database
from amobridge.storage.guard import StorageUnavailable
from amobridge.storage.marker import StorageMarkerRepository
from amobridge.storage.tables import StorageMarker, new_id

SUFFIX = ".instance"


class StorageRefused(ConfigurationError):
    """The service must not start on this database; the message says what to do."""


def instance_file(path: Path) -> Path:
    return path.with_name(path.name + SUFFIX)


def _recorded(path: Path) -> str | None:
    try:
        text = instance_file(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageRefused(f"cannot read {instance_file(path)}: {exc.strerror}") from None
    return text or None


def preflight(db: Database) -> None:
    """Before migrations: refuse a SQLite database that is gone or cannot take writes."""
    if db.path is None or db.guard is None:
        return
    recorded = _recorded(db.path)
    if not db.path.exists():
        if recorded is not None:
            raise StorageRefused(
                f"the database {db.path} is missing, but {instance_file(db.path)} says database "
                f"{recorded} was here: it was deleted or moved. Restore it from a backup (or "
                "point AMOBRIDGE_DATABASE__URL at it); to start afresh with an empty database on "
                f"purpose, delete {instance_file(db.path)}"
            )
        if not os.access(db.path.parent, os.W_OK):
            raise StorageRefused(
                f"cannot create the database in {db.path.parent}: the folder does not take "
                "writes. Make it writable or set AMOBRIDGE_DATABASE__URL to another path"
            )
        return
    unwritable = db.guard.unwritable()
    if unwritable is not None:
        raise StorageRefused(
            f"refusing to start: {unwritable} does not take writes (a read-only file system, an "
            "immutable file or its permissions). Make it writable (check the mount, `chattr -i`, "
            "the owner and mode) or set AMOBRIDGE_DATABASE__URL to a writable database"
        )


async def establish(db: Database) -> str:
    """After migrations: the database's instance id, checked against the ``.instance`` file
    (and both written at the first start). Raises :class:`StorageRefused`."""
    recorded = _recorded(db.path) if db.path is not None else None
    try:
        async with db.transaction() as session:
            markers = StorageMarkerRepository(session)
            marker = await markers.current()
            if marker is None and recorded is None:
                await markers.create(new_id())
                marker = await markers.current()
            await markers.touch()  # a write at every start: a read-only database is refused
    except StorageUnavailable as exc:
        raise StorageRefused(f"refusing to start: {exc.detail}") from exc
    if marker is None or (recorded is not None and recorded != marker.instance_id):
        raise StorageRefused(_mismatch(db, marker, recorded))
    if db.path is not None and recorded is None:
        _record(db.path, marker.instance_id)
    if db.guard is not None:
        db.guard.remember()
    return marker.instance_id


def _mismatch(db: Database, marker: StorageMarker | None, recorded: str | None) -> str:
    if db.path is None or recorded is None:
        return "the database has no identity row after start-up; start the service again"
    beside = instance_file(db.path)
    if marker is None:
        return (
            f"the database {db.path} is empty, but {beside} says database {recorded} was "
            "here: it was replaced or emptied. Restore it from a backup; to start afresh with "
            f"this empty database on purpose, delete {beside}"
        )
    return (
        f"the database {db.path} is database {marker.instance_id}, but {beside} says database "
        f"{recorded} was here. Put the right file back; if this one is meant to be used from "
        f"now on, delete {beside}"
    )


def _record(path: Path, instance_id: str) -> None:
    target = instance_file(path)
    scratch = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    scratch.write_text(
        f"{instance_id}\n",
        encoding="utf-8",
    )
    os.replace(scratch, target)


async def verify(url: str) -> str:
    """The whole start-up check on its own (the CLI runs it before serving, so a refusal is one
    clear message rather than a failed application start-up): preflight, migrations, identity."""
    from amobridge.storage.migrate import upgrade_async

    db = Database(url)
    try:
        preflight(db)
        await upgrade_async(url)
        return await establish(db)
    finally:
        await db.dispose()
