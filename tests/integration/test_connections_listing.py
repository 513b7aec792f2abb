"""``amobridge connections list`` reads a SQLite file with the standard library's ``sqlite3``
(read-only, no SQLAlchemy: the command is fast) and any other database through SQLAlchemy. The
two readings must agree, column for column, on the same database; and on PostgreSQL the command
names its database with the password masked."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from amobridge.cli import app
from amobridge.connect.listing import DatabaseNotReady, list_database, list_sqlite
from amobridge.services import Services
from amobridge.storage.location import shown_database, sqlite_file


async def seed(services: Services) -> None:
    async with services.db.transaction() as session:
        for owner, refresh in (("school", None), ("clinic", "a-refresh-token"), ("shop", None)):
            await services.connect.import_tokens(
                session,
                owner,
                domain=f"{owner}.amocrm.ru",
                access_token=f"a-token-of-{owner}",
                refresh_token=refresh,
                expires_in=3600,
                client_id="an-integration",
                client_secret="its-secret-value",
                redirect_uri="https://app.example.com/amocrm/callback",
            )
    async with services.db.transaction() as session:
        await services.connect.disconnect(session, "shop", actor="test")
        row = await services.connections(session).for_owner("clinic")
        assert row is not None
        await services.connections(session).record_error(row.id, "amoCRM answered 503\nretrying")


@pytest.fixture
async def seeded(database_url: str) -> str:
    from conftest import make_settings  # type: ignore[import-not-found]

    services = Services.build(make_settings(database_url))
    await services.start(workers=False)
    try:
        await seed(services)
    finally:
        await services.stop()
    return database_url


async def test_both_readings_agree(seeded: str) -> None:
    through_sqlalchemy = await list_database(seeded)
    assert [row.owner for row in through_sqlalchemy] == ["school", "clinic", "shop"]
    school, clinic, shop = through_sqlalchemy
    assert school.long_lived
    assert school.has_tokens
    assert school.expires_at is not None
    assert not clinic.long_lived
    assert clinic.last_error == "amoCRM answered 503\nretrying"
    assert shop.status == "disconnected"
    assert not shop.has_tokens
    assert all(row.expires_at is None or row.expires_at.tzinfo for row in through_sqlalchemy)
    path = sqlite_file(seeded)
    if path is not None:
        assert await asyncio.to_thread(list_sqlite, path) == through_sqlalchemy


async def test_an_unmigrated_database_is_named_not_a_traceback(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    with pytest.raises(DatabaseNotReady, match="amobridge migrate"):
        list_sqlite(empty)
    with pytest.raises(DatabaseNotReady, match="amobridge migrate"):
        await list_database(f"sqlite:///{empty}")


async def test_the_command_names_its_database_and_lists(
    seeded: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    env: dict[str, Any] = {"AMOBRIDGE_DATABASE__URL": seeded}
    result = await asyncio.to_thread(CliRunner().invoke, app, ["connections", "list"], env=env)
    assert result.exit_code == 0, result.output
    assert f"database: {shown_database(seeded)}" in result.stderr
    lines = result.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["OWNER", "school", "clinic", "shop"]
    assert "amoCRM answered 503 retrying" in lines[2]
    assert "a-token-of" not in result.output
    assert "its-secret-value" not in result.output
