"""Conformance: the webhook subscription API, ``/api/v4/webhooks``
(https://www.amocrm.ru/developers/content/crm_platform/webhooks-api)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from amobridge.sandbox import Sandbox
from amobridge.sandbox.webhooks import WEBHOOK_SETTINGS


@dataclass
class Api:
    account: dict[str, Any]
    integration: dict[str, Any]
    client: httpx.AsyncClient


async def open_account(control: httpx.AsyncClient, app: Any, subdomain: str = "acme") -> Api:
    """An account, an integration installed in it and a long-lived token of its admin."""
    account = (await control.post("/_sandbox/accounts", json={"subdomain": subdomain})).json()
    integration = (
        await control.post(
            "/_sandbox/integrations",
            json={"name": "hooks", "redirect_uri": "https://app.example/callback"},
        )
    ).json()
    token = (
        await control.post(
            "/_sandbox/long-lived-tokens",
            json={"client_id": integration["client_id"], "account_id": account["id"]},
        )
    ).json()["access_token"]
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url=f"https://{account['host']}",
        headers={"Authorization": f"Bearer {token}"},
    )
    return Api(account, integration, client)


@pytest.fixture
async def api(control: httpx.AsyncClient, sandbox_app: Any) -> AsyncIterator[Api]:
    opened = await open_account(control, sandbox_app)
    yield opened
    await opened.client.aclose()


def token_for_user(sandbox: Sandbox, api: Api, user_id: int) -> str:
    """An access token granted by ``user_id`` (consent given by that user, code exchanged)."""
    integration = sandbox.state.integrations[api.integration["client_id"]]
    account = sandbox.state.accounts[api.account["id"]]
    code = sandbox.tokens.issue_code(integration, account, user_id)
    pair = sandbox.tokens.exchange_code(
        client_id=integration.client_id,
        client_secret=integration.client_secret,
        code=code.code,
        redirect_uri=integration.redirect_uri,
        host_account=account,
    )
    return pair.access.token


HOOK = "https://hooks.example/amo"


async def test_subscribe_answers_201_with_the_object(api: Api) -> None:
    """POST {destination, settings, sort} → 201 + the subscription object."""
    reply = await api.client.post(
        "/api/v4/webhooks",
        json={"destination": HOOK, "settings": ["add_lead", "status_lead"], "sort": 10},
    )
    assert reply.status_code == 201, reply.text
    assert reply.headers["content-type"].startswith("application/hal+json")
    body = reply.json()
    assert body["destination"] == HOOK
    assert body["settings"] == ["add_lead", "status_lead"]
    assert body["sort"] == 10
    assert body["disabled"] is False
    assert body["account_id"] == api.account["id"]
    assert body["created_by"] == api.account["admin_user_id"]
    assert isinstance(body["id"], int)
    assert isinstance(body["created_at"], int)
    assert body["updated_at"] == body["created_at"]


async def test_list_shows_subscriptions_and_204_when_none(api: Api) -> None:
    """GET lists `_embedded.webhooks[{id, destination, sort, disabled, settings, …}]`;
    an empty list is 204."""
    empty = await api.client.get("/api/v4/webhooks")
    assert empty.status_code == 204
    assert empty.content == b""
    await api.client.post("/api/v4/webhooks", json={"destination": HOOK, "settings": ["add_lead"]})
    await api.client.post(
        "/api/v4/webhooks",
        json={"destination": "https://other.example/h", "settings": ["update_contact"]},
    )
    reply = await api.client.get("/api/v4/webhooks")
    assert reply.status_code == 200
    hooks = reply.json()["_embedded"]["webhooks"]
    assert {h["destination"] for h in hooks} == {HOOK, "https://other.example/h"}
    assert set(hooks[0]) == {
        "id",
        "destination",
        "created_at",
        "updated_at",
        "account_id",
        "created_by",
        "sort",
        "disabled",
        "settings",
    }


async def test_filter_by_destination(api: Api) -> None:
    """GET ?filter[destination]=… narrows the list to that destination."""
    for dest in (HOOK, "https://other.example/h"):
        await api.client.post(
            "/api/v4/webhooks", json={"destination": dest, "settings": ["add_lead"]}
        )
    reply = await api.client.get("/api/v4/webhooks", params={"filter[destination]": HOOK})
    assert [h["destination"] for h in reply.json()["_embedded"]["webhooks"]] == [HOOK]
    missing = await api.client.get(
        "/api/v4/webhooks", params={"filter[destination]": "https://nope.example/"}
    )
    assert missing.status_code == 204


async def test_same_destination_updates_and_reenables(api: Api, sandbox: Sandbox) -> None:
    """POST with a known destination updates it; that is also how a disabled hook is
    re-enabled."""
    first = (
        await api.client.post(
            "/api/v4/webhooks", json={"destination": HOOK, "settings": ["add_lead"]}
        )
    ).json()
    sandbox.state.accounts[api.account["id"]].webhooks[HOOK].disabled = True
    second = await api.client.post(
        "/api/v4/webhooks", json={"destination": HOOK, "settings": ["update_lead"], "sort": 3}
    )
    assert second.status_code == 201
    body = second.json()
    assert body["id"] == first["id"]
    assert body["settings"] == ["update_lead"]
    assert body["sort"] == 3
    assert body["disabled"] is False
    listed = (await api.client.get("/api/v4/webhooks")).json()["_embedded"]["webhooks"]
    assert len(listed) == 1


@pytest.mark.parametrize(
    ("payload", "path"),
    [
        ({"destination": HOOK, "settings": ["add_deal"]}, "settings.0"),
        ({"destination": HOOK, "settings": ["add_lead", 5]}, "settings.1"),
        ({"destination": HOOK, "settings": []}, "settings"),
        ({"destination": HOOK}, "settings"),
        ({"destination": "ftp://hooks.example/", "settings": ["add_lead"]}, "destination"),
        ({"destination": "not a url", "settings": ["add_lead"]}, "destination"),
        ({"settings": ["add_lead"]}, "destination"),
        ({"destination": HOOK, "settings": ["add_lead"], "sort": "x"}, "sort"),
    ],
)
async def test_bad_subscription_is_a_validation_error(
    api: Api, payload: dict[str, Any], path: str
) -> None:
    """Unknown settings and other bad input are amoCRM's 400 with `validation-errors`."""
    reply = await api.client.post("/api/v4/webhooks", json=payload)
    assert reply.status_code == 400
    assert reply.headers["content-type"].startswith("application/problem+json")
    body = reply.json()
    assert body["title"] == "Bad Request"
    assert body["type"] == "https://httpstatus.es/400"
    errors = body["validation-errors"][0]["errors"]
    assert path in {e["path"] for e in errors}
    assert (await api.client.get("/api/v4/webhooks")).status_code == 204


