"""An account's pipelines, custom fields, contacts and leads imported into the mirror through
``POST /imports`` and the job that runs it — on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from import_support import (
    freeze_sandbox_clock,
    get_import,
    imports_of,
    list_requests,
    mirror_contacts,
    mirror_leads,
    mirror_links,
    run_pulls,
    seed,
    start_import,
)
from leads_support import OWNER, account, connected, drain, live_leads
from sqlalchemy import select

from amobridge.storage.tables import AmoCatalogue


async def test_600_leads_and_300_contacts_arrive_exactly(stack: Any) -> None:
    await connected(stack)
    await freeze_sandbox_clock(stack)
    contacts = await seed(
        stack,
        "contacts",
        300,
        lambda i: {"name": f"Контакт {i}", "email": f"C{i}@Example.com", "phone": f"8900{i:07d}"},
    )
    leads = await seed(
        stack,
        "leads",
        600,
        lambda i: {
            "name": f"Сделка {i}",
            "price": i,
            **({"contact": {"id": contacts[i]}} if i < 300 else {}),
        },
    )

    started = await start_import(stack)
    assert started.status_code == 202, started.text
    queued = started.json()
    assert (queued["state"], queued["kind"], queued["entity"]) == ("queued", "import", "catalogue")

    assert await drain(stack) == 1
    shown = (await get_import(stack, queued["id"])).json()
    assert shown["state"] == "succeeded", shown
    assert shown["entity"] is None
    assert shown["counts"]["leads"] == 600
    assert shown["counts"]["contacts"] == 300
    assert shown["counts"]["pipelines"] == len(account(stack).pipelines)
    assert shown["pages"]["leads"] == 3
    assert shown["pages"]["contacts"] == 2
    assert shown["total"] == 900
    assert shown["changes"]["created"] == 900
    assert shown["job"]["state"] == "succeeded"

    # Exactly amoCRM's entities, each once, with amoCRM's values.
    rows = await mirror_leads(stack)
    assert sorted(row.amo_id for row in rows) == sorted(leads)
    assert {row.sync_state for row in rows} == {"synced"}
    by_amo = {row.amo_id: row for row in rows}
    first = by_amo[leads[7]]
    assert (first.name, first.price) == ("Сделка 7", 7)
    in_amo = account(stack).leads[leads[7]]
    assert (first.pipeline_id, first.status_id) == (in_amo.pipeline_id, in_amo.status_id)
    people = await mirror_contacts(stack)
    assert sorted(row.amo_id for row in people) == sorted(contacts)
    person = next(row for row in people if row.amo_id == contacts[7])
    assert (person.email, person.phone) == ("c7@example.com", "+79000000007")

    # Each lead's contact, as its main contact.
    contact_of = {row.id: row.amo_id for row in people}
    links = {
        (link.lead_id, contact_of[link.contact_id], link.is_main)
        for link in await mirror_links(stack)
    }
    assert links == {(by_amo[leads[i]].id, contacts[i], True) for i in range(300)}

    # 250 a page, with their contacts, three lead pages and no more.
    pages = await list_requests(stack, "/api/v4/leads")
    assert len(pages) == 3
    assert {p["limit"] for p in pages} == {"250"}
    assert {p["with"] for p in pages} == {"contacts"}
    assert len(await list_requests(stack, "/api/v4/contacts")) == 2

    # The catalogue was stored: the lead API resolves names against it.
    async with stack.services.db.read() as session:
        kinds = set(await session.scalars(select(AmoCatalogue.kind)))
    assert kinds == {"pipelines", "lead_fields", "contact_fields"}

    # Nothing imported is pushed back to amoCRM.
    assert await drain(stack) == 0
    assert len(live_leads(stack)) == 600


async def test_an_import_answers_with_the_one_under_way_and_a_done_one_starts_anew(
    stack: Any,
) -> None:
    await connected(stack)
    await seed(stack, "leads", 3)
    first = (await start_import(stack)).json()
    again = await start_import(stack)
    assert again.status_code == 202
    assert again.json()["id"] == first["id"]
    assert await drain(stack) == 1
    assert len(await imports_of(stack, "import")) == 1

    await seed(stack, "leads", 2, start=3)
    second = (await start_import(stack)).json()
    assert second["id"] != first["id"]
    await drain(stack)
    assert (await get_import(stack, second["id"])).json()["changes"] == {
        "created": 2,
        "updated": 0,
        "unchanged": 3,
        "stale": 0,
        "kept_local": 0,
    }
    assert len(await mirror_leads(stack)) == 5


async def test_imports_are_owner_scoped(stack: Any) -> None:
    await connected(stack)
    made = (await start_import(stack)).json()
    other = await stack.http.get(
        f"/imports/{made['id']}",
        headers={"Authorization": f"Bearer {stack.user_token('someone-else')}"},
    )
    assert other.status_code == 404
    assert other.json()["error"] == "import_not_found"
    mine = await stack.http.get(
        f"/imports/{made['id']}", headers={"Authorization": f"Bearer {stack.user_token(OWNER)}"}
    )
    assert mine.status_code == 200
    assert mine.json()["owner"] == OWNER
    missing = await start_import(stack, owner="nobody")
    assert missing.status_code == 404
    assert missing.json()["error"] == "connection_not_found"
    no_owner = await stack.http.post("/imports", json={}, headers=stack.app_headers())
    assert no_owner.status_code == 400
    assert no_owner.json()["error"] == "owner_required"


async def test_a_disconnected_connection_is_not_imported(stack: Any) -> None:
    await connected(stack)
    gone = await stack.http.delete(
        "/amocrm/disconnect", params={"owner": OWNER}, headers=stack.app_headers()
    )
    assert gone.status_code == 200, gone.text
    refused = await start_import(stack)
    assert refused.status_code == 409
    assert refused.json()["error"] == "connection_disconnected"


async def test_a_lead_created_here_and_in_amocrm_already_is_adopted_not_doubled(
    stack: Any,
) -> None:
    """The mirror's own lead whose create reached amoCRM but whose reply was lost: the import
    finds it by its marker and stores amoCRM's id on it instead of adding a second row."""
    await connected(stack)
    made = await stack.http.post(
        "/leads", json={"owner": OWNER, "name": "ours"}, headers=stack.app_headers()
    )
    lead_id = made.json()["id"]
    await stack.control.post(
        "/_sandbox/faults",
        json={
            "kind": "error",
            "status": 500,
            "phase": "after",
            "path_prefix": "/api/v4/leads/complex",
            "count": 1,
        },
    )
    await drain(stack)  # created in amoCRM, the reply lost: the mirror has no amoCRM id yet
    (in_amo,) = live_leads(stack)
    await start_import(stack)
    assert await run_pulls(stack) == 1
    rows = await mirror_leads(stack)
    assert [(row.id, row.amo_id) for row in rows] == [(lead_id, in_amo.id)]
