"""``amobridge connections import-env`` turns a hand-made integration's single-account ``.env``
into a connection, so an existing setup migrates in one command.

Such setups name the same values differently — ``AMOCRM_SUBDOMAIN``, ``AMOCRM_ACCESS_TOKEN``,
``AMOCRM_REFRESH_TOKEN``, ``AMOCRM_CLIENT_ID``/``_SECRET``/``_REDIRECT_URI`` in one style,
``AMO_DOMAIN``, ``AMO_CLIENT_ID``, … in another; their guides ship example values
(``your-client-id``, ``abc123-def456...``) that people leave in place, and placeholder stage ids
(``12345678``) reach production. The tokens here are real ones the sandbox issued: the imported
connection must work and refresh (amoCRM's refresh rotates the pair).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from amobridge.cli import app
from amobridge.services import Services
from amobridge.settings import Settings
from amobridge.storage.crypto import generate_key
from sandbox_support import Connected, connect


@pytest.fixture
def key() -> str:
    return generate_key()


@pytest.fixture
async def school(control: httpx.AsyncClient, sandbox_app: Any) -> Connected:
    """An account whose integration the seed's developer set up by hand: a real token pair."""
    connected = await connect(control, sandbox_app, "onaiacademy")
    await connected.api.aclose()
    return connected


async def import_env(
    tmp_path: Path, database_url: str, key: str, content: str, owner: str = "school"
) -> Result:
    env_file = tmp_path / "backend.env"
    env_file.write_text(content, encoding="utf-8")
    env = {
        "AMOBRIDGE_ENVIRONMENT": "test",
        "AMOBRIDGE_DATABASE__URL": database_url,
        "AMOBRIDGE_SECURITY__SECRET_KEYS": key,
    }
    # The command runs its own event loop (asyncio.run): give it a thread of its own.
    return await asyncio.to_thread(
        CliRunner().invoke,
        app,
        ["connections", "import-env", str(env_file), "--owner", owner],
        env=env,
    )


def services_for(database_url: str, key: str, sandbox_app: Any) -> Services:
    settings = Settings(
        environment="test",
        database={"url": database_url},
        security={"secret_keys": [key]},
        server={"run_workers": False},
    )
    return Services.build(settings, amo_transport=httpx.ASGITransport(app=sandbox_app))


def seed_002_env(school: Connected, **over: str) -> str:
    values = {
        "AMOCRM_SUBDOMAIN": "onaiacademy",
        "AMOCRM_ACCESS_TOKEN": school.tokens["access_token"],
        "AMOCRM_PIPELINE_ID": "10350882",
        "AMOCRM_CLIENT_ID": school.integration["client_id"],
        "AMOCRM_CLIENT_SECRET": school.integration["client_secret"],
        "AMOCRM_REFRESH_TOKEN": school.tokens["refresh_token"],
        "AMOCRM_REDIRECT_URI": school.integration["redirect_uri"],
        **over,
    }
    return "# Базовые (ОБЯЗАТЕЛЬНО)\n" + "".join(f"{k}={v}\n" for k, v in values.items())


