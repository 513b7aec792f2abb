"""What the push spends of a connection's 7 requests per second besides the creates themselves:
no contact search in amoCRM once an import has put the account's contacts into the mirror, and
amoCRM's times of new leads read back once for two create requests, after them.

(bench/leads.py measures the same on 10,000 leads: within 1.15 × one request per 50 leads.)"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from import_support import get_import, start_import
from leads_support import OWNER, connected, drain, live_contacts, live_leads, post_lead, requests_to

from amobridge.storage.tables import Lead


async def _searches(stack: Any) -> list[dict[str, Any]]:
    """GET /api/v4/contacts with a ``query``: contact searches (an import's pages have none)."""
    listed = await requests_to(stack, "/api/v4/contacts", method="GET")
    return [
        r for r in listed if r["path"] == "/api/v4/contacts" and "query" in parse_qs(r["query"])
    ]


async def test_an_imported_account_is_not_searched_for_contacts(stack: Any) -> None:
    await connected(stack)
    await post_lead(stack, {"name": "before", "contact": {"email": "a@example.com"}})
    await drain(stack)
    before = len(await _searches(stack))
    assert before >= 1  # no import yet: amoCRM is asked

    started = await start_import(stack)
    assert started.status_code == 202, started.text
    await drain(stack)
    shown = (await get_import(stack, started.json()["id"])).json()
    assert shown["state"] == "succeeded", shown

    for i in range(3):
        answer = await post_lead(
            stack,
            {
                "name": f"after {i}",
                "contact": {"email": f"b{i}@example.com", "phone": f"+7900555000{i}"},
            },
        )
        assert answer.status_code == 201, answer.text
    # The mirror still deduplicates: a contact it holds is linked, not created again.
    again = await post_lead(stack, {"name": "again", "contact": {"email": "B0@example.com"}})
    assert again.status_code == 201, again.text
    await drain(stack)
    assert len(await _searches(stack)) == before
    assert len(live_leads(stack)) == 5
    assert len(live_contacts(stack)) == 4
    by_name = {lead.name: lead.contact_ids for lead in live_leads(stack)}
    assert by_name["again"] == by_name["after 0"]
    assert len({by_name[f"after {i}"][0] for i in range(3)} | set(by_name["before"])) == 4


async def test_new_leads_times_are_read_back_once_after_their_creates(stack: Any) -> None:
    await connected(stack)
    for i in range(60):  # two create requests: 50 + 10
        assert (await post_lead(stack, {"name": f"lead {i}"})).status_code == 201
    await drain(stack)
    assert len(await requests_to(stack, "/api/v4/leads/complex")) == 2
    reads = [
        r
        for r in await requests_to(stack, "/api/v4/leads", method="GET")
        if r["path"] == "/api/v4/leads" and "filter[id][0]" in parse_qs(r["query"])
    ]
    assert len(reads) == 1
    assert len([k for k in parse_qs(reads[0]["query"]) if k.startswith("filter[id]")]) == 60
    async with stack.services.db.read() as session:
        from sqlalchemy import select

        rows = list(await session.scalars(select(Lead).where(Lead.owner == OWNER)))
    assert len(rows) == 60
    in_amo = {lead.id: lead.updated_at for lead in live_leads(stack)}
    assert all(row.sync_state == "synced" for row in rows)
    assert all(
        row.amo_id is not None
        and row.amo_updated_at is not None
        and int(row.amo_updated_at.timestamp()) == in_amo[row.amo_id]
        for row in rows
    )
