"""The service wired to the sandbox in-process: amoCRM calls go to the sandbox app, and what the
sandbox sends out (secrets POSTs, disconnect hooks, webhooks) goes to the service app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest

from amobridge.services import Services
from amobridge.settings import Settings
from amobridge.storage.crypto import generate_key
from amobridge.web.app import create_app

SERVICE_URL = "http://service.test"
JWT_SECRET = "jwt-test-secret-0123456789abcdef"


class _LateTransport(httpx.AsyncBaseTransport):
    """An ASGI transport whose app is set after both apps exist (they point at each other)."""

    def __init__(self) -> None:
        self.app: Any = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await httpx.ASGITransport(app=self.app).handle_async_request(request)


@dataclass
class Stack:
    settings: Settings
    services: Services
    app: Any
    http: httpx.AsyncClient  # to the service
    control: httpx.AsyncClient  # to the sandbox's control API
    sandbox: Any
    admin_key: str
    app_key: str
    integration: dict[str, Any]
    account: dict[str, Any]

    def user_token(self, owner: str, **claims: Any) -> str:
        import time

        payload = {"sub": owner, "exp": int(time.time()) + 3600, **claims}
        return jwt.encode(payload, JWT_SECRET, algorithm="HS256")

    def app_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.app_key}"}

    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}

    async def open_link(self, url: str, browser: httpx.AsyncClient | None = None) -> str:
        """Open a ``format=json`` link as a browser would (``browser``, or :attr:`http`): the
        service binds the flow to it and sends it on to amoCRM; the state."""
        hop = await (browser or self.http).get(url)
        assert hop.status_code == 302, hop.text
        return httpx.URL(hop.headers["location"]).params["state"]

    async def install_button(self, state: str) -> dict[str, str]:
        """amoCRM's website button, consented in the sandbox for ``state``: the secrets POST has
        reached the service; returns the callback's query the browser lands with."""
        installed = await self.control.post(
            "/_sandbox/button-install",
            json={
                "account_id": self.account["id"],
                "name": "amobridge button",
                "redirect_uri": f"{SERVICE_URL}/amocrm/callback",
                "secrets_uri": f"{SERVICE_URL}/amocrm/secrets",
                "state": state,
            },
        )
        assert installed.status_code == 201, installed.text
        return dict(httpx.URL(installed.json()["redirect_url"]).params)

    async def connect(self, owner: str, account_id: int | None = None) -> httpx.Response:
        """The redirect flow end to end (consent given through the control API)."""
        start = await self.http.get(
            "/amocrm/auth", params={"owner": owner, "format": "json"}, headers=self.app_headers()
        )
        assert start.status_code == 200, start.text
        state = await self.open_link(start.json()["url"])
        consent = await self.control.post(
            "/_sandbox/authorize",
            json={
                "client_id": self.integration["client_id"],
                "account_id": account_id or self.account["id"],
                "state": state,
            },
        )
        redirect = httpx.URL(consent.json()["redirect_url"])
        return await self.http.get("/amocrm/callback", params=dict(redirect.params))


def make_settings(database_url: str, **over: Any) -> Settings:
    values: dict[str, Any] = {
        "environment": "test",
        "database": {"url": database_url},
        "security": {"secret_keys": [generate_key()], "jwt_secret": JWT_SECRET},
        "server": {"public_url": SERVICE_URL, "run_workers": False},
        "amo": {
            "client_id": "placeholder-replaced",
            "client_secret": "placeholder-replaced",
            "authorize_url": "http://sandbox.test/oauth",
            "button_script_url": "http://sandbox.test/auth/button.min.js",
        },
        "mobile": {"allowed_schemes": ["foryoure"]},
        # Off unless a test asks (stack_overrides): a subscription makes every write the
        # sandbox sees come back as a webhook, and its jobs would run in every drain.
        "webhooks": {"auto_subscribe": False},
    }
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    return Settings(**values)


@pytest.fixture
def stack_overrides() -> dict[str, Any]:
    """Settings groups a test module changes for its stack (override this fixture), e.g.
    ``{"webhooks": {"auto_subscribe": True}}``."""
    return {}


@pytest.fixture
async def stack(
    database_url: str,
    sandbox: Any,
    sandbox_app: Any,
    control: httpx.AsyncClient,
    stack_overrides: dict[str, Any],
) -> AsyncIterator[Stack]:
    back = _LateTransport()
    sandbox._outbound_transport = back  # the sandbox's secrets POSTs and hooks reach the service
    integration = (
        await control.post(
            "/_sandbox/integrations",
            json={
                "name": "amobridge",
                "redirect_uri": f"{SERVICE_URL}/amocrm/callback",
                "disconnect_url": f"{SERVICE_URL}/amocrm/uninstall",
            },
        )
    ).json()
    account = (await control.post("/_sandbox/accounts", json={"subdomain": "acme"})).json()
    settings = make_settings(
        database_url,
        **{
            **stack_overrides,
            "amo": {
                **stack_overrides.get("amo", {}),
                "client_id": integration["client_id"],
                "client_secret": integration["client_secret"],
            },
        },
    )
    services = Services.build(settings, amo_transport=httpx.ASGITransport(app=sandbox_app))
    app = create_app(settings, services=services)
    back.app = app
    # database_url is a migrated copy of the session's template: no upgrade to run again.
    await services.start(migrate=False)
    async with services.db.transaction() as session:
        admin_key = await services.auth.create_api_key(session, name="admin", role="admin")
        app_key = await services.auth.create_api_key(session, name="host-app", role="app")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url=SERVICE_URL
    ) as http:
        yield Stack(
            settings,
            services,
            app,
            http,
            control,
            sandbox,
            admin_key,
            app_key,
            integration,
            account,
        )
    await services.stop()
