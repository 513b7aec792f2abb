"""Tenant A's amoCRM account fails in every way amoCRM and the network fail while its leads are
pushed; tenant B's is healthy. Every lead of both reaches amoCRM exactly once, no contact is
doubled, no job is lost or failed, and B's leads keep going while A is banned or waits for its
owner to connect again (see faults_support.py; bench/faults.py runs 2,000 leads and measures
B's latency).

The worker runs in-process step by step (as leads_support.drain), on a VirtualClock: a backoff,
or the hour a ban is assumed to last, passes with one ``advance``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from faults_support import (
    VirtualClock,
    ambiguous_creates,
    breakers_on,
    burst,
    lead_body,
    noise,
    revoke,
    tenant_report,
)
from sqlalchemy import select

from amobridge.amo.retry import set_testing
from amobridge.jobs import JobWorker
from amobridge.sandbox import SandboxConfig
from amobridge.sandbox.faults import FaultInjector
from amobridge.storage.tables import Job, Lead

A, B = "tenant-a", "tenant-b"
A_LEADS = 150  # 2,000 in bench/faults.py: every request here waits its turn in the 7 a second
A_CONTACTS = 10
B_LEADS = 12
TIMEOUT_DELAY = 0.3  # s an injected timeout holds the request before its 504
LATER = 2 * 3600.0  # past any backoff and the hour a ban is assumed to last


@pytest.fixture
def sandbox_config() -> SandboxConfig:
    # The sandbox's limiter is off (the service's pace keeps under it); injected 429s still
    # count towards a ban, and the ban this test wants comes when it says.
    return SandboxConfig(rate_limit_enabled=False, ban_after_violations=1000)


@pytest.fixture(autouse=True)
def _no_retry_waits() -> Any:
    set_testing(True)  # the SDK's backoff between retries of one request: zero
    yield
    set_testing(False)


@pytest.fixture
def clock() -> Any:
    virtual = VirtualClock()
    with breakers_on(virtual):
        yield virtual


@pytest.fixture
def stack_overrides() -> dict[str, Any]:
    return {"jobs": {"max_attempts": 12}}


async def drain(stack: Any, clock: VirtualClock, *, batches: int = 400) -> int:
    """Run the worker (its upkeep too) until nothing is due on ``clock``, or ``batches``
    batches ran; the number of jobs run."""
    services = stack.services
    worker = JobWorker(
        services.db,
        services.jobs,
        services.job_handlers,
        services.settings.jobs,
        clients=services.clients,
        services=services,
        clock=clock.now,
    )
    total = 0
    for _ in range(batches):
        await worker.tasks.upkeep()
        claimed = await worker.run_once()
        if not claimed:
            break
        total += len(claimed)
    return total


async def states(stack: Any, owner: str) -> tuple[Counter[str], Counter[str]]:
    """(lead sync states, job states) of the owner's push."""
    async with stack.services.db.read() as session:
        leads = Counter(await session.scalars(select(Lead.sync_state).where(Lead.owner == owner)))
        jobs = Counter(
            await session.scalars(
                select(Job.state).where(Job.owner == owner, Job.kind.like("sync.%"))
            )
        )
    return leads, jobs


async def paused_reasons(stack: Any, owner: str) -> Counter[str | None]:
    async with stack.services.db.read() as session:
        return Counter(
            await session.scalars(
                select(Job.paused_reason).where(Job.owner == owner, Job.state == "paused")
            )
        )


async def post(stack: Any, owner: str, first: int, count: int, contacts: int) -> None:
    for i in range(first, first + count):
        made = await stack.http.post(
            "/leads", json=lead_body(owner, i, contacts=contacts), headers=stack.app_headers()
        )
        assert made.status_code == 201, made.text


async def fault(stack: Any, *specs: dict[str, Any]) -> None:
    added = await stack.control.post("/_sandbox/faults", json=list(specs))
    assert added.status_code == 201, added.text


async def status(stack: Any, owner: str) -> str:
    shown = await stack.http.get(
        "/amocrm/status", params={"owner": owner}, headers=stack.app_headers()
    )
    return str(shown.json()["status"])


