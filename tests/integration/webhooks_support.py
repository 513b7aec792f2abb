"""What the webhook tests share: a connected owner's URL secret, amoCRM-shaped form bodies, the
sandbox's deliveries awaited and the job worker run until both are quiet, and a look at the
mirror and the inbox."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import httpx
from leads_support import OWNER, drain
from sqlalchemy import func, select

from amobridge.storage.tables import Connection, Lead, WebhookDelivery

WEBHOOKS_ON = {"webhooks": {"auto_subscribe": True}}
FORM = "application/x-www-form-urlencoded"


async def connection_of(stack: Any, owner: str = OWNER) -> Connection:
    async with stack.services.db.read() as session:
        row = await stack.services.connections(session).for_owner(owner)
    assert row is not None
    return row


async def secret_of(stack: Any, owner: str = OWNER) -> str:
    secret = stack.services.webhooks.secret_of(await connection_of(stack, owner))
    assert secret is not None
    return secret


def form(stack: Any, *items: tuple[str, dict[str, Any]], account_id: int | None = None) -> bytes:
    """An amoCRM body: the account block, then ``("leads[update]", {fields})`` items, each value a
    string, nested dicts and lists flattened to bracket keys."""
    pairs: list[tuple[str, str]] = [
        ("account[subdomain]", stack.account["subdomain"]),
        ("account[id]", str(account_id if account_id is not None else stack.account["id"])),
        ("account[_links][self]", f"https://{stack.account['subdomain']}.amocrm.ru"),
    ]
    counters: dict[str, int] = {}

    def flat(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                flat(f"{prefix}[{key}]", item)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                flat(f"{prefix}[{index}]", item)
        elif value is not None:
            pairs.append((prefix, str(value)))

    for group, fields in items:
        index = counters.get(group, 0)
        counters[group] = index + 1
        flat(f"{group}[{index}]", fields)
    return urlencode(pairs).encode()


async def post_hook(
    stack: Any, secret: str, body: bytes | str, *, content_type: str = FORM
) -> httpx.Response:
    return await stack.http.post(
        f"/webhooks/amocrm/{secret}", content=body, headers={"Content-Type": content_type}
    )


async def settle(stack: Any, *, rounds: int = 30) -> None:
    """The sandbox's deliveries in flight reach the service, and the worker runs every job they
    and the jobs queue, until neither has anything left."""
    for _ in range(rounds):
        flushed = (await stack.control.post("/_sandbox/webhooks/flush")).json()["flushed"]
        ran = await drain(stack)
        if not flushed and not ran:
            return
    raise AssertionError(f"still busy after {rounds} rounds")


async def delivery_count(stack: Any) -> int:
    async with stack.services.db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(WebhookDelivery)) or 0)


async def deliveries(stack: Any, **params: Any) -> list[dict[str, Any]]:
    found = await stack.http.get(
        "/webhooks/deliveries", params={"limit": 200, **params}, headers=stack.admin_headers()
    )
    assert found.status_code == 200, found.text
    return list(found.json()["items"])


async def mirror_lead(stack: Any, amo_id: int) -> Lead | None:
    async with stack.services.db.read() as session:
        return await session.scalar(select(Lead).where(Lead.amo_id == amo_id))


async def ui(stack: Any, method: str, path: str, body: Any = None) -> Any:
    """A manager's edit in amoCRM's UI (the sandbox's control API), which fires webhooks."""
    url = f"/_sandbox/accounts/{stack.account['id']}/{path}"
    answer = await stack.control.request(method, url, json=body)
    assert answer.status_code < 300, answer.text
    return answer.json() if answer.content else None
