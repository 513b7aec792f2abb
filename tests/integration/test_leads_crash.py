"""Crash proofs of the lead push: no lead lost, none doubled, no contact created twice.

- With real processes (``crash_support.py``, the small version of ``bench/crash.py``): leads
  POSTed to ``amobridge serve`` while ``amobridge worker`` processes push them to the sandbox
  (a server of its own, amoCRM's 7 requests/s on) and one of them is killed with SIGKILL, three
  times, while it holds push jobs; then the sandbox holds each lead exactly once with its
  contact, the shared contacts once, and every local row is ``synced`` — on SQLite and on
  PostgreSQL.
- In-process, the case the process proof found: a kill after amoCRM created a lead *and its new
  contact*, before the commit. The job taken over finds the lead by its marker and adopts it; a
  lead of the same run that shares the contact (mirror-authoritative: no contact search in
  amoCRM) must link the contact the adopted lead created, not create it a second time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from crash_support import CrashConfig, run_crash
from leads_support import (
    connected,
    drain,
    get_lead,
    live_contacts,
    live_leads,
    post_lead,
    requests_to,
)

from database_support import DATABASE_KINDS, fresh_database

# The in-flight window at 4 s (75 by default): the sandbox answers within a second, and it still
# outlasts the 2 s lease a stalled worker would lose.
SMALL = CrashConfig(
    leads=200, kills=3, workers=2, lease_seconds=2.0, in_flight_seconds=4.0, deadline=90.0
)


@pytest.fixture(params=DATABASE_KINDS)
def crash_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    with fresh_database(request, request.param, tmp_path / "db") as url:
        yield request.param, url


@pytest.mark.slow  # a sandbox server, the service and two workers started four times
@pytest.mark.timeout(240)
def test_no_lead_is_lost_or_doubled_while_workers_are_killed(
    crash_database: tuple[str, str], tmp_path: Path
) -> None:
    database, url = crash_database
    result = run_crash(database, url, tmp_path / "run", SMALL, seed=7)
    assert result.problems == [], result.public()
    # A kill waits for a worker holding push jobs (10 s at most, else any worker dies): on a
    # machine this busy, at least one of them interrupted a push.
    assert result.kills_holding_jobs >= 1, result.kill_log
    assert result.sandbox_leads == SMALL.leads
    assert result.sandbox_contacts == result.contacts_expected == 180


def _mirror_authoritative(stack: Any) -> None:
    settings = stack.services.settings
    stack.services.sync_tasks.settings = settings.model_copy(
        update={"sync": settings.sync.model_copy(update={"mirror_authoritative": True})}
    )


async def test_a_crash_after_a_shared_contacts_create_does_not_create_it_again(
    stack: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _mirror_authoritative(stack)
    await connected(stack)
    gives = (
        await post_lead(stack, {"name": "gives", "contact": {"email": "one@example.com"}})
    ).json()
    shares = (
        await post_lead(stack, {"name": "shares", "contact": {"email": "ONE@example.com"}})
    ).json()
    assert gives["contact"]["id"] == shares["contact"]["id"]
    tasks = stack.services.sync_tasks
    real = tasks._created

    async def die(*args: Any, **kwargs: Any) -> None:
        monkeypatch.setattr(tasks, "_created", real)
        raise asyncio.CancelledError  # killed after amoCRM created the lead and its contact

    monkeypatch.setattr(tasks, "_created", die)
    with pytest.raises(asyncio.CancelledError):
        await drain(stack)
    # The first request of the run created "gives" with the contact; "shares" waited for it.
    assert [lead.name for lead in live_leads(stack)] == ["gives"]
    (contact,) = live_contacts(stack)
    await drain(stack)  # handed back: "gives" is adopted by its marker, "shares" is sent
    assert [c.id for c in live_contacts(stack)] == [contact.id]
    assert sorted(lead.name for lead in live_leads(stack)) == ["gives", "shares"]
    assert all(lead.contact_ids == [contact.id] for lead in live_leads(stack))
    assert len(await requests_to(stack, "/api/v4/leads/complex")) == 2
    for made in (gives, shares):
        shown = (await get_lead(stack, made["id"])).json()
        assert shown["state"] == "synced", shown
        assert shown["contact"]["amo_id"] == contact.id