@pytest.mark.parametrize("raw", [b"", b"[1, 2]", b"{not json"])
async def test_bad_body_is_a_400(api: Api, raw: bytes) -> None:
    """An empty or malformed body is a 400, never a 500."""
    reply = await api.client.post(
        "/api/v4/webhooks", content=raw, headers={"Content-Type": "application/json"}
    )
    assert reply.status_code == 400
    assert reply.json()["status"] == 400


async def test_every_documented_setting_is_accepted(api: Api) -> None:
    """add_/update_/delete_/responsible_ × 5 entities, restore_ × 3, note_ × 4, status_lead,
    add_talk, update_talk, add_chat_template_review."""
    expected = {
        f"{a}_{e}"
        for a in ("add", "update", "delete", "responsible")
        for e in ("lead", "contact", "company", "customer", "task")
    }
    expected |= {f"restore_{e}" for e in ("lead", "contact", "company")}
    expected |= {f"note_{e}" for e in ("lead", "contact", "company", "customer")}
    expected |= {"status_lead", "add_talk", "update_talk", "add_chat_template_review"}
    assert expected == WEBHOOK_SETTINGS
    reply = await api.client.post(
        "/api/v4/webhooks", json={"destination": HOOK, "settings": sorted(expected)}
    )
    assert reply.status_code == 201
    assert set(reply.json()["settings"]) == expected


async def test_at_most_100_subscriptions(api: Api, sandbox: Sandbox) -> None:
    """≤100 hooks per account; the 101st is refused, updating an existing one is not."""
    assert sandbox.config.max_webhooks_per_account == 100
    for i in range(100):
        reply = await api.client.post(
            "/api/v4/webhooks",
            json={"destination": f"https://hooks.example/{i}", "settings": ["add_lead"]},
        )
        assert reply.status_code == 201
    over = await api.client.post(
        "/api/v4/webhooks",
        json={"destination": "https://hooks.example/100", "settings": ["add_lead"]},
    )
    assert over.status_code == 400
    assert over.json()["type"] == "https://httpstatus.es/400"
    update = await api.client.post(
        "/api/v4/webhooks",
        json={"destination": "https://hooks.example/5", "settings": ["add_contact"]},
    )
    assert update.status_code == 201
    removed = await api.client.request(
        "DELETE", "/api/v4/webhooks", json={"destination": "https://hooks.example/0"}
    )
    assert removed.status_code == 204
    again = await api.client.post(
        "/api/v4/webhooks",
        json={"destination": "https://hooks.example/100", "settings": ["add_lead"]},
    )
    assert again.status_code == 201


