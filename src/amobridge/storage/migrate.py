"""Run Alembic migrations from code (``amobridge migrate``, the service at startup, tests)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

from amobridge.storage.db import normalize_url

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return config


def _ensure_wal(url: str) -> None:
    """Put a SQLite file in WAL mode before anything else connects (switching needs the file to
    itself; the service expects WAL so readers never wait for writers)."""
    parsed = make_url(normalize_url(url))
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return
    Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(parsed.database, timeout=30)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
    finally:
        connection.close()


def upgrade(url: str, revision: str = "head") -> None:
    """Blocking; call from sync code (the CLI). env.py runs its own event loop."""
    _ensure_wal(url)
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


async def upgrade_async(url: str, revision: str = "head") -> None:
    """From async code: migrations run in a worker thread with their own event loop."""
    await asyncio.to_thread(upgrade, url, revision)