async def test_seed_002_env_becomes_a_working_refreshing_connection(
    school: Connected,
    control: httpx.AsyncClient,
    sandbox_app: Any,
    database_url: str,
    key: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # no developer .env
    content = seed_002_env(school) + "AMOCRM_STAGE_LESSON_1=12345678  # ⚠️ НЕ ЗАГЛУШКА!\n"
    result = await import_env(tmp_path, database_url, key, content)
    assert result.exit_code == 0, result.output
    assert "imported onaiacademy.amocrm.ru for owner 'school'" in result.stdout
    assert "OAuth tokens (refreshed automatically), status active" in result.stdout
    # The placeholder stage id is pointed out, not silently carried on.
    assert "warning: AMOCRM_STAGE_LESSON_1=12345678 is a placeholder id" in result.stderr
    assert school.tokens["access_token"] not in result.output
    assert school.tokens["refresh_token"] not in result.output

    services = services_for(database_url, key, sandbox_app)
    try:
        async with services.db.transaction() as session:
            row = await services.connections(session).for_owner("school")
        assert row is not None
        assert (row.host, row.account_id, row.long_lived) == (
            school.host,
            school.account_id,
            False,
        )
        client = await services.clients.client(row)
        assert (await client.account.get()).id == school.account_id
        # The pair works; once amoCRM expires it, the imported refresh token renews it.
        await control.post("/_sandbox/tokens/expire", json={"account_id": school.account_id})
        assert (await client.account.get()).id == school.account_id
        async with services.db.transaction() as session:
            row = await services.connections(session).for_owner("school")
            assert row is not None
            tokens = services.tokens_of(row)
        assert tokens is not None
        assert tokens.refresh_token != school.tokens["refresh_token"]
        refreshes = [
            r
            for r in (
                await control.get("/_sandbox/requests", params={"path_prefix": "/oauth2"})
            ).json()
            if r["grant_type"] == "refresh_token"
        ]
        assert [r["status"] for r in refreshes] == [200]
    finally:
        await services.stop()


async def test_seed_001_names_are_understood(
    school: Connected,
    sandbox_app: Any,
    database_url: str,
    key: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    content = (
        f"AMO_DOMAIN={school.host}\n"
        f"AMO_CLIENT_ID={school.integration['client_id']}\n"
        f"AMO_CLIENT_SECRET={school.integration['client_secret']}\n"
        f"AMO_REDIRECT_URI={school.integration['redirect_uri']}\n"
        f"AMO_ACCESS_TOKEN={school.tokens['access_token']}\n"
        f"AMO_REFRESH_TOKEN={school.tokens['refresh_token']}\n"
        "AMO_API_DOMAIN=api-b.amocrm.ru\n"
    )
    result = await import_env(tmp_path, database_url, key, content, owner="clinic")
    assert result.exit_code == 0, result.output
    services = services_for(database_url, key, sandbox_app)
    try:
        async with services.db.transaction() as session:
            row = await services.connections(session).for_owner("clinic")
        assert row is not None
        client = await services.clients.client(row)
        assert (await client.account.get()).id == school.account_id
    finally:
        await services.stop()


async def test_long_lived_token_env(
    school: Connected,
    control: httpx.AsyncClient,
    sandbox_app: Any,
    database_url: str,
    key: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The minimal setup: a subdomain and a long-lived token, nothing to refresh."""
    monkeypatch.chdir(tmp_path)
    token = (
        await control.post(
            "/_sandbox/long-lived-tokens",
            json={"client_id": school.integration["client_id"], "account_id": school.account_id},
        )
    ).json()["access_token"]
    content = f"AMOCRM_SUBDOMAIN=onaiacademy\nAMOCRM_ACCESS_TOKEN={token}\n"
    result = await import_env(tmp_path, database_url, key, content, owner="solo")
    assert result.exit_code == 0, result.output
    assert "long-lived token" in result.stdout
    assert token not in result.output
    services = services_for(database_url, key, sandbox_app)
    try:
        async with services.db.transaction() as session:
            row = await services.connections(session).for_owner("solo")
        assert row is not None
        assert row.long_lived is True
        assert row.refresh_token_enc is None
        client = await services.clients.client(row)
        assert (await client.account.get()).id == school.account_id
    finally:
        await services.stop()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("AMOCRM_CLIENT_ID", "abc123-def456..."),  # a guide's example
        ("AMOCRM_CLIENT_ID", "your-client-id"),  # another guide's example
        ("AMOCRM_CLIENT_SECRET", "SuperSecret..."),
        ("AMOCRM_REFRESH_TOKEN", "def50200a1b2c3..."),
        ("AMOCRM_SUBDOMAIN", "yoursubdomain"),
    ],
)
async def test_placeholders_are_refused_with_exit_2(
    name: str,
    value: str,
    school: Connected,
    sandbox_app: Any,
    database_url: str,
    key: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    result = await import_env(tmp_path, database_url, key, seed_002_env(school, **{name: value}))
    assert result.exit_code == 2, result.output
    assert f"{name} " in result.stderr
    assert "put the real value there" in result.stderr
    assert school.tokens["access_token"] not in result.output  # the real values stay unsaid
    assert school.integration["client_secret"] not in result.output
    services = services_for(database_url, key, sandbox_app)
    try:
        async with services.db.transaction() as session:
            assert await services.connections(session).all() == []
    finally:
        await services.stop()
