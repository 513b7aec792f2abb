"""The job queue on SQLite and PostgreSQL: what enqueue keeps (and what a rollback leaves), how
claims choose (dedup, ordering, batches, fairness across connections), and what each outcome
and error makes of a job (backoff, failed, paused with its connection and resumed, rescheduled
after a 429, a lease taken over and its old outcome dropped)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import pytest
from _jobs import Jobs, job_queue

from amobridge.amo.errors import (
    AmoBanned,
    AmoRateLimited,
    AmoReauthRequired,
    AmoServerError,
    AmoValidationError,
)
from amobridge.connect.clients import ConnectionDisconnected
from amobridge.errors import Conflict, NotFound
from amobridge.jobs import JobContext
from amobridge.jobs import worker as worker_module
from amobridge.storage.tables import Job


@pytest.fixture
async def jobs(database_url: str) -> Any:
    async with job_queue(database_url) as found:
        yield found


def recorder(seen: list[int], *, result: dict[str, Any] | None = None) -> Any:
    async def handle(context: JobContext, batch: Sequence[Job]) -> None:
        for job in batch:
            seen.append(job.id)
            context.succeed(job, result)

    return handle


def raising(error: BaseException) -> Any:
    async def handle(context: JobContext, batch: Sequence[Job]) -> None:
        raise error

    return handle


# --- enqueue -------------------------------------------------------------------------------------


async def test_enqueue_in_a_rolled_back_unit_leaves_no_job(jobs: Jobs) -> None:
    jobs.handlers.register("t.work", recorder([]))

    async def change_that_fails() -> None:
        async with jobs.db.transaction() as session:
            await jobs.queue.enqueue(session, kind="t.work", payload={"n": 1})
            raise RuntimeError("the business change failed")

    with pytest.raises(RuntimeError):
        await change_that_fails()
    assert await jobs.states() == {}
    assert not await jobs.queue.signal.wait(0)  # nobody was woken for it
    assert await jobs.worker().claim() == []


async def test_enqueued_and_committed_is_claimed_and_wakes_the_worker(jobs: Jobs) -> None:
    seen: list[int] = []
    jobs.handlers.register("t.work", recorder(seen, result={"ok": True}))
    async with jobs.db.transaction() as session:
        job = await jobs.queue.enqueue(
            session, kind="t.work", payload={"lead": 7}, owner="user-1", connection_id="c1"
        )
        assert not await jobs.queue.signal.wait(0)  # not before the commit
    assert await jobs.queue.signal.wait(0)
    assert len(job.idempotency_key) == 32
    claimed = await jobs.worker().run_once()
    assert [c.id for c in claimed] == [job.id] == seen
    done = await jobs.job(job.id)
    assert (done.state, done.attempts, done.result) == ("succeeded", 1, {"ok": True})
    assert done.finished_at is not None
    assert done.locked_by is None
    async with jobs.db.read() as session:
        counts = await jobs.queue.counts(session, owner="user-1")
    assert counts["succeeded"] == 1
    assert set(counts) >= {"pending", "failed", "paused"}


async def test_dedup_key_returns_the_unfinished_job(jobs: Jobs) -> None:
    jobs.handlers.register("t.sync", recorder([]))
    first = await jobs.enqueue(kind="t.sync", dedup_key="catch-up:c1")
    again = await jobs.enqueue(kind="t.sync", dedup_key="catch-up:c1")
    other = await jobs.enqueue(kind="t.sync", dedup_key="catch-up:c2")
    assert again.id == first.id
    assert other.id != first.id
    assert len(await jobs.states()) == 2
    worker = jobs.worker()
    await worker.run_once()
    await worker.run_once()
    after = await jobs.enqueue(kind="t.sync", dedup_key="catch-up:c1")  # the first is done
    assert after.id not in (first.id, other.id)


async def test_a_retried_job_does_not_break_its_dedup_key(jobs: Jobs) -> None:
    jobs.handlers.register("t.sync", raising(AmoValidationError("no", status=400)))
    failed = await jobs.enqueue(kind="t.sync", dedup_key="k")
    await jobs.worker().run_once()
    assert (await jobs.job(failed.id)).state == "failed"
    queued = await jobs.enqueue(kind="t.sync", dedup_key="k")
    async with jobs.db.transaction() as session:
        with pytest.raises(Conflict, match=f"job {queued.id}"):
            await jobs.queue.retry(session, failed.id)


# --- what a claim takes --------------------------------------------------------------------------


async def test_ordering_key_runs_one_at_a_time_in_id_order(jobs: Jobs) -> None:
    jobs.handlers.register("t.lead", recorder([]))
    create, update, _move = await jobs.many(3, kind="t.lead", ordering_key="lead:1")
    unrelated = await jobs.enqueue(kind="t.lead", ordering_key="lead:2")
    first, second = jobs.worker("a"), jobs.worker("b")
    assert [j.id for j in await first.claim()] == [create.id]
    assert [j.id for j in await second.claim()] == [unrelated.id]  # lead:1 has one running
    assert await second.claim() == []
    await first.execute([await jobs.job(create.id)])
    assert [j.id for j in await second.claim()] == [update.id]


async def test_a_paused_job_holds_the_later_ones_of_its_key(jobs: Jobs) -> None:
    async def handle(context: JobContext, batch: Sequence[Job]) -> None:
        for job in batch:
            context.pause(job, "waiting_for_catalogue")

    jobs.handlers.register("t.lead", handle)
    held, later = await jobs.many(2, kind="t.lead", ordering_key="lead:1")
    worker = jobs.worker()
    await worker.run_once()
    assert (await jobs.job(held.id)).state == "paused"
    assert await worker.claim() == []  # the update must not overtake the paused create
    async with jobs.db.transaction() as session:
        await jobs.queue.cancel(session, held.id)
    assert [j.id for j in await worker.claim()] == [later.id]


async def test_a_batch_is_one_kind_of_one_connection(jobs: Jobs) -> None:
    batches: list[list[int]] = []

    async def handle(context: JobContext, batch: Sequence[Job]) -> None:
        batches.append([job.id for job in batch])
        assert len({(job.kind, job.connection_id) for job in batch}) == 1

    jobs.handlers.register("t.push", handle, batch_size=3)
    jobs.handlers.register("t.other", recorder([]))
    a = await jobs.many(5, kind="t.push", connection_id="ca")
    other_kind = await jobs.enqueue(kind="t.other", connection_id="ca")
    b = await jobs.enqueue(kind="t.push", connection_id="cb")
    worker = jobs.worker()
    for _ in range(5):
        await worker.run_once()
    assert batches[0] == [job.id for job in a[:3]]
    assert sorted(i for batch in batches for i in batch) == sorted([job.id for job in [*a, b]])
    assert all(len(batch) <= 3 for batch in batches)
    assert (await jobs.job(other_kind.id)).state == "succeeded"


async def test_a_backlog_of_one_connection_does_not_hold_up_another(jobs: Jobs) -> None:
    jobs.handlers.register("t.push", recorder([]))
    await jobs.many(500, kind="t.push", connection_id="busy")
    lone = await jobs.enqueue(kind="t.push", connection_id="quiet")
    worker = jobs.worker()
    # Claimed one after the other, each run to the end: the quiet connection's job is next.
    first = await worker.run_once()
    second = await worker.run_once()
    assert lone.id in [job.id for job in first + second]
    # And while the busy connection has a job running, a claim skips its whole backlog.
    late = await jobs.enqueue(kind="t.push", connection_id="late")
    running = await worker.claim()
    assert running[0].connection_id == "busy"
    assert [job.id for job in await jobs.worker("w2").claim()] == [late.id]


async def test_connection_concurrency_holds_across_workers(database_url: str) -> None:
    async with job_queue(database_url, connection_concurrency=2) as jobs:
        jobs.handlers.register("t.push", recorder([]))
        await jobs.many(4, kind="t.push", connection_id="c1")
        claims = [await jobs.worker(f"w{i}").claim() for i in range(4)]
        assert [len(claim) for claim in claims] == [1, 1, 0, 0]


async def test_only_registered_kinds_are_claimed(jobs: Jobs) -> None:
    jobs.handlers.register("t.mine", recorder([]))
    await jobs.enqueue(kind="t.someone_elses")
    assert await jobs.worker().claim() == []


# --- outcomes ------------------------------------------------------------------------------------


async def test_retryable_errors_back_off_then_fail_with_the_error(jobs: Jobs) -> None:
    jobs.handlers.register("t.push", raising(AmoServerError("amoCRM failed (502)", status=502)))
    job = await jobs.enqueue(kind="t.push", max_attempts=3)
    worker = jobs.worker()  # jitter 0.5: half-way between half and all of the ceiling
    await worker.run_once()
    first = await jobs.job(job.id)
    assert (first.state, first.attempts) == ("pending", 1)
    assert first.run_after - jobs.clock.now == timedelta(seconds=7.5)  # base 10: 5..10
    assert "amoCRM failed (502)" in (first.last_error or "")
    assert await worker.claim() == []  # not due yet
    jobs.clock.advance(8)
    await worker.run_once()
    second = await jobs.job(job.id)
    assert second.run_after - jobs.clock.now == timedelta(seconds=15)  # 10..20
    jobs.clock.advance(16)
    await worker.run_once()
    failed = await jobs.job(job.id)
    assert (failed.state, failed.attempts) == ("failed", 3)
    assert "no attempts left" in (failed.last_error or "")
    assert failed.finished_at is not None


async def test_a_non_retryable_error_fails_at_once(jobs: Jobs) -> None:
    jobs.handlers.register("t.push", raising(AmoValidationError("bad field", status=422)))
    job = await jobs.enqueue(kind="t.push")
    await jobs.worker().run_once()
    failed = await jobs.job(job.id)
    assert (failed.state, failed.attempts) == ("failed", 1)
    assert (failed.last_error or "").startswith("AmoValidationError: bad field")


async def test_a_rate_limited_job_is_rescheduled_without_counting(jobs: Jobs) -> None:
    jobs.handlers.register("t.push", raising(AmoRateLimited("429", status=429, retry_after=7)))
    job = await jobs.enqueue(kind="t.push")
    worker = jobs.worker()
    await worker.run_once()
    later = await jobs.job(job.id)
    assert (later.state, later.attempts) == ("pending", 0)
    assert later.run_after - jobs.clock.now == timedelta(seconds=7)
    jobs.clock.advance(6.9)
    assert await worker.claim() == []
    jobs.clock.advance(0.1)
    assert [j.id for j in await worker.claim()] == [job.id]


async def test_a_dead_grant_pauses_the_connection_until_it_is_active_again(jobs: Jobs) -> None:
    connection = await jobs.connection()
    dead = True
    seen: list[int] = []

    async def handle(context: JobContext, batch: Sequence[Job]) -> None:
        if dead:
            raise AmoReauthRequired("refresh token revoked: connect again", status=400)
        for job in batch:
            seen.append(job.id)

    jobs.handlers.register("t.push", handle)
    first, queued = await jobs.many(2, kind="t.push", connection_id=connection)
    other = await jobs.enqueue(kind="t.push", connection_id="another-tenant")
    worker = jobs.worker()
    await worker.run_once()
    for job_id in (first.id, queued.id):
        paused = await jobs.job(job_id)
        assert (paused.state, paused.paused_reason, paused.attempts) == (
            "paused",
            "reauth_required",
            0,
        )
    assert "revoked" in ((await jobs.job(first.id)).last_error or "")
    # Another tenant's job still runs; the reauth handler flags the connection meanwhile.
    dead = False
    await jobs.set_status(connection, "reauth_required")
    assert [j.id for j in await worker.run_once()] == [other.id]
    newer = await jobs.enqueue(kind="t.push", connection_id=connection)
    assert await worker.claim() == []  # a job of a connection needing re-auth waits too
    await worker.tasks.upkeep()
    assert (await jobs.job(newer.id)).paused_reason == "reauth_required"
    # The owner connects again: everything resumes, in order, nothing dropped.
    await jobs.set_status(connection, "active")
    report = await worker.tasks.upkeep()
    assert report.resumed == 3
    while await worker.run_once():
        pass
    assert seen == [other.id, first.id, queued.id, newer.id]
    assert set((await jobs.states()).values()) == {"succeeded"}


async def test_a_disconnected_connection_pauses_its_jobs(jobs: Jobs) -> None:
    connection = await jobs.connection()
    jobs.handlers.register("t.push", raising(ConnectionDisconnected(connection)))
    job = await jobs.enqueue(kind="t.push", connection_id=connection)
    await jobs.worker().run_once()
    paused = await jobs.job(job.id)
    assert (paused.state, paused.paused_reason) == ("paused", "disconnected")


async def test_a_job_without_a_connection_is_retried_not_paused_for_ever(jobs: Jobs) -> None:
    jobs.handlers.register("t.push", raising(AmoReauthRequired("revoked", status=400)))
    job = await jobs.enqueue(kind="t.push")  # nothing would ever resume it
    await jobs.worker().run_once()
    retried = await jobs.job(job.id)
    assert (retried.state, retried.attempts, retried.paused_reason) == ("pending", 1, None)


async def test_a_ban_pauses_the_connection_until_it_ends(jobs: Jobs) -> None:
    connection = await jobs.connection()
    ends = jobs.clock.now + timedelta(hours=1)
    banned = True
    seen: list[int] = []

    async def handle(context: JobContext, batch: Sequence[Job]) -> None:
        if banned:
            raise AmoBanned("blocked", status=403, retry_at=ends.timestamp())
        seen.extend(job.id for job in batch)

    jobs.handlers.register("t.push", handle)
    first, queued = await jobs.many(2, kind="t.push", connection_id=connection)
    worker = jobs.worker()
    await worker.run_once()
    for job_id in (first.id, queued.id):
        paused = await jobs.job(job_id)
        assert (paused.state, paused.paused_reason) == ("paused", "banned")
        assert paused.paused_until is not None
        assert abs((paused.paused_until - ends).total_seconds()) < 0.01
    newer = await jobs.enqueue(kind="t.push", connection_id=connection)
    assert await worker.claim() == []  # nothing of a banned connection is claimed
    banned = False
    jobs.clock.advance(1800)
    assert (await worker.tasks.upkeep()).resumed == 0
    jobs.clock.advance(1801)
    assert (await worker.tasks.upkeep()).resumed == 2
    while await worker.run_once():
        pass
    assert sorted(seen) == [first.id, queued.id, newer.id]


async def test_a_lease_that_ran_out_is_taken_over_and_the_old_outcome_dropped(
    jobs: Jobs,
) -> None:
    results = iter([{"by": "first"}, {"by": "second"}])

    async def handle(context: JobContext, batch: Sequence[Job]) -> None:
        for job in batch:
            context.succeed(job, next(results))

    jobs.handlers.register("t.push", handle)
    job = await jobs.enqueue(kind="t.push")
    stalled, fresh = jobs.worker("stalled"), jobs.worker("fresh")
    held = await stalled.claim()
    assert await fresh.claim() == []  # leased
    jobs.clock.advance(jobs.settings.lease_seconds + 1)
    taken = await fresh.claim()
    assert [j.id for j in taken] == [job.id]
    assert (taken[0].attempts, taken[0].locked_by) == (2, "fresh")  # the lost attempt counts
    await stalled.execute(held)  # its handler ends late: the outcome is not written
    still = await jobs.job(job.id)
    assert (still.state, still.locked_by, still.result) == ("running", "fresh", None)
    await fresh.execute(taken)
    done = await jobs.job(job.id)
    assert (done.state, done.result) == ("succeeded", {"by": "second"})


async def test_a_job_that_kills_its_worker_every_time_is_failed(jobs: Jobs) -> None:
    jobs.handlers.register("t.push", recorder([]))
    job = await jobs.enqueue(kind="t.push", max_attempts=2)
    for name in ("one", "two"):
        assert await jobs.worker(name).claim()
        jobs.clock.advance(jobs.settings.lease_seconds + 1)
    assert await jobs.worker("three").claim() == []
    assert (await jobs.worker().tasks.upkeep()).abandoned == 1
    failed = await jobs.job(job.id)
    assert failed.state == "failed"
    assert "lease ran out" in (failed.last_error or "")


async def test_heartbeats_keep_a_long_handler_leased(jobs: Jobs) -> None:
    jobs.handlers.register("t.push", recorder([]))
    job = await jobs.enqueue(kind="t.push")
    worker = jobs.worker()
    held = await worker.claim()
    worker._inflight = {job.id: held[0].attempts}  # as execute() registers it
    jobs.clock.advance(jobs.settings.lease_seconds - 1)
    await worker.renew_leases()
    jobs.clock.advance(jobs.settings.lease_seconds - 1)
    assert await jobs.worker("other").claim() == []  # renewed: not taken over


async def test_handler_reports_and_the_unreported_succeed(jobs: Jobs) -> None:
    async def handle(context: JobContext, batch: Sequence[Job]) -> None:
        context.fail(batch[0], "the pipeline is gone: pick another")
        context.retry(batch[1], "busy", delay=60)
        context.defer(batch[2], timedelta(seconds=5))

    jobs.handlers.register("t.push", handle, batch_size=4)
    a, b, c, d = await jobs.many(4, kind="t.push", connection_id="c1")
    await jobs.worker().run_once()
    rows = [await jobs.job(job.id) for job in (a, b, c, d)]
    assert [(r.state, r.attempts) for r in rows] == [
        ("failed", 1),
        ("pending", 1),
        ("pending", 0),
        ("succeeded", 1),
    ]
    assert rows[1].run_after - jobs.clock.now == timedelta(seconds=60)
    assert rows[0].last_error == "the pipeline is gone: pick another"


# --- the operator's view -------------------------------------------------------------------------


async def test_list_retry_and_cancel(jobs: Jobs) -> None:
    jobs.handlers.register("t.push", raising(AmoValidationError("bad", status=400)))
    mine = await jobs.many(3, kind="t.push", owner="user-1")
    theirs = await jobs.enqueue(kind="t.push", owner="user-2")
    async with jobs.db.read() as session:
        page = await jobs.queue.list(session, owner="user-1", limit=2)
        assert [j.id for j in page.jobs] == [mine[2].id, mine[1].id]
        rest = await jobs.queue.list(session, owner="user-1", cursor=page.next_cursor)
        assert [j.id for j in rest.jobs] == [mine[0].id]
        assert rest.next_cursor is None
        everyone = await jobs.queue.list(session)
        assert len(everyone.jobs) == 4
        with pytest.raises(NotFound):
            await jobs.queue.get(session, theirs.id, owner="user-1")
    await jobs.worker().run_once()
    async with jobs.db.transaction() as session:
        retried = await jobs.queue.retry(session, mine[0].id, owner="user-1")
        assert (retried.state, retried.attempts) == ("pending", 0)
        cancelled = await jobs.queue.cancel(session, mine[1].id)
        assert cancelled.state == "cancelled"
        with pytest.raises(Conflict):
            await jobs.queue.cancel(session, mine[1].id)
    async with jobs.db.read() as session:
        failed = await jobs.queue.list(session, state="pending", kind="t.push")
        assert {j.id for j in failed.jobs} == {mine[0].id, mine[2].id, theirs.id}


# --- the worker's loop ---------------------------------------------------------------------------


async def test_the_loop_runs_what_is_enqueued_and_stops_gracefully(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Polling and upkeep far apart: the loop must be woken by the commit of the enqueue.
    monkeypatch.setattr(worker_module, "SQLITE_POLL_MAX", 30.0)
    async with job_queue(database_url, poll_seconds=30, resume_seconds=300) as jobs:
        started: list[float] = []
        done, slow_started = asyncio.Event(), asyncio.Event()

        async def handle(context: JobContext, batch: Sequence[Job]) -> None:
            started.append(time.monotonic())
            if batch[0].payload.get("slow"):
                slow_started.set()
                await asyncio.Event().wait()  # until the worker stops it
            done.set()

        jobs.handlers.register("t.push", handle)
        worker = jobs.worker()
        worker.start()
        try:
            await asyncio.sleep(0.1)  # the loop is idle, waiting
            quick = await jobs.enqueue(kind="t.push")
            committed = time.monotonic()
            await asyncio.wait_for(done.wait(), 10)
            assert started[0] - committed < 3  # woken, not polled (30 s)
            slow = await jobs.enqueue(kind="t.push", payload={"slow": True})
            await asyncio.wait_for(slow_started.wait(), 10)
        finally:
            await worker.stop(grace=0.05)
        assert (await jobs.job(quick.id)).state == "succeeded"
        handed_back = await jobs.job(slow.id)
        assert (handed_back.state, handed_back.attempts, handed_back.locked_by) == (
            "pending",
            0,
            None,
        )
