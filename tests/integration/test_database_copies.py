"""The ``database_url`` fixture's contract (database_support.py): every test gets a database of
its own, migrated to head, and what one test writes no other test (nor the template) sees."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import func, select, text

from amobridge.storage import migrate
from amobridge.storage.db import Database
from amobridge.storage.tables import Connection
from database_support import DatabaseTemplates, fresh_database

HEAD = ScriptDirectory.from_config(migrate.alembic_config("sqlite://")).get_current_head()


async def revision_and_connections(url: str) -> tuple[str, int]:
    db = Database(url)
    try:
        async with db.transaction() as session:
            revision = (
                await session.execute(text("SELECT version_num FROM alembic_version"))
            ).scalar_one()
            count = await session.scalar(select(func.count()).select_from(Connection))
    finally:
        await db.dispose()
    return revision, int(count or 0)


async def add_connection(url: str, owner: str) -> None:
    db = Database(url)
    try:
        async with db.transaction() as session:
            session.add(Connection(owner=owner, host="acme.amocrm.ru"))
    finally:
        await db.dispose()


@pytest.fixture
def second_copy(request: pytest.FixtureRequest, database_url: str, tmp_path: Path) -> Iterator[str]:
    """Another database of the same kind, as the next test would get it."""
    kind = "sqlite" if database_url.startswith("sqlite") else "postgres"
    with fresh_database(request, kind, tmp_path / "next-test") as url:
        yield url


async def test_each_copy_is_migrated_to_head_and_isolated(
    database_url: str, second_copy: str
) -> None:
    assert HEAD is not None
    assert database_url != second_copy
    assert await revision_and_connections(database_url) == (HEAD, 0)
    await add_connection(database_url, "only-here")
    assert await revision_and_connections(database_url) == (HEAD, 1)
    assert await revision_and_connections(second_copy) == (HEAD, 0)


async def test_sqlite_copy_needs_only_the_main_file_and_leaves_the_template_alone(
    database_templates: DatabaseTemplates, tmp_path: Path
) -> None:
    """The template is the main file alone (no WAL/SHM to copy along); its copy is still in WAL
    mode, whole, and what is written into it does not reach the template."""
    url = database_templates.sqlite_copy(tmp_path / "copy.db")
    template = database_templates.directory / "template.db"
    assert sorted(p.name for p in database_templates.directory.iterdir()) == ["template.db"]
    before = hashlib.sha256(template.read_bytes()).hexdigest()
    await add_connection(url, "written-into-the-copy")
    connection = sqlite3.connect(url.removeprefix("sqlite:///"))
    try:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        connection.close()
    assert hashlib.sha256(template.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in database_templates.directory.iterdir()) == ["template.db"]