@pytest.mark.slow
async def test_a_sick_tenant_syncs_every_lead_once_and_the_healthy_one_keeps_going(
    stack: Any, clock: VirtualClock
) -> None:
    stack.sandbox.faults = FaultInjector(seed=20240501)  # the same run every time
    a_account = stack.account["id"]
    beta = await stack.control.post("/_sandbox/accounts", json={"subdomain": "beta"})
    b_account = beta.json()["id"]
    assert (await stack.connect(A)).status_code == 200
    assert (await stack.connect(B, account_id=b_account)).status_code == 200
    await post(stack, A, 0, A_LEADS, A_CONTACTS)
    await post(stack, B, 0, B_LEADS // 3, B_LEADS)

    # 1. A's account starts with a 429 burst, two certain ambiguous creates and 10 % noise.
    await fault(
        stack,
        burst(a_account, 3),
        *ambiguous_creates(a_account, timeout_delay=TIMEOUT_DELAY),
        *noise(a_account, timeout_delay=TIMEOUT_DELAY),
    )
    await drain(stack, clock, batches=2)
    leads, _ = await states(stack, B)
    assert leads == {"synced": B_LEADS // 3}  # B's first leads went right after A's first 50

    # 2. A is banned: its jobs wait for the ban's end; B's go on meanwhile.
    banned = await stack.control.post(
        "/_sandbox/ban", json={"account_id": a_account, "seconds": 600}
    )
    assert banned.status_code == 200
    await post(stack, B, B_LEADS // 3, B_LEADS // 3, B_LEADS)
    await drain(stack, clock)
    assert (await paused_reasons(stack, A)).keys() == {"banned"}
    leads, _ = await states(stack, B)
    assert leads == {"synced": 2 * (B_LEADS // 3)}

    # 3. The ban ends (amoCRM's side and the hour the service assumed); a second burst.
    await stack.control.post("/_sandbox/clock", json={"advance_seconds": 601})
    clock.advance(LATER)
    await fault(stack, burst(a_account, 4))
    await drain(stack, clock, batches=1)

    # 4. A's grant is revoked: A's jobs wait for its owner; B's go on.
    await fault(stack, revoke(a_account))
    await drain(stack, clock)
    assert await status(stack, A) == "reauth_required"
    assert set(await paused_reasons(stack, A)) == {"reauth_required"}
    await post(stack, B, 2 * (B_LEADS // 3), B_LEADS - 2 * (B_LEADS // 3), B_LEADS)
    await drain(stack, clock)
    clock.advance(LATER)
    await drain(stack, clock)  # however late it gets, nothing of A's runs without its grant
    leads, _ = await states(stack, B)
    assert leads == {"synced": B_LEADS}
    assert set(await paused_reasons(stack, A)) == {"reauth_required"}

    # 5. A's owner connects again: everything of A's resumes and gets through the noise.
    assert (await stack.connect(A)).status_code == 200
    for _ in range(30):
        await drain(stack, clock)
        _, jobs = await states(stack, A)
        if set(jobs) == {"succeeded"}:
            break
        clock.advance(LATER)
    await stack.control.delete("/_sandbox/faults")

    for owner, count in ((A, A_LEADS), (B, B_LEADS)):
        report = await tenant_report(stack.services, owner)
        assert report.holds, report
        assert report.local == count
    assert (await tenant_report(stack.services, A)).contacts == A_CONTACTS
    log = (await stack.control.get("/_sandbox/requests", params={"account_id": a_account})).json()
    seen = Counter(r["fault"] for r in log if r["fault"])
    # The faults happened: the run above proved something.
    assert seen["error"] >= 3, seen
    assert seen["rate_limit"] >= 7, seen
    assert seen["timeout"] >= 1, seen
    assert seen["revoke"] == 1
    assert any(r["status"] == 403 for r in log)  # the ban was met


async def test_a_mirror_authoritative_push_searches_a_contact_an_unanswered_create_carried(
    stack: Any,
) -> None:
    """With AMOBRIDGE_SYNC__MIRROR_AUTHORITATIVE the push does not search amoCRM for a new
    contact. But a contact that went with a create whose reply was lost may be in amoCRM: the
    next lead with that contact, pushed before the first one's retry, created it a second time."""
    sync = stack.services.settings.sync.model_copy(update={"mirror_authoritative": True})
    stack.services.sync_tasks.settings = stack.services.settings.model_copy(update={"sync": sync})
    assert (await stack.connect(A)).status_code == 200
    clock = VirtualClock()
    first = lead_body(A, 0, contacts=1)
    made = await stack.http.post("/leads", json=first, headers=stack.app_headers())
    assert made.status_code == 201
    await fault(stack, ambiguous_creates(stack.account["id"], timeout_delay=0)[0])
    await drain(stack, clock)  # created in amoCRM, the reply lost: its retry waits
    second = lead_body(A, 1, contacts=1)  # the same contact, its e-mail upper-cased
    made = await stack.http.post("/leads", json=second, headers=stack.app_headers())
    assert made.status_code == 201
    await drain(stack, clock)
    clock.advance(LATER)
    await drain(stack, clock)
    report = await tenant_report(stack.services, A)
    assert report.holds, report
    assert report.contacts == 1
