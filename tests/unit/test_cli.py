from __future__ import annotations

import json
import re
from datetime import UTC, datetime
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

    missing = runner.invoke(app, ["connections", "list"])
    assert missing.exit_code == 1, missing.output
    assert f"database: sqlite:///{database.resolve()}" in missing.stderr
    assert f"no database at {database.resolve()}" in missing.stderr
    assert "amobridge migrate" in missing.stderr
    assert "Traceback" not in missing.output
    assert not database.parent.exists()  # a read-only command creates no database

    assert runner.invoke(app, ["migrate"]).exit_code == 0
    empty = runner.invoke(app, ["connections", "list"])
    assert empty.exit_code == 0, empty.output
    assert "no connections" in empty.stdout
    assert f"database: sqlite:///{database.resolve()}" in empty.stderr
    assert json.loads(runner.invoke(app, ["connections", "list", "--json"]).stdout) == []

    async def connect() -> None:
        services = Services.build(load_settings())
        await services.start(workers=False)
        try:
            async with services.db.transaction() as session:
                for owner, refresh in (("owner-1", None), ("owner-2", "a-refresh-token")):
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
                await services.connect.import_tokens(
                    session,
                    "owner-3",
                    domain="owner-3.amocrm.ru",
                    access_token="a-token-of-owner-3",
                    refresh_token=None,
                    expires_in=3600,
                    client_id=None,
                    client_secret=None,
                    redirect_uri=None,
                )
            async with services.db.transaction() as session:
                await services.connect.disconnect(session, "owner-3", actor="test")
        finally:
            await services.stop()

    asyncio.run(connect())
    listed = runner.invoke(app, ["connections", "list"])
    assert listed.exit_code == 0, listed.output
    header, long_lived, oauth, disconnected = listed.stdout.strip().splitlines()
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
    when = r"\d{4}-\d\d-\d\d \d\d:\d\d UTC"
    assert long_lived.split()[:3] == ["owner-1", "owner-1.amocrm.ru", "active"]
    assert re.search(rf"active +{when} \(long-lived\) +{when} +—$", long_lived), long_lived
    assert oauth.split()[:3] == ["owner-2", "owner-2.amocrm.ru", "active"]
    assert re.search(rf"active +{when} +{when} +—$", oauth), oauth
    assert disconnected.split()[:4] == ["owner-3", "owner-3.amocrm.ru", "disconnected", "—"]
    assert "None" not in listed.stdout
    for secret in ("a-token-of", "a-refresh-token", "its-secret-value"):
        assert secret not in listed.output

    as_json = runner.invoke(app, ["connections", "list", "--json"])
    assert as_json.exit_code == 0, as_json.output
    rows = json.loads(as_json.stdout)
    assert [row["owner"] for row in rows] == ["owner-1", "owner-2", "owner-3"]
    assert rows[0]["domain"] == "owner-1.amocrm.ru"
    assert rows[0]["longLived"] is True
    assert rows[1]["longLived"] is False
    assert datetime.fromisoformat(rows[1]["expiresAt"]) > datetime.now(UTC)
    assert rows[2]["status"] == "disconnected"
    assert rows[2]["connected"] is False
    for secret in ("a-token-of", "a-refresh-token", "its-secret-value"):
        assert secret not in as_json.stdout

    one = runner.invoke(app, ["connections", "list", "--owner", "owner-2", "--json"])
    assert [row["owner"] for row in json.loads(one.stdout)] == ["owner-2"]
    unknown = runner.invoke(app, ["connections", "list", "--owner", "nobody"])
    assert unknown.exit_code == 1
    assert "no connection for owner 'nobody'" in unknown.stderr
    assert "Traceback" not in unknown.output


def test_connections_list_in_another_folder_says_there_is_no_database(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["connections", "list"])
    assert result.exit_code == 1, result.output
    expected = tmp_path.resolve() / "data" / "amobridge.db"
    assert f"database: sqlite:///{expected}" in result.stderr
    assert f"no database at {expected}" in result.stderr
    assert "run from the folder where the service runs" in result.stderr
    assert "AMOBRIDGE_DATABASE__URL" in result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "data").exists()
    assert "Traceback" not in result.output
