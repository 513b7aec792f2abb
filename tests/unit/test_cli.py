from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from amobridge import __version__
from amobridge.cli import app

runner = CliRunner()


def test_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "sandbox" in result.output
    assert "version" in result.output


def test_version() -> None:
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0
    assert result.output.strip() == __version__


def test_bad_settings_give_message_and_exit_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMOBRIDGE_SANDBOX__CONTROL_TOKEN", "changeme")
    result = runner.invoke(app, ["sandbox", "--port", "1"])
    assert result.exit_code == 2
    assert "AMOBRIDGE_SANDBOX__CONTROL_TOKEN" in result.output


def test_connections_list_has_a_header_and_names_its_database(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import asyncio

    from amobridge.services import Services
    from amobridge.settings import load_settings
    from amobridge.storage.crypto import generate_key

    database = tmp_path / "elsewhere" / "amobridge.db"
    monkeypatch.setenv("AMOBRIDGE_DATABASE__URL", f"sqlite:///{database}")
    monkeypatch.setenv("AMOBRIDGE_SECURITY__SECRET_KEYS", generate_key())
    monkeypatch.chdir(tmp_path)

    empty = runner.invoke(app, ["connections", "list"])
    assert empty.exit_code == 0, empty.output
    assert "no connections" in empty.stdout
    assert f"database: sqlite:///{database.resolve()}" in empty.stderr

    async def connect() -> None:
        services = Services.build(load_settings())
        await services.start(workers=False)
        try:
            async with services.db.transaction() as session:
                await services.connect.import_tokens(
                    session,
                    "owner-1",
                    domain="acme.amocrm.ru",
                    access_token="a-long-lived-token",
                    refresh_token=None,
                    expires_in=3600,
                    client_id=None,
                    client_secret=None,
                    redirect_uri=None,
                )
        finally:
            await services.stop()

    asyncio.run(connect())
    listed = runner.invoke(app, ["connections", "list"])
    assert listed.exit_code == 0, listed.output
    header, row = listed.stdout.strip().splitlines()
    assert header.split() == [
        "OWNER",
        "ACCOUNT",
        "STATUS",
        "TOKEN",
        "EXPIRES",
        "LAST",
        "REFRESH",
        "LAST",
        "ERROR",
    ]
    assert row.split()[:4] == ["owner-1", "acme.amocrm.ru", "active", "long-lived"]
    assert "None" not in listed.stdout
    assert "a-long-lived-token" not in listed.output
