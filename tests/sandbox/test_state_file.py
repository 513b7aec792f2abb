"""The sandbox's state file: a sandbox started on the file a previous one saved is the same
world (accounts, integrations, CRM data, grants, ids), so a restart keeps connections working;
a damaged file stops startup with a message naming it."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from amobridge.sandbox import Clock, Sandbox, SandboxConfig, create_sandbox_app
from amobridge.sandbox.persist import StateFileError

REDIRECT_URI = "https://app.example/callback"
START = 1_750_000_000.0


def new_sandbox(path: Path) -> Sandbox:
    """What a restart does: a fresh process's sandbox on the same file (one frozen clock time,
    so nothing expires between the two)."""
    return Sandbox(
        SandboxConfig(rate_limit_enabled=False),
        clock=Clock(start=START, frozen=True),
        state_file=path,
    )


@asynccontextmanager
async def clients(box: Sandbox) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    app = create_sandbox_app(sandbox=box)
    transport = httpx.ASGITransport(app=app)
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8010") as control,
        httpx.AsyncClient(transport=transport, base_url="https://acme.amocrm.ru") as api,
    ):
        yield control, api
    await box.aclose()


async def populate(box: Sandbox) -> dict[str, Any]:
    """An account, an integration, a token pair and a lead, all made over HTTP (so saved by the
    app's own hook, not by the test)."""
    async with clients(box) as (control, api):
        account = (await control.post("/_sandbox/accounts", json={"subdomain": "acme"})).json()
        integration = (
            await control.post(
                "/_sandbox/integrations", json={"name": "Shop", "redirect_uri": REDIRECT_URI}
            )
        ).json()
        code = (
            await control.post(
                "/_sandbox/authorize",
                json={"client_id": integration["client_id"], "account_id": account["id"]},
            )
        ).json()["code"]
        pair = await api.post(
            "/oauth2/access_token",
            json={
                "client_id": integration["client_id"],
                "client_secret": integration["client_secret"],
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": REDIRECT_URI,
            },
        )
        assert pair.status_code == 200, pair.text
        tokens = pair.json()
        made = await api.post(
            "/api/v4/leads",
            json=[{"name": "Course for Anna", "price": 4900}],
            headers={"Authorization": f"Bearer {tokens['access_token']}"},
        )
        assert made.status_code == 200, made.text
        lead_id = made.json()["_embedded"]["leads"][0]["id"]
    return {"account": account, "integration": integration, "tokens": tokens, "lead_id": lead_id}


async def test_a_restarted_sandbox_is_the_same_world(tmp_path: Path) -> None:
    path = tmp_path / "sandbox-state.json"
    first = new_sandbox(path)
    world = await populate(first)

    again = new_sandbox(path)
    account = again.state.accounts[world["account"]["id"]]
    assert again.state.account_by_host("acme.amocrm.ru") is account
    integration = again.state.integrations[world["integration"]["client_id"]]
    assert integration.client_secret == world["integration"]["client_secret"]
    assert integration.installs == {account.id: True}
    lead = account.leads[world["lead_id"]]
    assert (lead.name, lead.price) == ("Course for Anna", 4900)
    assert lead.pipeline_id == account.main_pipeline().id
    assert account.contacts == {}
    assert account.companies == {}
    assert world["tokens"]["refresh_token"] in again.state.refresh_tokens
    # The id counters came along: a new lead does not reuse the saved one's id.
    assert again.state.ids.next("lead") > world["lead_id"]
    # The signing key too: a token from before the restart still decodes.
    claims = again.tokens.decode(world["tokens"]["access_token"])
    assert claims["account_id"] == account.id
    await again.aclose()


async def test_a_token_issued_before_a_restart_still_works(tmp_path: Path) -> None:
    path = tmp_path / "sandbox-state.json"
    world = await populate(new_sandbox(path))
    auth = {"Authorization": f"Bearer {world['tokens']['access_token']}"}

    async with clients(new_sandbox(path)) as (_control, api):
        lead = await api.get(f"/api/v4/leads/{world['lead_id']}", headers=auth)
        assert lead.status_code == 200, lead.text
        assert lead.json()["name"] == "Course for Anna"
        refreshed = await api.post(
            "/oauth2/access_token",
            json={
                "client_id": world["integration"]["client_id"],
                "client_secret": world["integration"]["client_secret"],
                "grant_type": "refresh_token",
                "refresh_token": world["tokens"]["refresh_token"],
                "redirect_uri": REDIRECT_URI,
            },
        )
        assert refreshed.status_code == 200, refreshed.text

    # The refresh spent the old refresh token: the next restart knows that too.
    spent = new_sandbox(path).state.refresh_tokens[world["tokens"]["refresh_token"]]
    assert spent.spent_at is not None


async def test_the_file_is_private_and_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "sandbox-state.json"
    await populate(new_sandbox(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["format"] == 1
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind


async def test_no_file_yet_is_an_empty_sandbox(tmp_path: Path) -> None:
    box = new_sandbox(tmp_path / "absent.json")
    assert box.state.accounts == {}
    assert not (tmp_path / "absent.json").exists()  # nothing changed, nothing written
    await box.aclose()


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text[: len(text) // 2],  # cut short
        lambda text: "[]",
        lambda text: text.replace('"format": 1', '"format": 99'),
        lambda text: text.replace('"subdomain": "acme"', '"subdomain": 7'),
    ],
    ids=["truncated", "not-an-object", "other-format", "wrong-type"],
)
async def test_a_damaged_file_stops_startup_naming_it(tmp_path: Path, damage: Any) -> None:
    path = tmp_path / "sandbox-state.json"
    await populate(new_sandbox(path))
    path.write_text(damage(path.read_text()))
    with pytest.raises(StateFileError) as caught:
        new_sandbox(path)
    message = str(caught.value)
    assert str(path) in message
    assert "delete it" in message


async def test_without_a_state_file_nothing_is_written(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    box = Sandbox(SandboxConfig(rate_limit_enabled=False), clock=Clock(frozen=True))
    await populate(box)
    assert box.state_file is None
    assert os.listdir(tmp_path) == []


def test_the_setting_reaches_the_sandbox(tmp_path: Path) -> None:
    from amobridge.sandbox.from_settings import sandbox_from_settings
    from amobridge.settings import SandboxSettings

    path = tmp_path / "state.json"
    assert sandbox_from_settings(SandboxSettings(state_file=str(path))).state_file == path
    assert sandbox_from_settings(SandboxSettings()).state_file is None


async def test_a_restarted_demo_keeps_its_integration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from amobridge.demo import demo_sandbox
    from amobridge.settings import load_settings

    monkeypatch.setenv("AMOBRIDGE_DATABASE__URL", f"sqlite:///{tmp_path}/amobridge.db")
    first, made = demo_sandbox(load_settings(), service_url="http://127.0.0.1:8000")
    await first.aclose()
    assert first.state_file == tmp_path / "sandbox-state.json"

    again, remade = demo_sandbox(load_settings(), service_url="http://127.0.0.1:8001")
    await again.aclose()
    assert remade.integration.client_id == made.integration.client_id
    assert remade.integration.client_secret == made.integration.client_secret
    assert remade.account.id == made.account.id
    assert len(again.state.integrations) == 1
    assert remade.integration.redirect_uri == "http://127.0.0.1:8001/amocrm/callback"
