"""The control API under ``/_sandbox/`` (docs/sandbox.md "Control API"): set-up, clock, logs,
config. Account shapes follow amoCRM's (every pipeline has unsorted, 142 and 143)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from amobridge.sandbox import Clock, Sandbox, SandboxConfig, create_sandbox_app

SANDBOX_URL = "http://sandbox.test"


@pytest.fixture
async def sandbox(
    sandbox_config: SandboxConfig, signing_key: rsa.RSAPrivateKey
) -> AsyncIterator[Sandbox]:
    box = Sandbox(
        sandbox_config, clock=Clock(start=1_700_000_000, frozen=True), signing_key=signing_key
    )
    yield box
    await box.aclose()


async def new_account(control: httpx.AsyncClient, subdomain: str = "acme", **extra: Any) -> Any:
    reply = await control.post("/_sandbox/accounts", json={"subdomain": subdomain, **extra})
    assert reply.status_code == 201, reply.text
    return reply.json()


async def api_client(
    control: httpx.AsyncClient, app: Any, account: dict[str, Any]
) -> tuple[str, httpx.AsyncClient]:
    client_id = (
        await control.post(
            "/_sandbox/integrations", json={"name": "c", "redirect_uri": "https://app.example/cb"}
        )
    ).json()["client_id"]
    token = (
        await control.post(
            "/_sandbox/long-lived-tokens",
            json={"client_id": client_id, "account_id": account["id"]},
        )
    ).json()["access_token"]
    return client_id, httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url=f"https://{account['host']}",
        headers={"Authorization": f"Bearer {token}"},
    )


# --- accounts ----------------------------------------------------------------------------------


async def test_health(control: httpx.AsyncClient) -> None:
    reply = await control.get("/_sandbox/health")
    assert reply.status_code == 200
    assert reply.json() == {"status": "ok", "accounts": 0, "integrations": 0, "now": 1_700_000_000}


async def test_account_has_a_default_pipeline_and_an_admin(control: httpx.AsyncClient) -> None:
    """The main pipeline has "unsorted" (type 1), its stages, then 142 (won) and 143 (lost)."""
    account = await new_account(control, name="ACME", admin_name="Анна")
    assert account["subdomain"] == "acme"
    assert account["base_domain"] == "amocrm.ru"
    assert account["host"] == "acme.amocrm.ru"
    assert account["name"] == "ACME"
    assert account["banned_until"] is None
    [admin] = account["users"]
    assert admin == {
        "id": account["admin_user_id"],
        "name": "Анна",
        "email": admin["email"],
        "is_admin": True,
    }
    [pipeline] = account["pipelines"]
    assert pipeline["is_main"] is True
    statuses = pipeline["statuses"]
    assert statuses[0]["type"] == 1
    assert statuses[0]["name"] == "Неразобранное"
    assert [s["id"] for s in statuses[-2:]] == [142, 143]
    assert len(statuses) == 7
    assert all(s["type"] == 0 for s in statuses[1:])
    assert [s["sort"] for s in statuses] == sorted(s["sort"] for s in statuses)


async def test_kommo_account(control: httpx.AsyncClient) -> None:
    account = await new_account(control, "kommoacc", base_domain="kommo.com")
    assert account["host"] == "kommoacc.kommo.com"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"subdomain": "bad sub"}, 422),
        ({"subdomain": "ёлка"}, 422),
        ({"subdomain": "x" * 64}, 422),
        ({"subdomain": "ok", "base_domain": "example.com"}, 422),
        ({"subdomain": "ok", "colour": "red"}, 422),
        ({"subdomain": 5}, 422),
        ({}, 422),
    ],
)
async def test_bad_account_is_refused(
    control: httpx.AsyncClient, body: dict[str, Any], status: int
) -> None:
    reply = await control.post("/_sandbox/accounts", json=body)
    assert reply.status_code == status
    assert reply.json()["detail"]


async def test_duplicate_subdomain_is_409(control: httpx.AsyncClient) -> None:
    await new_account(control)
    for subdomain in ("acme", "ACME"):
        reply = await control.post("/_sandbox/accounts", json={"subdomain": subdomain})
        assert reply.status_code == 409
    assert len((await control.get("/_sandbox/accounts")).json()) == 1


async def test_show_and_list_accounts(control: httpx.AsyncClient) -> None:
    first = await new_account(control)
    second = await new_account(control, "globex")
    listed = (await control.get("/_sandbox/accounts")).json()
    assert [a["id"] for a in listed] == [first["id"], second["id"]]
    assert (await control.get(f"/_sandbox/accounts/{second['id']}")).json() == second
    assert (await control.get("/_sandbox/accounts/1")).status_code == 404
    assert (await control.get("/_sandbox/accounts/abc")).status_code == 404


async def test_create_pipeline(control: httpx.AsyncClient) -> None:
    """A new pipeline gets unsorted + the named stages + 142/143 (same ids everywhere)."""
    account = await new_account(control)
    reply = await control.post(
        f"/_sandbox/accounts/{account['id']}/pipelines",
        json={"name": "Опт", "statuses": ["Заявка", "Счёт"], "is_main": True},
    )
    assert reply.status_code == 201
    pipeline = reply.json()
    assert [s["name"] for s in pipeline["statuses"]][1:3] == ["Заявка", "Счёт"]
    assert [s["id"] for s in pipeline["statuses"]][-2:] == [142, 143]
    assert pipeline["statuses"][0]["type"] == 1
    shown = (await control.get(f"/_sandbox/accounts/{account['id']}")).json()
    assert [p["is_main"] for p in shown["pipelines"]] == [False, True]


@pytest.mark.parametrize(
    "body",
    [
        {"name": "P", "statuses": []},
        {"name": "P", "statuses": [""]},
        {"name": "P", "statuses": [1]},
        {"name": "P", "statuses": ["s"] * 98},
        {"statuses": ["a"]},
    ],
)
async def test_bad_pipeline(control: httpx.AsyncClient, body: dict[str, Any]) -> None:
    """≤100 statuses per pipeline; names required."""
    account = await new_account(control)
    reply = await control.post(f"/_sandbox/accounts/{account['id']}/pipelines", json=body)
    assert reply.status_code == 422


async def test_at_most_50_pipelines(control: httpx.AsyncClient) -> None:
    """≤50 pipelines per account."""
    account = await new_account(control)
    url = f"/_sandbox/accounts/{account['id']}/pipelines"
    for i in range(49):
        assert (
            await control.post(url, json={"name": f"P{i}", "statuses": ["a"]})
        ).status_code == 201
    assert (await control.post(url, json={"name": "P50", "statuses": ["a"]})).status_code == 422


async def test_create_user(control: httpx.AsyncClient) -> None:
    account = await new_account(control)
    reply = await control.post(f"/_sandbox/accounts/{account['id']}/users", json={"name": "Олег"})
    assert reply.status_code == 201
    user = reply.json()
    shown = (await control.get(f"/_sandbox/accounts/{account['id']}")).json()
    assert {"id": user["id"], "name": "Олег", "email": user["email"], "is_admin": False} in shown[
        "users"
    ]
    missing = await control.post("/_sandbox/accounts/1/users", json={"name": "x"})
    assert missing.status_code == 404


async def test_integrations(control: httpx.AsyncClient) -> None:
    reply = await control.post(
        "/_sandbox/integrations", json={"name": "shop", "redirect_uri": "https://shop.example/cb"}
    )
    assert reply.status_code == 201
    integration = reply.json()
    assert integration["client_secret"]
    assert integration["scopes"] == ["crm", "notifications"]
    assert (await control.get("/_sandbox/integrations")).json() == [integration]
    bad = await control.post(
        "/_sandbox/integrations", json={"name": "x", "redirect_uri": "javascript:alert(1)"}
    )
    assert bad.status_code == 422


async def test_long_lived_token_bounds(control: httpx.AsyncClient) -> None:
    """Long-lived tokens live 1 day to 5 years."""
    account = await new_account(control)
    client_id = (
        await control.post(
            "/_sandbox/integrations", json={"name": "c", "redirect_uri": "https://app.example/cb"}
        )
    ).json()["client_id"]
    url = "/_sandbox/long-lived-tokens"
    for ttl in (3600, 6 * 365 * 86400):
        body = {"client_id": client_id, "account_id": account["id"], "ttl_seconds": ttl}
        assert (await control.post(url, json=body)).status_code == 422
    ok = await control.post(
        url, json={"client_id": client_id, "account_id": account["id"], "ttl_seconds": 86400}
    )
    assert ok.status_code == 201
    assert ok.json()["expires_at"] == 1_700_000_000 + 86400
    unknown = await control.post(url, json={"client_id": "nope", "account_id": account["id"]})
    assert unknown.status_code == 404


# --- clock -------------------------------------------------------------------------------------


async def test_clock_advance_and_freeze(control: httpx.AsyncClient) -> None:
    """Sandbox time moves only when told while frozen; advancing expires tokens."""
    assert (await control.get("/_sandbox/clock")).json() == {"now": 1_700_000_000, "frozen": True}
    moved = await control.post("/_sandbox/clock", json={"advance_seconds": 90})
    assert moved.json() == {"now": 1_700_000_090, "frozen": True}
    unfrozen = (await control.post("/_sandbox/clock", json={"freeze": False})).json()
    assert unfrozen["frozen"] is False
    assert unfrozen["now"] >= 1_700_000_090
    refrozen = (await control.post("/_sandbox/clock", json={"freeze": True})).json()
    assert refrozen["frozen"] is True
    assert (await control.get("/_sandbox/clock")).json()["now"] == refrozen["now"]
    for bad in ({"advance_seconds": -1}, {"advance_seconds": "1"}, {"advance_seconds": True}):
        assert (await control.post("/_sandbox/clock", json=bad)).status_code == 422


async def test_advancing_expires_tokens(control: httpx.AsyncClient, sandbox_app: Any) -> None:
    """A long-lived token stops working at its expiry in sandbox time."""
    account = await new_account(control)
    _, api = await api_client(control, sandbox_app, account)
    async with api:
        assert (await api.get("/api/v4/webhooks")).status_code == 204
        await control.post("/_sandbox/clock", json={"advance_seconds": 365 * 86400})
        assert (await api.get("/api/v4/webhooks")).status_code == 401


# --- requests log ------------------------------------------------------------------------------


async def test_requests_log_filters(control: httpx.AsyncClient, sandbox_app: Any) -> None:
    """GET /_sandbox/requests filters by account, path prefix, client, method, time and limit."""
    acme = await new_account(control)
    globex = await new_account(control, "globex")
    acme_client, acme_api = await api_client(control, sandbox_app, acme)
    _, globex_api = await api_client(control, sandbox_app, globex)
    async with acme_api, globex_api:
        await acme_api.get("/api/v4/webhooks")
        await control.post("/_sandbox/clock", json={"advance_seconds": 10})
        await acme_api.post(
            "/api/v4/webhooks",
            json={"destination": "https://h.example/", "settings": ["add_lead"]},
        )
        await globex_api.get("/api/v4/webhooks?filter[destination]=x")

    async def log(**query: Any) -> list[dict[str, Any]]:
        reply = await control.get("/_sandbox/requests", params=query)
        assert reply.status_code == 200
        return list(reply.json())

    everything = await log()
    assert [(r["method"], r["status"]) for r in everything] == [
        ("GET", 204),
        ("POST", 201),
        ("GET", 204),
    ]
    assert everything[2]["query"] == "filter[destination]=x"
    assert len(await log(account_id=acme["id"])) == 2
    assert len(await log(client_id=acme_client)) == 2
    assert len(await log(method="post")) == 1
    assert len(await log(path_prefix="/api/v4/web")) == 3
    assert await log(path_prefix="/oauth2/") == []
    assert len(await log(since=1_700_000_005)) == 2
    assert [r["method"] for r in await log(limit=1)] == ["GET"]
    assert await log(limit=0) == []
    for bad in ({"account_id": "x"}, {"since": "yesterday"}, {"limit": "many"}):
        assert (await control.get("/_sandbox/requests", params=bad)).status_code == 400
    assert all("token" not in key or key.endswith("fingerprint") for key in everything[0])
    assert (await control.delete("/_sandbox/requests")).status_code == 204
    assert await log() == []


# --- reset and config --------------------------------------------------------------------------


async def test_reset_forgets_everything_but_config(control: httpx.AsyncClient) -> None:
    await control.patch("/_sandbox/config", json={"access_ttl": 60})
    await new_account(control)
    await control.post("/_sandbox/faults", json={"kind": "error"})
    assert (await control.post("/_sandbox/reset")).status_code == 204
    assert (await control.get("/_sandbox/accounts")).json() == []
    assert (await control.get("/_sandbox/faults")).json() == []
    assert (await control.get("/_sandbox/config")).json()["access_ttl"] == 60
    assert (await new_account(control))["subdomain"] == "acme"  # the subdomain is free again


async def test_config_patch(control: httpx.AsyncClient) -> None:
    """PATCH /_sandbox/config changes a running sandbox; unknown names and wrong types are 422."""
    config = (await control.get("/_sandbox/config")).json()
    assert config["rate_limit_rps"] == 7
    assert config["webhook_timeout"] == 2.0
    assert "control_token" not in config
    changed = await control.patch(
        "/_sandbox/config",
        json={"rate_limit_rps": 3, "webhook_retry_delays": [1, 2], "account_rps_cap": None},
    )
    assert changed.status_code == 200
    body = changed.json()
    assert (body["rate_limit_rps"], body["webhook_retry_delays"], body["account_rps_cap"]) == (
        3,
        [1, 2],
        None,
    )
    for bad in (
        {"no_such_setting": 1},
        {"control_token": "x"},
        {"rate_limit_enabled": "yes"},
        {"rate_limit_rps": "7"},
        {"rate_limit_rps": True},
        {"webhook_retry_delays": [1, "2"]},
        {"ban_body": 5},
    ):
        reply = await control.patch("/_sandbox/config", json=bad)
        assert reply.status_code == 422, bad
        assert reply.json()["detail"]
    assert (await control.get("/_sandbox/config")).json()["rate_limit_rps"] == 3
    not_object = await control.patch("/_sandbox/config", json=[1])
    assert not_object.status_code == 400


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/_sandbox/accounts", b"{"),
        ("POST", "/_sandbox/accounts", b""),
        ("POST", "/_sandbox/accounts", b"[]"),
        ("POST", "/_sandbox/clock", b"null"),
    ],
)
async def test_bad_control_bodies_are_400(
    control: httpx.AsyncClient, method: str, path: str, body: bytes
) -> None:
    reply = await control.request(method, path, content=body)
    assert reply.status_code == 400
    assert reply.json()["detail"]


async def test_unknown_control_route_is_404(control: httpx.AsyncClient) -> None:
    reply = await control.get("/_sandbox/nothing-here")
    assert reply.status_code == 404
    assert reply.json()["detail"] == "Cannot GET /_sandbox/nothing-here"


async def test_public_key(control: httpx.AsyncClient) -> None:
    reply = await control.get("/_sandbox/public-key")
    assert reply.text.startswith("-----BEGIN PUBLIC KEY-----")


# --- control token -----------------------------------------------------------------------------


async def test_control_token_protects_the_control_api(signing_key: rsa.RSAPrivateKey) -> None:
    """With a control token configured every control call needs it (401 otherwise); the amoCRM
    API itself is not affected."""
    app = create_sandbox_app(SandboxConfig(control_token="s3cret-control"), signing_key=signing_key)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url=SANDBOX_URL
    ) as client:
        assert (await client.get("/_sandbox/health")).status_code == 401
        wrong = await client.get("/_sandbox/health", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert wrong.json() == {"detail": "control API token required"}
        for path in ("/_sandbox/webhook-deliveries", "/_sandbox/config"):
            assert (await client.get(path)).status_code == 401
        assert (await client.post("/_sandbox/webhooks/flush")).status_code == 401
        headers = {"Authorization": "Bearer s3cret-control"}
        assert (await client.get("/_sandbox/health", headers=headers)).status_code == 200
        made = await client.post("/_sandbox/accounts", json={"subdomain": "acme"}, headers=headers)
        assert made.status_code == 201
        config = (await client.get("/_sandbox/config", headers=headers)).json()
        assert "control_token" not in config
        assert "s3cret" not in str(config)
        api = await client.get(
            "/api/v4/webhooks", headers={"Host": "acme.amocrm.ru", "Authorization": "Bearer x"}
        )
        assert api.status_code == 401
        assert api.json()["detail"] == "Invalid user name or password"


# --- routing -------------------------------------------------------------------------------------


def _linear_choice(routes: list[Any], scope: dict[str, Any]) -> Any:
    """What Starlette's router picks: the first full match, else the first partial one."""
    from starlette.routing import Match

    partial = None
    for route in routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return route
        if match is Match.PARTIAL and partial is None:
            partial = route
    return partial


