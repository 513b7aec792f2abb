"""An import stopped mid-way — its second lead page failing in amoCRM, or its handler cancelled
as a stopping worker cancels it — goes on from its last committed page: no lead twice, and the
first page is never read again. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from import_support import (
    LATER,
    freeze_sandbox_clock,
    get_import,
    list_requests,
    mirror_leads,
    pull_worker,
    run_pulls,
    seed,
    start_import,
)
from leads_support import connected

from amobridge.amo.retry import set_testing

SECOND_LEAD_PAGE = {"method": "GET", "path_prefix": "/api/v4/leads", "query": {"page": "2"}}


@pytest.fixture(autouse=True)
def _no_backoff_waits() -> Iterator[None]:
    """The SDK retries the failing page as in production, without its jittered waits."""
    set_testing(True)
    yield
    set_testing(False)


async def _seeded(stack: Any) -> list[int]:
    await connected(stack)
    # One created_at for all: the second lead request is page 2 of that second.
    await freeze_sandbox_clock(stack)
    return await seed(stack, "leads", 600)


def _lead_pages(requests: list[dict[str, str]]) -> list[str]:
    return [r["page"] for r in requests]


async def test_a_failing_second_page_resumes_there_without_duplicates(stack: Any) -> None:
    leads = await _seeded(stack)
    fault = await stack.control.post(
        "/_sandbox/faults", json={"kind": "error", "status": 500, **SECOND_LEAD_PAGE}
    )
    assert fault.status_code == 201, fault.text
    made = (await start_import(stack)).json()
    await run_pulls(stack)

    waiting = (await get_import(stack, made["id"])).json()
    assert waiting["state"] == "waiting", waiting
    assert "will try again" in waiting["last_error"]
    assert (waiting["entity"], waiting["page"]) == ("leads", 2)
    assert waiting["counts"]["leads"] == 250
    assert waiting["job"]["state"] == "pending"
    assert len(await mirror_leads(stack)) == 250

    await stack.control.delete("/_sandbox/faults")
    await run_pulls(stack, ahead=LATER)  # the job's retry is due
    done = (await get_import(stack, made["id"])).json()
    assert done["state"] == "succeeded", done
    assert done["counts"]["leads"] == 600
    assert done["pages"]["leads"] == 3
    rows = await mirror_leads(stack)
    assert sorted(row.amo_id for row in rows) == sorted(leads)  # each once
    pages = await list_requests(stack, "/api/v4/leads")
    assert _lead_pages(pages).count("1") == 1  # the first page was read once
    assert [p["status"] for p in pages if p["page"] == "2"][-1] == "200"


async def test_an_import_failed_for_good_is_resumed_by_the_next_request(stack: Any) -> None:
    await _seeded(stack)
    await stack.control.post(
        "/_sandbox/faults", json={"kind": "error", "status": 400, **SECOND_LEAD_PAGE}
    )
    made = (await start_import(stack)).json()
    await run_pulls(stack)
    failed = (await get_import(stack, made["id"])).json()
    assert failed["state"] == "failed", failed
    assert failed["job"]["state"] == "failed"
    assert failed["finished_at"] is not None

    await stack.control.delete("/_sandbox/faults")
    again = await start_import(stack)
    assert again.status_code == 202
    assert again.json()["id"] == made["id"]
    assert again.json()["state"] == "queued"
    await run_pulls(stack)
    done = (await get_import(stack, made["id"])).json()
    assert done["state"] == "succeeded", done
    assert len(await mirror_leads(stack)) == 600
    assert _lead_pages(await list_requests(stack, "/api/v4/leads")).count("1") == 1


async def test_a_cancelled_handler_hands_back_and_goes_on_from_its_cursor(
    stack: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    leads = await _seeded(stack)
    # The second page hangs: the handler is inside it (reading ahead) when it is cancelled.
    await stack.control.post(
        "/_sandbox/faults", json={"kind": "slow", "delay": 600, **SECOND_LEAD_PAGE}
    )
    tasks = stack.services.import_tasks
    applied = asyncio.Event()
    original = tasks._apply

    async def noting(*args: Any, **kwargs: Any) -> Any:
        row = await original(*args, **kwargs)
        if row.pages.get("leads"):
            applied.set()
        return row

    monkeypatch.setattr(tasks, "_apply", noting)
    made = (await start_import(stack)).json()
    worker = pull_worker(stack)
    jobs = await worker.claim()
    running = asyncio.create_task(worker.execute(jobs))
    await asyncio.wait_for(applied.wait(), 30)
    running.cancel()  # what a stopping worker does to a handler past its grace
    with pytest.raises(asyncio.CancelledError):
        await running

    stopped = (await get_import(stack, made["id"])).json()
    assert (stopped["entity"], stopped["page"], stopped["counts"]["leads"]) == ("leads", 2, 250)
    assert stopped["job"]["state"] == "pending"  # handed back, its attempt not counted
    await stack.control.delete("/_sandbox/faults")
    monkeypatch.undo()
    await run_pulls(stack)
    done = (await get_import(stack, made["id"])).json()
    assert done["state"] == "succeeded", done
    assert sorted(row.amo_id for row in await mirror_leads(stack)) == sorted(leads)
    assert _lead_pages(await list_requests(stack, "/api/v4/leads")).count("1") == 1


async def test_a_page_that_meets_a_row_stored_meanwhile_is_written_again(
    stack: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A webhook storing one of the page's leads between the page's read and its insert makes
    the insert fail on the unique amoCRM id: the page is written again, now updating it."""
    from sqlalchemy.exc import IntegrityError

    leads = await _seeded(stack)
    upsert = stack.services.import_tasks.upsert
    original = upsert.leads
    raced: list[int] = []

    async def racing(session: Any, **kwargs: Any) -> Any:
        if not raced:
            raced.append(1)
            raise IntegrityError("INSERT INTO leads …", {}, Exception("duplicate amo_id"))
        return await original(session, **kwargs)

    monkeypatch.setattr(upsert, "leads", racing)
    made = (await start_import(stack)).json()
    await run_pulls(stack)
    done = (await get_import(stack, made["id"])).json()
    assert done["state"] == "succeeded", done
    assert done["pages"]["leads"] == 3
    assert sorted(row.amo_id for row in await mirror_leads(stack)) == sorted(leads)
