"""The push to amoCRM: batched creates, contact deduplication, no duplicates after an ambiguous
failure, a revoked grant that pauses the work until the owner connects again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from leads_support import (
    OWNER,
    connected,
    drain,
    get_lead,
    live_contacts,
    live_leads,
    post_lead,
    requests_to,
)

LATER = timedelta(hours=2)  # past any backoff: retried jobs are due


async def test_contacts_are_deduplicated_by_email_case_and_phone_format(stack: Any) -> None:
    await connected(stack)
    first = await post_lead(
        stack,
        {
            "name": "1",
            "contact": {"name": "Иван", "email": "Ivan@Mail.ru", "phone": "+7 (900) 123-45-67"},
        },
    )
    by_email = await post_lead(stack, {"name": "2", "contact": {"email": "ivan@MAIL.ru"}})
    by_phone = await post_lead(stack, {"name": "3", "contact": {"phone": "89001234567"}})
    ids = {r.json()["contact"]["id"] for r in (first, by_email, by_phone)}
    assert len(ids) == 1
    await drain(stack)
    (contact,) = live_contacts(stack)
    leads = live_leads(stack)
    assert len(leads) == 3
    assert all(lead.contact_ids == [contact.id] for lead in leads)
    # Created once, with the first lead; the others linked to it afterwards.
    assert len(await requests_to(stack, "/api/v4/leads/complex")) == 2
    for answer in (first, by_email, by_phone):
        shown = (await get_lead(stack, answer.json()["id"])).json()
        assert shown["state"] == "synced"
        assert shown["contact"]["amo_id"] == contact.id


async def test_an_amocrm_contact_with_that_phone_is_linked_not_duplicated(stack: Any) -> None:
    await connected(stack)
    client = await _client(stack)
    from amobridge.amo.models.contacts import ContactCreate
    from amobridge.amo.models.custom_fields import email_field, phone_field

    (made,) = await client.contacts.create(
        [
            ContactCreate(
                name="Пётр (менеджер завёл)",
                custom_fields_values=[
                    phone_field("+7 (912) 345-67-89"),
                    email_field("Petr@Example.com"),
                ],
            )
        ]
    )
    by_phone = await post_lead(
        stack, {"name": "по телефону", "contact": {"phone": "8 912 345 67 89"}}
    )
    by_email = await post_lead(
        stack, {"name": "по почте", "contact": {"email": "petr@example.COM"}}
    )
    await drain(stack)
    assert [c.id for c in live_contacts(stack)] == [made.id]
    assert all(lead.contact_ids == [made.id] for lead in live_leads(stack))
    for answer in (by_phone, by_email):
        assert (await get_lead(stack, answer.json()["id"])).json()["contact"]["amo_id"] == made.id


async def test_mirror_authoritative_skips_the_amocrm_search(stack: Any) -> None:
    stack.services.sync_tasks.settings = stack.services.settings.model_copy(
        update={
            "sync": stack.services.settings.sync.model_copy(update={"mirror_authoritative": True})
        }
    )
    await connected(stack)
    await post_lead(stack, {"name": "x", "contact": {"email": "new@example.com"}})
    await drain(stack)
    searches = await requests_to(stack, "/api/v4/contacts", method="GET")
    assert [r for r in searches if r["path"] == "/api/v4/contacts"] == []
    assert len(live_contacts(stack)) == 1


@pytest.mark.slow
async def test_creates_are_batched_fifty_per_complex_request(stack: Any) -> None:
    await connected(stack)
    made = [(await post_lead(stack, {"name": f"lead {i}"})).json()["id"] for i in range(120)]
    assert await drain(stack) == 120 + 3  # and one read-back job per create request
    sent = await requests_to(stack, "/api/v4/leads/complex")
    assert len(sent) == 3
    assert len(live_leads(stack)) == 120
    assert sorted(lead.name for lead in live_leads(stack)) == sorted(
        f"lead {i}" for i in range(120)
    )
    states = {(await get_lead(stack, lead_id)).json()["state"] for lead_id in made[::17]}
    assert states == {"synced"}


async def test_a_500_after_the_create_is_reconciled_not_repeated(stack: Any) -> None:
    await connected(stack)
    made = [
        (
            await post_lead(stack, {"name": f"lead {i}", "contact": {"email": f"c{i}@example.com"}})
        ).json()
        for i in range(4)
    ]
    fault = await stack.control.post(
        "/_sandbox/faults",
        json={
            "kind": "error",
            "status": 500,
            "phase": "after",
            "path_prefix": "/api/v4/leads/complex",
            "count": 1,
        },
    )
    assert fault.status_code == 201
    await drain(stack)
    assert len(live_leads(stack)) == 4  # amoCRM created them; the reply was lost
    pending = (await get_lead(stack, made[0]["id"])).json()
    assert pending["state"] == "pending"
    assert pending["amo_id"] is None
    assert "will try again" in pending["last_error"]

    late = (await post_lead(stack, {"name": "late"})).json()
    await drain(stack, ahead=LATER)
    assert sorted(lead.name for lead in live_leads(stack)) == [
        "late",
        *(f"lead {i}" for i in range(4)),
    ]
    assert len(live_contacts(stack)) == 4
    # Found by their markers, adopted; only the one never sent went out again.
    assert len(await requests_to(stack, "/api/v4/leads/complex")) == 2
    by_name = {lead.name: lead for lead in live_leads(stack)}
    for lead in [*made, late]:
        shown = (await get_lead(stack, lead["id"])).json()
        assert shown["state"] == "synced", shown
        assert shown["amo_id"] == by_name[lead["name"]].id
    assert (await get_lead(stack, made[1]["id"])).json()["contact"]["amo_id"] == by_name[
        "lead 1"
    ].contact_ids[0]


async def test_a_500_before_the_create_sends_again_once(stack: Any) -> None:
    await connected(stack)
    lead = (await post_lead(stack, {"name": "once"})).json()
    await stack.control.post(
        "/_sandbox/faults",
        json={"kind": "error", "status": 502, "path_prefix": "/api/v4/leads/complex", "count": 1},
    )
    await drain(stack)
    assert live_leads(stack) == []
    await drain(stack, ahead=LATER)
    (in_amo,) = live_leads(stack)
    assert (await get_lead(stack, lead["id"])).json()["amo_id"] == in_amo.id


async def test_a_refused_lead_fails_with_the_error_and_the_rest_of_the_batch_goes(
    stack: Any,
) -> None:
    await connected(stack)
    good = (await post_lead(stack, {"name": "good"})).json()
    bad = (await post_lead(stack, {"name": "bad", "responsible_user_id": 999})).json()
    await drain(stack)
    assert [lead.name for lead in live_leads(stack)] == ["good"]
    assert (await get_lead(stack, good["id"])).json()["state"] == "synced"
    failed = (await get_lead(stack, bad["id"])).json()
    assert failed["state"] == "failed"
    assert "responsible_user_id" in failed["last_error"]


async def test_the_queue_giving_up_leaves_the_lead_failed_with_the_error(stack: Any) -> None:
    await connected(stack)
    lead = (await post_lead(stack, {"name": "unlucky"})).json()
    await stack.control.post(
        "/_sandbox/faults",
        json={"kind": "error", "status": 503, "path_prefix": "/api/v4/leads/complex"},
    )
    for attempt in range(stack.services.settings.jobs.max_attempts):
        # Each worker's clock a day further on: the next retry is due (its backoff is capped).
        await drain(stack, ahead=timedelta(days=attempt + 1))
    shown = (await get_lead(stack, lead["id"])).json()
    assert shown["state"] == "failed"
    assert "503" in shown["last_error"] or "amoCRM" in shown["last_error"]
    assert live_leads(stack) == []


async def test_a_revoked_grant_pauses_the_push_until_the_owner_connects_again(stack: Any) -> None:
    await connected(stack)
    first = (await post_lead(stack, {"name": "before"})).json()
    revoke = await stack.control.post(
        "/_sandbox/faults", json={"kind": "revoke", "path_prefix": "/api/v4/", "count": 1}
    )
    assert revoke.status_code == 201
    await drain(stack)
    status = await stack.http.get(
        "/amocrm/status", params={"owner": OWNER}, headers=stack.app_headers()
    )
    assert status.json()["status"] == "reauth_required"
    shown = (await get_lead(stack, first["id"])).json()
    assert (shown["state"], shown["connection"]) == ("pending", "reauth_required")
    assert live_leads(stack) == []

    # Accepted all the same: stored, its job waits with the others.
    second = await post_lead(stack, {"name": "while revoked", "stage": "Переговоры"})
    assert second.status_code == 201, second.text
    assert second.json()["connection"] == "reauth_required"
    await drain(stack, ahead=LATER)
    assert live_leads(stack) == []

    await connected(stack)  # the owner re-connects
    await drain(stack)
    assert sorted(lead.name for lead in live_leads(stack)) == ["before", "while revoked"]
    for lead in (first, second.json()):
        shown = (await get_lead(stack, lead["id"])).json()
        assert (shown["state"], shown["connection"]) == ("synced", "active")


async def test_names_accepted_without_a_catalogue_are_resolved_by_the_push(stack: Any) -> None:
    await connected(stack)
    await _drop_catalogue(stack)
    row = await _connection(stack)
    await _mark(stack, row.id, "reauth_required")
    good = await post_lead(stack, {"name": "a", "stage": "переговоры"})
    wrong = await post_lead(stack, {"name": "b", "stage": "Нет такой"})
    assert good.status_code == wrong.status_code == 201
    assert good.json()["unresolved"] == {"pipeline": None, "stage": "переговоры"}
    await connected(stack)
    await drain(stack)
    shown = (await get_lead(stack, good.json()["id"])).json()
    assert (shown["state"], shown["stage"], shown["unresolved"]) == ("synced", "Переговоры", None)
    refused = (await get_lead(stack, wrong.json()["id"])).json()
    assert refused["state"] == "failed"
    assert "Переговоры" in refused["last_error"]
    assert [lead.name for lead in live_leads(stack)] == ["a"]


async def _client(stack: Any) -> Any:
    row = await _connection(stack)
    return await stack.services.clients.client(row)


async def _connection(stack: Any) -> Any:
    async with stack.services.db.read() as session:
        return await stack.services.connections(session).for_owner(OWNER)


async def _mark(stack: Any, connection_id: str, status: str) -> None:
    async with stack.services.db.transaction() as session:
        row = await stack.services.connections(session).get(connection_id)
        row.status = status
    await stack.services.clients.forget(connection_id)


async def _drop_catalogue(stack: Any) -> None:
    from amobridge.sync.repository import CatalogueRepository

    async with stack.services.db.transaction() as session:
        row = await stack.services.connections(session).for_owner(OWNER)
        await CatalogueRepository(session).forget(row.id)


async def test_a_new_contact_found_in_amocrm_is_adopted_and_completed(stack: Any) -> None:
    await connected(stack)
    client = await _client(stack)
    from amobridge.amo.models.contacts import ContactCreate
    from amobridge.amo.models.custom_fields import email_field

    (made,) = await client.contacts.create(
        [ContactCreate(name="Анна", custom_fields_values=[email_field("Anna@Example.com")])]
    )
    created = await stack.http.post(
        "/contacts",
        json={"owner": OWNER, "name": "Анна", "email": "anna@example.com", "phone": "89001112233"},
        headers=stack.app_headers(),
    )
    assert created.status_code == 201
    await drain(stack)
    assert [c.id for c in live_contacts(stack)] == [made.id]
    shown = await stack.http.get(
        f"/contacts/{created.json()['id']}", params={"owner": OWNER}, headers=stack.app_headers()
    )
    assert (shown.json()["state"], shown.json()["amo_id"]) == ("synced", made.id)
    phones = [
        v["value"]
        for item in live_contacts(stack)[0].custom_fields_values
        if item["field_code"] == "PHONE"
        for v in item["values"]
    ]
    assert phones == ["+79001112233"]  # what amoCRM lacked was pushed to it


async def test_a_crash_between_sending_and_committing_is_reconciled(
    stack: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    await connected(stack)
    lead = (await post_lead(stack, {"name": "sent, not recorded"})).json()
    tasks = stack.services.sync_tasks
    real = tasks._created

    async def die(*args: Any, **kwargs: Any) -> None:
        monkeypatch.setattr(tasks, "_created", real)
        raise asyncio.CancelledError  # the process stops after amoCRM answered, before commit

    monkeypatch.setattr(tasks, "_created", die)
    with pytest.raises(asyncio.CancelledError):
        await drain(stack)
    (in_amo,) = live_leads(stack)
    assert (await get_lead(stack, lead["id"])).json()["amo_id"] is None
    await drain(stack)  # the job, handed back, runs again: it finds the lead by its marker
    assert [lead.id for lead in live_leads(stack)] == [in_amo.id]
    assert len(await requests_to(stack, "/api/v4/leads/complex")) == 1
    shown = (await get_lead(stack, lead["id"])).json()
    assert (shown["state"], shown["amo_id"]) == ("synced", in_amo.id)


async def test_a_create_job_its_workers_abandoned_leaves_the_lead_failed_and_retryable(
    stack: Any,
) -> None:
    """A job failed by the queue's upkeep (its worker stopped on every attempt, so no handler
    ever reported an outcome) must not leave its lead ``pending`` with no job to push it."""
    from sqlalchemy import select, update

    from amobridge.storage.tables import Job
    from amobridge.sync import kinds

    await connected(stack)
    lead = (await post_lead(stack, {"name": "orphaned"})).json()
    db = stack.services.db
    async with db.transaction() as session:
        job_id = await session.scalar(select(Job.id).where(Job.kind == kinds.LEAD_CREATE))
        long_ago = datetime.now(UTC) - timedelta(hours=1)
        await session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                state="running",
                attempts=Job.max_attempts,
                locked_by="dead-worker",
                locked_until=long_ago,
            )
        )
    await drain(stack)  # the upkeep fails it
    shown = (await get_lead(stack, lead["id"])).json()
    assert shown["state"] == "failed"
    assert "lease ran out" in shown["last_error"]
    assert live_leads(stack) == []

    retried = await stack.http.post(
        f"/jobs/{job_id}/retry", params={"owner": OWNER}, headers=stack.app_headers()
    )
    assert retried.status_code == 200, retried.text
    await drain(stack)
    assert (await get_lead(stack, lead["id"])).json()["state"] == "synced"
    assert [row.name for row in live_leads(stack)] == ["orphaned"]


async def test_a_create_taken_over_from_a_stalled_worker_waits_for_its_request(
    stack: Any,
) -> None:
    """A worker that lost its lease (stalled, not dead) may still send its create: the worker
    that took the job over waits out the in-flight window before it looks for the lead, so it
    never searches too early and sends a second copy."""
    from amobridge.jobs import JobWorker

    services = stack.services
    await connected(stack)
    await drain(stack)  # the connection's own jobs (none of a lead yet)
    posted = (await post_lead(stack, {"name": "slow send"})).json()

    def worker(name: str, ahead: timedelta) -> JobWorker:
        return JobWorker(
            services.db,
            services.jobs,
            services.job_handlers,
            services.settings.jobs,
            clients=services.clients,
            services=services,
            clock=lambda: datetime.now(UTC) + ahead,
            worker_id=name,
        )

    stalled = worker("stalled", timedelta(0))
    held = await stalled.claim()
    assert len(held) == 1
    # It stamps pushed_at (committed before sending) and then stalls past its lease.
    lease = timedelta(seconds=services.settings.jobs.lease_seconds + 1)
    taker = worker("taker", lease)
    from sqlalchemy import update

    from amobridge.storage.tables import Lead

    async with services.db.transaction() as session:
        await session.execute(
            update(Lead).where(Lead.id == posted["id"]).values(pushed_at=datetime.now(UTC))
        )
    taken = await taker.claim()
    assert [job.id for job in taken] == [held[0].id]
    await taker.execute(taken)
    assert live_leads(stack) == []  # it neither searched too early nor sent
    assert await requests_to(stack, "/api/v4/leads/complex") == []

    await stalled.execute(held)  # the stalled worker's request lands after all
    assert len(live_leads(stack)) == 1

    window = timedelta(seconds=services.settings.sync.in_flight_seconds + 1)
    await drain(stack, ahead=lease + window)  # the window is over: it looks, finds, adopts
    assert len(live_leads(stack)) == 1
    assert (await get_lead(stack, posted["id"])).json()["state"] == "synced"
