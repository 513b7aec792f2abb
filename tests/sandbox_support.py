"""Helpers shared by the sandbox and SDK tests: a connected sandbox account.

Kept out of conftest.py so test modules can import them (``from sandbox_support import …``)
whatever conftest.py is nearest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

SANDBOX_URL = "http://sandbox.test"


@dataclass
class Connected:
    """An account with an installed integration and a fresh token pair."""

    account: dict[str, Any]
    integration: dict[str, Any]
    tokens: dict[str, Any]
    api: httpx.AsyncClient  # base_url https://{host}, Bearer set

    @property
    def account_id(self) -> int:
        return int(self.account["id"])

    @property
    def host(self) -> str:
        return str(self.account["host"])


async def connect(
    control: httpx.AsyncClient, sandbox_app: Any, subdomain: str = "acme", **account: Any
) -> Connected:
    acc = (
        await control.post("/_sandbox/accounts", json={"subdomain": subdomain, **account})
    ).json()
    integ = (
        await control.post(
            "/_sandbox/integrations",
            json={"name": "test", "redirect_uri": "https://app.example/callback"},
        )
    ).json()
    code = (
        await control.post(
            "/_sandbox/authorize",
            json={"client_id": integ["client_id"], "account_id": acc["id"], "state": "s"},
        )
    ).json()["code"]
    api = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=sandbox_app), base_url=f"https://{acc['host']}"
    )
    reply = await api.post(
        "/oauth2/access_token",
        json={
            "client_id": integ["client_id"],
            "client_secret": integ["client_secret"],
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": integ["redirect_uri"],
        },
    )
    assert reply.status_code == 200, reply.text
    tokens = reply.json()
    api.headers["Authorization"] = f"Bearer {tokens['access_token']}"
    return Connected(acc, integ, tokens, api)
