"""amoCRM-side changes reach the mirror through the sandbox's real webhooks (subscribed by the
service itself on connect), a redelivered body is applied once, and amobridge's own pushes that
come back as webhooks change nothing and push nothing — on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from leads_support import OWNER, connected, get_lead, post_lead, requests_to
from sqlalchemy import select
from webhooks_support import (
    WEBHOOKS_ON,
    deliveries,
    form,
    mirror_lead,
    post_hook,
    secret_of,
    settle,
    ui,
)

from amobridge.storage.tables import Contact, Job, Lead, LeadContact


@pytest.fixture
def stack_overrides() -> dict[str, Any]:
    return WEBHOOKS_ON


async def _jobs(stack: Any, kind: str) -> list[Job]:
    async with stack.services.db.read() as session:
        return list(await session.scalars(select(Job).where(Job.kind == kind)))


async def test_an_edit_in_amocrm_reaches_the_mirror(stack: Any) -> None:
    await connected(stack)
    await settle(stack)  # the subscription is made
    made = await ui(stack, "POST", "leads", {"name": "Из amoCRM", "price": 900})
    await settle(stack)
    lead = await mirror_lead(stack, made["id"])
    assert lead is not None, await deliveries(stack)
    assert (lead.name, lead.price, lead.owner, lead.sync_state) == (
        "Из amoCRM",
        900,
        OWNER,
        "synced",
    )
    assert lead.status_id == made["status_id"]
    assert lead.pipeline_id == made["pipeline_id"]

    pipeline = stack.sandbox.state.accounts[stack.account["id"]].pipelines[made["pipeline_id"]]
    stage = next(
        s for s in pipeline.statuses if s.id != made["status_id"] and s.id not in (142, 143)
    )
    await ui(
        stack, "PATCH", f"leads/{made['id']}", {"name": "Переименовали", "status_id": stage.id}
    )
    await settle(stack)
    lead = await mirror_lead(stack, made["id"])
    assert lead is not None
    assert (lead.name, lead.status_id) == ("Переименовали", stage.id)
    # The lead API shows it like any other lead of the owner.
    listed = await stack.http.get("/leads", params={"owner": OWNER}, headers=stack.app_headers())
    assert [item["amo_id"] for item in listed.json()["items"]] == [made["id"]]

    contact = await ui(stack, "POST", "contacts", {"name": "Пётр", "email": "Petr@Example.com"})
    second = await ui(stack, "POST", "leads", {"name": "Вторая", "contact": {"id": contact["id"]}})
    await ui(stack, "PATCH", f"contacts/{contact['id']}", {"name": "Пётр Петров"})
    await settle(stack)
    linked = await mirror_lead(stack, second["id"])
    assert linked is not None
    async with stack.services.db.read() as session:
        row = await session.scalar(select(Contact).where(Contact.amo_id == contact["id"]))
        assert row is not None
        assert (row.name, row.email) == ("Пётр Петров", "petr@example.com")
        links = list(
            await session.scalars(select(LeadContact).where(LeadContact.contact_id == row.id))
        )
    assert [(link.lead_id, link.is_main) for link in links] == [(linked.id, True)]

    await ui(stack, "DELETE", f"leads/{made['id']}")
    await settle(stack)
    lead = await mirror_lead(stack, made["id"])
    assert lead is not None
    assert lead.deleted
    processed = await deliveries(stack, owner=OWNER)
    assert processed
    assert all(d["state"] == "processed" for d in processed), processed


async def test_a_redelivered_sandbox_body_is_applied_once(stack: Any) -> None:
    await connected(stack)
    await settle(stack)
    made = await ui(stack, "POST", "leads", {"name": "Один раз"})
    await settle(stack)
    log = (
        await stack.control.get("/_sandbox/webhook-deliveries", params={"delivered": True})
    ).json()
    raw = log[-1]["raw"]
    again = await post_hook(stack, await secret_of(stack), raw)
    assert again.status_code == 200, again.text
    assert again.json()["duplicate_of"] is not None
    await settle(stack)
    states = [d["state"] for d in await deliveries(stack, owner=OWNER)]
    assert states.count("duplicate") == 1
    lead = await mirror_lead(stack, made["id"])
    assert lead is not None
    assert lead.version == 1


async def test_our_own_push_coming_back_changes_nothing_and_pushes_nothing(stack: Any) -> None:
    await connected(stack)
    await settle(stack)
    created = await post_lead(
        stack,
        {"name": "Заявка", "price": 100, "contact": {"name": "Иван", "email": "i@example.com"}},
    )
    assert created.status_code == 201, created.text
    lead_id = created.json()["id"]
    await settle(stack)  # pushed; its add webhooks come back and are applied
    pushed = (await get_lead(stack, lead_id)).json()
    assert pushed["state"] == "synced", pushed
    before_hooks = {d["id"] for d in await deliveries(stack, owner=OWNER)}
    assert before_hooks  # the create's webhooks arrived

    patched = await stack.http.patch(
        f"/leads/{lead_id}",
        params={"owner": OWNER},
        json={"price": 20000, "name": "Заявка (оплачено)"},
        headers=stack.app_headers(),
    )
    assert patched.status_code == 200, patched.text
    async with stack.services.db.read() as session:
        accepted = await session.get(Lead, lead_id)
    assert accepted is not None
    await settle(stack)  # the update job PATCHes amoCRM; amoCRM's webhook comes back

    echoes = [d for d in await deliveries(stack, owner=OWNER) if d["id"] not in before_hooks]
    assert echoes, "the sandbox sent the update back"
    assert all(d["state"] == "processed" for d in echoes), echoes
    assert sum(d["result"]["applied"] for d in echoes) == 0, echoes
    assert sum(d["result"]["echo"] for d in echoes) >= 1
    async with stack.services.db.read() as session:
        after = await session.get(Lead, lead_id)
    assert after is not None
    assert (after.name, after.price, after.version) == (
        "Заявка (оплачено)",
        20000,
        accepted.version,
    )
    assert after.dirty == {}
    assert after.sync_state == "synced"
    patches = await requests_to(stack, "/api/v4/leads", "PATCH")
    assert len(patches) == 1  # one push, no ping-pong
    assert len(await _jobs(stack, "sync.lead.update")) == 1
    shown = (await get_lead(stack, lead_id)).json()
    assert (
        shown["updated_at"] == pushed["updated_at"] or shown["updated_at"] >= pushed["updated_at"]
    )
    assert shown["amo_updated_at"] == after.amo_updated_at.isoformat()  # type: ignore[union-attr]


async def test_a_newer_amocrm_change_wins_over_an_older_local_one(stack: Any) -> None:
    """A local change not pushed yet meets amoCRM's changes: one older than it leaves the local
    value (still to push); one newer replaces it, and the field is no longer pushed."""
    await connected(stack)
    await settle(stack)
    made = await ui(stack, "POST", "leads", {"name": "Оригинал", "price": 1})
    await settle(stack)
    lead = await mirror_lead(stack, made["id"])
    assert lead is not None
    assert lead.amo_updated_at is not None
    local = await stack.http.patch(
        f"/leads/{lead.id}", params={"owner": OWNER}, json={"price": 5}, headers=stack.app_headers()
    )
    assert local.status_code == 200, local.text
    secret = await secret_of(stack)
    process = stack.services.webhooks.process  # applied here: the push job must not run yet

    same_second = int(lead.amo_updated_at.timestamp())  # before the local change was made
    older = form(
        stack, ("leads[update]", {"id": made["id"], "price": 3, "updated_at": same_second})
    )
    await process([(await post_hook(stack, secret, older)).json()["delivery_id"]])
    row = await mirror_lead(stack, made["id"])
    assert row is not None
    assert row.price == 5
    assert "price" in row.dirty

    newer = form(
        stack, ("leads[update]", {"id": made["id"], "price": 7, "updated_at": 4_000_000_000})
    )
    await process([(await post_hook(stack, secret, newer)).json()["delivery_id"]])
    row = await mirror_lead(stack, made["id"])
    assert row is not None
    assert row.price == 7
    assert "price" not in row.dirty
