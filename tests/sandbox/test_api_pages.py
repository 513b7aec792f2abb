"""Conformance: walking a whole account the way an import does — 250 a page, ``page``, the time
filters with ``order``, ``_links.next`` only while more follow, 204 past the end — and a fault
aimed at one page of such a walk."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from amobridge.sandbox import Sandbox
from sandbox_support import Connected


async def seed(control: httpx.AsyncClient, account_id: int, kind: str, count: int) -> list[int]:
    """``count`` entities made through the control API, 250 a call."""
    made: list[int] = []
    for start in range(0, count, 250):
        items = [{"name": f"{kind} {i}"} for i in range(start, min(count, start + 250))]
        reply = await control.post(f"/_sandbox/accounts/{account_id}/{kind}", json=items)
        assert reply.status_code == 201, reply.text
        made += [item["id"] for item in reply.json()]
    return made


async def page(api: httpx.AsyncClient, path: str, **params: Any) -> httpx.Response:
    return await api.get(path, params={k: str(v) for k, v in params.items()})


async def test_600_leads_are_three_pages_of_at_most_250(
    acme: Connected, control: httpx.AsyncClient
) -> None:
    made = await seed(control, acme.account_id, "leads", 600)
    seen: list[int] = []
    nexts: list[bool] = []
    for number in (1, 2, 3):
        reply = await page(acme.api, "/api/v4/leads", limit=250, page=number)
        assert reply.status_code == 200
        body = reply.json()
        assert body["_page"] == number
        seen += [lead["id"] for lead in body["_embedded"]["leads"]]
        nexts.append("next" in body["_links"])
    assert seen == made  # id order, nothing twice, nothing left out
    assert nexts == [True, True, False]
    past = await page(acme.api, "/api/v4/leads", limit=250, page=4)
    assert past.status_code == 204
    assert past.content == b""


async def test_a_limit_above_250_never_serves_more_than_250(
    acme: Connected, control: httpx.AsyncClient
) -> None:
    await seed(control, acme.account_id, "contacts", 260)
    body = (await page(acme.api, "/api/v4/contacts", limit=500)).json()
    assert len(body["_embedded"]["contacts"]) == 250
    assert parse_qs(urlsplit(body["_links"]["next"]["href"]).query)["limit"] == ["250"]


async def test_updated_at_from_is_inclusive_and_orders_by_updated_at(
    acme: Connected, control: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    sandbox.clock.freeze()
    old = await seed(control, acme.account_id, "leads", 3)
    sandbox.clock.advance(100)
    bound = sandbox.clock.now_int()
    touched = await control.patch(
        f"/_sandbox/accounts/{acme.account_id}/leads/{old[0]}", json={"name": "changed"}
    )
    assert touched.status_code == 200
    sandbox.clock.advance(5)
    newer = await seed(control, acme.account_id, "leads", 2)
    reply = await page(
        acme.api,
        "/api/v4/leads",
        **{"filter[updated_at][from]": bound, "order[updated_at]": "asc", "limit": 250},
    )
    ids = [lead["id"] for lead in reply.json()["_embedded"]["leads"]]
    assert ids == [old[0], *newer]  # changed at ``bound`` exactly: included, oldest first
    later = await page(
        acme.api, "/api/v4/leads", **{"filter[updated_at][from]": sandbox.clock.now_int() + 1}
    )
    assert later.status_code == 204


async def test_created_at_order_and_lead_contacts_say_which_is_main(
    acme: Connected, control: httpx.AsyncClient
) -> None:
    contacts = await seed(control, acme.account_id, "contacts", 2)
    made = await control.post(
        f"/_sandbox/accounts/{acme.account_id}/leads",
        json={"name": "with two", "contact": {"id": contacts[1]}},
    )
    lead_id = made.json()["id"]
    linked = await control.patch(
        f"/_sandbox/accounts/{acme.account_id}/leads/{lead_id}",
        json={"_embedded": {"contacts": [{"id": contacts[0]}]}},
    )
    assert linked.status_code == 200, linked.text
    body = (
        await page(acme.api, "/api/v4/leads", **{"order[created_at]": "asc", "with": "contacts"})
    ).json()
    (lead,) = body["_embedded"]["leads"]
    links = {c["id"]: c["is_main"] for c in lead["_embedded"]["contacts"]}
    assert links == {contacts[1]: True, contacts[0]: False}


async def test_a_fault_can_aim_at_one_page(acme: Connected, control: httpx.AsyncClient) -> None:
    await seed(control, acme.account_id, "leads", 300)
    rule = await control.post(
        "/_sandbox/faults",
        json={
            "kind": "error",
            "status": 500,
            "path_prefix": "/api/v4/leads",
            "query": {"page": "2"},
        },
    )
    assert rule.status_code == 201, rule.text
    assert rule.json()[0]["query"] == {"page": "2"}
    assert (await page(acme.api, "/api/v4/leads", limit=250, page=1)).status_code == 200
    assert (await page(acme.api, "/api/v4/leads", limit=250, page=2)).status_code == 500
    assert (await page(acme.api, "/api/v4/leads", limit=250)).status_code == 200  # no page: 1


async def test_a_fault_query_must_be_strings(control: httpx.AsyncClient) -> None:
    for query in (["page"], {"page": 2}, "page=2"):
        reply = await control.post("/_sandbox/faults", json={"kind": "error", "query": query})
        assert reply.status_code == 422, query
        assert "query" in reply.json()["detail"]