async def test_limit_follows_config(api: Api, control: httpx.AsyncClient) -> None:
    """The limit of 100 hooks per account is `max_webhooks_per_account` in the runtime config."""
    await control.patch("/_sandbox/config", json={"max_webhooks_per_account": 1})
    ok = await api.client.post(
        "/api/v4/webhooks", json={"destination": HOOK, "settings": ["add_lead"]}
    )
    assert ok.status_code == 201
    over = await api.client.post(
        "/api/v4/webhooks", json={"destination": HOOK + "/2", "settings": ["add_lead"]}
    )
    assert over.status_code == 400


async def test_unsubscribe(api: Api) -> None:
    """DELETE with body {destination} → 204; an unknown destination → 404."""
    await api.client.post("/api/v4/webhooks", json={"destination": HOOK, "settings": ["add_lead"]})
    gone = await api.client.request("DELETE", "/api/v4/webhooks", json={"destination": HOOK})
    assert gone.status_code == 204
    assert (await api.client.get("/api/v4/webhooks")).status_code == 204
    unknown = await api.client.request("DELETE", "/api/v4/webhooks", json={"destination": HOOK})
    assert unknown.status_code == 404
    assert unknown.json()["status"] == 404
    missing = await api.client.request("DELETE", "/api/v4/webhooks", json={})
    assert missing.status_code == 400


async def test_admin_only(
    api: Api, sandbox: Sandbox, control: httpx.AsyncClient, sandbox_app: Any
) -> None:
    """The webhook API is for admins only; another user gets 403 (no rights)."""
    await api.client.post("/api/v4/webhooks", json={"destination": HOOK, "settings": ["add_lead"]})
    user = (
        await control.post(
            f"/_sandbox/accounts/{api.account['id']}/users", json={"name": "Менеджер"}
        )
    ).json()
    token = token_for_user(sandbox, api, user["id"])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=sandbox_app),
        base_url=f"https://{api.account['host']}",
        headers={"Authorization": f"Bearer {token}"},
    ) as manager:
        for method, body in (
            ("GET", None),
            ("POST", {"destination": HOOK + "/m", "settings": ["add_lead"]}),
            ("DELETE", {"destination": HOOK}),
        ):
            reply = await manager.request(method, "/api/v4/webhooks", json=body)
            assert reply.status_code == 403, method
            assert reply.json()["status"] == 403
    hooks = (await api.client.get("/api/v4/webhooks")).json()["_embedded"]["webhooks"]
    assert [h["destination"] for h in hooks] == [HOOK]


async def test_needs_a_token(api: Api, sandbox_app: Any) -> None:
    """No or a bad Bearer → 401."""
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=sandbox_app), base_url=f"https://{api.account['host']}"
    ) as anonymous:
        assert (await anonymous.get("/api/v4/webhooks")).status_code == 401
        bad = await anonymous.get("/api/v4/webhooks", headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401


async def test_accounts_are_separate(
    api: Api, control: httpx.AsyncClient, sandbox_app: Any
) -> None:
    """Subscriptions belong to one account: another account's list stays empty."""
    await api.client.post("/api/v4/webhooks", json={"destination": HOOK, "settings": ["add_lead"]})
    other = await open_account(control, sandbox_app, "globex")
    try:
        assert (await other.client.get("/api/v4/webhooks")).status_code == 204
    finally:
        await other.client.aclose()


async def test_control_lists_and_enables(
    api: Api, sandbox: Sandbox, control: httpx.AsyncClient
) -> None:
    """An admin re-enables a disabled hook by hand; the control API does it for tests."""
    await api.client.post("/api/v4/webhooks", json={"destination": HOOK, "settings": ["add_lead"]})
    sandbox.state.accounts[api.account["id"]].webhooks[HOOK].disabled = True
    listed = (await control.get(f"/_sandbox/webhooks/{api.account['id']}")).json()
    assert listed[0]["disabled"] is True
    enabled = await control.post(
        f"/_sandbox/webhooks/{api.account['id']}/enable", json={"destination": HOOK}
    )
    assert enabled.status_code == 200
    assert enabled.json()["disabled"] is False
    hooks = (await api.client.get("/api/v4/webhooks")).json()["_embedded"]["webhooks"]
    assert hooks[0]["disabled"] is False
    unknown = await control.post(
        f"/_sandbox/webhooks/{api.account['id']}/enable", json={"destination": "https://x.example/"}
    )
    assert unknown.status_code == 404
    no_account = await control.post("/_sandbox/webhooks/1/enable", json={"destination": HOOK})
    assert no_account.status_code == 404