def test_route_index_picks_what_the_linear_router_picks(sandbox_app: Any) -> None:
    """The prefix index is only a shortcut: for every route's path (ids filled in), with every
    method, and for unknown paths, it chooses the same route as trying them all in order."""
    from starlette.routing import Match

    from amobridge.sandbox.routing import RouteIndex

    [index] = sandbox_app.router.routes
    assert isinstance(index, RouteIndex)
    paths = {
        "/",
        "/nothing",
        "/api/v4/",
        "/api/v4/leads/",
        "/api/v4/leads/x",
        "/oauth/",
        "/_sandbox",
    }
    for route in index.routes:
        path = getattr(route, "path", "")
        filled = path.replace("{entity_id:int}", "17").replace("{note_id:int}", "5")
        for name in ("account_id", "rule_id", "entity_id", "path:path", "client_id"):
            filled = filled.replace("{" + name + "}", "30000001")
        paths.add(filled)
    checked = 0
    for path in sorted(paths):
        for method in ("GET", "POST", "PATCH", "DELETE", "PUT", "HEAD"):
            scope = {"type": "http", "method": method, "path": path, "root_path": ""}
            expected = _linear_choice(index.routes, scope)
            match, child = index.matches(scope)
            chosen = child.get("route") if match is not Match.NONE else None
            assert chosen is expected, (method, path)
            checked += 1
    assert checked > 500


async def test_method_not_on_a_route_is_an_amocrm_404(control: httpx.AsyncClient) -> None:
    """An unknown route or method answers amoCRM's `Cannot {METHOD} {path}` 404."""
    reply = await control.put("/_sandbox/health")
    assert reply.status_code == 404
    assert reply.json()["detail"] == "Cannot PUT /_sandbox/health"
