"""The periodic catch-up: leads and contacts changed in amoCRM since the last import or catch-up
reach the mirror without any webhook, amoCRM's ``updated_at`` deciding each conflict with a
local change. On SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from import_support import (
    LATER,
    imports_of,
    list_requests,
    mirror_contacts,
    mirror_leads,
    run_pulls,
    seed,
    start_import,
)
from leads_support import OWNER, account, connected, drain, get_lead

from amobridge.sync import kinds

INTERVAL = timedelta(minutes=10)


async def _imported(stack: Any, leads: int = 3) -> list[int]:
    await connected(stack)
    made = await seed(stack, "leads", leads, lambda i: {"name": f"lead {i}", "price": 100 + i})
    await start_import(stack)
    assert await run_pulls(stack) == 1
    return made


async def _amo_edit(stack: Any, lead_id: int, **changes: Any) -> None:
    """A manager's edit in amoCRM (no webhook: nothing is subscribed)."""
    reply = await stack.control.patch(
        f"/_sandbox/accounts/{stack.account['id']}/leads/{lead_id}", json=changes
    )
    assert reply.status_code == 200, reply.text


async def _catch_up(stack: Any) -> None:
    assert await stack.services.imports.schedule_catchups() == 1
    assert await run_pulls(stack) == 1


async def _row(stack: Any, amo_id: int) -> Any:
    return next(row for row in await mirror_leads(stack) if row.amo_id == amo_id)


async def test_a_lead_changed_in_amocrm_is_caught_up_without_a_webhook(stack: Any) -> None:
    made = await _imported(stack)
    await _amo_edit(stack, made[1], name="renamed in amoCRM", price=999)
    extra = await seed(stack, "contacts", 1, lambda i: {"name": "new person", "email": "n@x.io"})

    await _catch_up(stack)
    row = await _row(stack, made[1])
    assert (row.name, row.price, row.sync_state) == ("renamed in amoCRM", 999, "synced")
    assert row.amo_updated_at == datetime.fromtimestamp(
        account(stack).leads[made[1]].updated_at, UTC
    )
    (person,) = await mirror_contacts(stack)
    assert (person.amo_id, person.email) == (extra[0], "n@x.io")

    (run,) = await imports_of(stack, "catchup")
    assert run.state == "succeeded"
    assert run.since is not None
    (full,) = await imports_of(stack, "import")
    # From the import's start, less the overlap; by updated_at, oldest first.
    overlap = timedelta(seconds=stack.services.settings.sync.catchup_overlap_seconds)
    assert run.since == full.started_at - overlap
    (leads_page,) = (await list_requests(stack, "/api/v4/leads"))[1:]
    assert leads_page["filter[updated_at][from]"] == str(int(run.since.timestamp()))
    assert leads_page["order[updated_at]"] == "asc"


async def test_catch_ups_are_one_per_connection_and_interval(stack: Any) -> None:
    await _imported(stack)
    imports = stack.services.imports
    assert await imports.schedule_catchups() == 1
    assert await imports.schedule_catchups() == 0  # queued already
    await run_pulls(stack)
    assert await imports.schedule_catchups() == 0  # the last one finished just now
    later = datetime.now(UTC) + INTERVAL + timedelta(seconds=1)
    assert await imports.schedule_catchups(now=later) == 1
    await run_pulls(stack)
    first, second = await imports_of(stack, "catchup")
    # Each starts from the mark of the last one that succeeded, less the overlap.
    overlap = timedelta(seconds=stack.services.settings.sync.catchup_overlap_seconds)
    assert second.since == first.started_at - overlap
    # Old ones are purged; the newest succeeded run of the connection stays (its mark).
    assert await imports.purge(now=datetime.now(UTC) + timedelta(days=8)) == 1
    assert [run.id for run in await imports_of(stack, "catchup")] == [second.id]


async def test_a_newer_local_change_not_pushed_yet_is_kept_and_pushed_again(stack: Any) -> None:
    made = await _imported(stack)
    await _amo_edit(stack, made[0], name="older amoCRM name", price=555)
    row = await _row(stack, made[0])
    # Changed here after amoCRM's change, not pushed yet.
    patched = await stack.http.patch(
        f"/leads/{row.id}",
        params={"owner": OWNER},
        json={"name": "newer local name"},
        headers=stack.app_headers(),
    )
    assert patched.status_code == 200, patched.text

    await _catch_up(stack)
    kept = await _row(stack, made[0])
    assert kept.name == "newer local name"  # the local change won
    assert kept.price == 555  # a field changed only in amoCRM is taken
    assert kept.sync_state == "pending"
    assert "name" in kept.dirty
    (run,) = await imports_of(stack, "catchup")
    assert run.counts["changes"]["kept_local"] == 1

    # ... and is pushed to amoCRM, once.
    await drain(stack, ahead=LATER)
    assert account(stack).leads[made[0]].name == "newer local name"
    shown = (await get_lead(stack, row.id)).json()
    assert shown["state"] == "synced", shown
    assert shown["price"] == 555


async def test_a_newer_amocrm_change_replaces_an_older_local_one(stack: Any) -> None:
    made = await _imported(stack)
    row = await _row(stack, made[2])
    patched = await stack.http.patch(
        f"/leads/{row.id}", params={"owner": OWNER}, json={"price": 1}, headers=stack.app_headers()
    )
    assert patched.status_code == 200
    # amoCRM's change comes later (its clock a minute on).
    await stack.control.post("/_sandbox/clock", json={"advance_seconds": 60})
    await _amo_edit(stack, made[2], price=777)

    await _catch_up(stack)
    taken = await _row(stack, made[2])
    assert (taken.price, taken.dirty, taken.sync_state) == (777, {}, "synced")
    # The update job queued by the PATCH has nothing left to send.
    before = len([r for r in await list_requests(stack, "/api/v4/leads")])
    await drain(stack, ahead=LATER)
    assert account(stack).leads[made[2]].price == 777
    assert len(await list_requests(stack, "/api/v4/leads")) == before


async def test_an_older_page_never_overwrites_a_newer_row(stack: Any) -> None:
    """What a webhook stored moments ago (a newer ``amo_updated_at``) stays as it is when a
    catch-up reads amoCRM's older state of the same lead."""
    made = await _imported(stack)
    await _amo_edit(stack, made[1], name="amoCRM, earlier")
    newer = datetime.now(UTC) + timedelta(hours=1)
    async with stack.services.db.transaction() as session:
        from sqlalchemy import update

        from amobridge.storage.tables import Lead

        await session.execute(
            update(Lead)
            .where(Lead.amo_id == made[1])
            .values(name="from a newer webhook", amo_updated_at=newer)
        )
    await _catch_up(stack)
    row = await _row(stack, made[1])
    assert (row.name, row.amo_updated_at) == ("from a newer webhook", newer)
    (run,) = await imports_of(stack, "catchup")
    assert run.counts["changes"]["stale"] == 1


async def test_no_catch_up_while_an_import_is_under_way_or_when_off(stack: Any) -> None:
    await connected(stack)
    await start_import(stack)
    assert await stack.services.imports.schedule_catchups() == 0
    await run_pulls(stack)
    settings = stack.services.settings
    off = settings.sync.model_copy(update={"catchup_minutes": 0})
    stack.services.imports.settings = settings.model_copy(update={"sync": off})
    later = datetime.now(UTC) + INTERVAL * 10
    assert await stack.services.imports.schedule_catchups(now=later) == 0
    assert kinds.CATCHUP in stack.services.job_handlers
