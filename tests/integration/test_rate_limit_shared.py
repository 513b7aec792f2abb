"""Invariant 4: one key's pace holds across processes sharing the database (SQLite and PostgreSQL).

Real worker processes (``_pace_procs.py``), each with its own ``DatabaseRateLimiter``, call a fake
amoCRM that timestamps every arrival; the proofs count those arrivals. The rule is the same at any
scale, so these tests pace 7 requests per 0.25 s (and take leases of a second or two) to stay
short: a handoff, an expiry and a stall each happen within a few seconds.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from _pace_procs import ArrivalServer, Plan, Workers, db_clock_offset, most_in_window
from sqlalchemy import create_engine, text

from amobridge.connect.ratelimit import DatabaseRateLimiter
from amobridge.storage.db import Database

PER = 0.25
MARGIN = 0.05
WINDOW = PER + MARGIN


def _sync_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://")


def wait_until(condition: Any, deadline: float = 20.0) -> None:
    """Poll ``condition`` (another process's progress) until it holds, under a deadline."""
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("timed out waiting for the workers")
        time.sleep(0.01)


@contextmanager
def workers(plans: list[Plan]) -> Iterator[Workers]:
    pool = Workers(plans)
    try:
        pool.start()
        yield pool
    finally:
        pool.stop()


def test_processes_sharing_keys_never_exceed_the_rate(database_url: str) -> None:
    """Three processes drive the same two keys at once: they take turns, and no window of
    ``per`` seconds ever holds more than 7 arrivals of a key."""
    with ArrivalServer() as server:
        plans = [
            Plan(database_url, server.port, keys=["a", "b"], calls=15, callers=1, seed=i)
            for i in range(3)
        ]
        with workers(plans) as pool:
            pool.results()
        for key in ("a", "b"):
            times = server.times(key)
            assert len(times) == 45
            assert most_in_window(times, PER) <= 7, key
            assert server.workers(key) == {0, 1, 2}  # every process had its turns


def test_a_handoff_continues_the_window(database_url: str) -> None:
    """Process 0 sends a burst of 7 and goes idle; process 1 then wants the key. The lease moves
    with the end times of process 0's slots, so process 1 waits for them: no second burst."""
    with ArrivalServer() as server:
        plans = [
            Plan(
                database_url,
                server.port,
                keys=["k"],
                calls=1,
                callers=7,
                extra={"signal_burst": [0]},
            ),
            Plan(database_url, server.port, keys=["k"], calls=1, callers=7, extra={"wait_go": [1]}),
        ]
        with workers(plans) as pool:
            assert pool.sync["burst"].wait(20)
            pool.sync["go"].set()
            wait_until(lambda: len(server.times("k")) == 14)
            pool.sync["resume"].set()
            first, second = pool.results()
    assert most_in_window(server.times("k"), PER) <= 7
    first_release = min(release for _, _, release in first.grants)
    assert min(grant for _, grant, _ in second.grants) >= first_release + WINDOW - 0.005


def test_an_expired_lease_is_taken_after_one_window(database_url: str) -> None:
    """Process 0 holds the lease and freezes (SIGSTOP) without handing it back. Process 1 takes
    it only once it expired, then waits one more window (the frozen holder's last slots are
    unknown); thawed, process 0 gets the key back only through the lease."""
    lease = 1.2
    with ArrivalServer() as server:
        plans = [
            Plan(
                database_url,
                server.port,
                keys=["k"],
                calls=1,
                callers=3,
                lease_seconds=lease,
                after_burst_calls=2,
                extra={"signal_burst": [0]},
            ),
            Plan(
                database_url,
                server.port,
                keys=["k"],
                calls=2,
                callers=3,
                lease_seconds=lease,
                extra={"wait_go": [1]},
            ),
        ]
        with workers(plans) as pool:
            assert pool.sync["burst"].wait(20)
            frozen = pool.procs[0].pid
            assert frozen is not None
            os.kill(frozen, signal.SIGSTOP)
            try:
                pool.sync["go"].set()
                wait_until(lambda: len(server.times("k")) == 3 + 6)
            finally:
                os.kill(frozen, signal.SIGCONT)
            pool.sync["resume"].set()
            first, second = pool.results()
    deadline = first.deadlines["k"]
    assert deadline is not None  # it held the lease when it froze
    # The database expires the lease at least lease/6 after the holder's own deadline.
    expired_at = deadline + lease / 6
    burst_end = max(grant for _, grant, _ in first.grants[:3])
    second_grants = sorted(grant for _, grant, _ in second.grants)
    assert second_grants[0] >= expired_at + WINDOW - 0.005
    assert second_grants[0] > burst_end
    assert len(first.grants) == 3 + 6  # thawed, it got the key again
    assert most_in_window(server.times("k"), PER) <= 7


@contextmanager
def row_locked(database_url: str, key: str) -> Iterator[float]:
    """Hold the key's row lock (PostgreSQL) or the write lock (SQLite) from outside, as a slow or
    stuck database would: the holder's renewals wait. Yields the row's ``lease_until``."""
    if database_url.startswith("sqlite"):
        conn = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            (until,) = conn.execute(
                "SELECT lease_until FROM rate_limits WHERE key = ?", (key,)
            ).fetchone()
            yield float(until)
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    engine = create_engine(_sync_url(database_url))
    try:
        with engine.connect() as conn, conn.begin():
            until = conn.execute(
                text("SELECT lease_until FROM rate_limits WHERE key = :k FOR UPDATE"), {"k": key}
            ).scalar_one()
            yield float(until)
    finally:
        engine.dispose()


def test_a_stalled_holder_stops_granting(database_url: str) -> None:
    """The holder keeps being asked for requests while its renewals hang: it stops granting
    before the database would let anyone else take the key, and goes on once it can renew."""
    lease = 1.0
    offset = db_clock_offset(database_url)
    with ArrivalServer() as server:
        plans = [
            Plan(database_url, server.port, keys=["k"], calls=30, callers=2, lease_seconds=lease)
        ]
        with workers(plans) as pool:
            wait_until(lambda: len(server.times("k")) >= 10)
            with row_locked(database_url, "k") as until:
                blocked_at = time.monotonic()
                expires = until - offset  # the lease's expiry on the local monotonic clock
                wait_until(lambda: time.monotonic() > expires + 0.3)
                unblocked_at = time.monotonic()
            (outcome,) = pool.results()
    during = [g for _, g, _ in outcome.grants if blocked_at <= g < unblocked_at]
    after = [g for _, g, _ in outcome.grants if g >= unblocked_at]
    assert during, "it granted nothing while its lease was still valid"
    # Granting stops at the holder's deadline, at most 5/6 of a term after it last renewed:
    # at least lease/6 before the expiry, and nothing until it could renew again.
    assert max(during) <= expires - lease / 6 + 0.005
    assert after, "it never resumed after the database came back"
    assert len(outcome.grants) == 60
    assert most_in_window(server.times("k"), PER) <= 7


async def test_pause_holds_every_process(database_url: str) -> None:
    first, second = Database(database_url), Database(database_url)
    a = DatabaseRateLimiter(first, 7, PER)
    b = DatabaseRateLimiter(second, 7, PER)
    try:
        paused_at = time.monotonic()  # the pause counts from its statement, a little later
        await a.pause("k", 0.4)
        await a.pause("k", 0)  # no-op
        await b.acquire("k")
        assert time.monotonic() - paused_at >= 0.4
        await b.release("k")
    finally:
        await a.close()
        await b.close()
        await first.dispose()
        await second.dispose()


async def test_waiting_callers_hear_a_failing_database(tmp_path: Any) -> None:
    """No ``rate_limits`` table (a database never migrated): the callers waiting for a lease get
    the database's error instead of waiting forever."""
    db = Database(f"sqlite:///{tmp_path / 'empty.db'}")
    limiter = DatabaseRateLimiter(db, 7, poll_interval=0.01)
    try:
        with pytest.raises(Exception, match="rate_limits"):
            await asyncio.wait_for(limiter.acquire("k"), 5)
    finally:
        await limiter.close()
        await db.dispose()


def test_limiter_validates_and_describes_itself(tmp_path: Any) -> None:
    db = Database(f"sqlite:///{tmp_path / 'x.db'}")
    limiter = DatabaseRateLimiter(db, 6.5)
    assert "rate=6.5" in repr(limiter)
    assert limiter.lease_deadline("k") is None
    with pytest.raises(ValueError, match="rate"):
        DatabaseRateLimiter(db, 0)
    with pytest.raises(ValueError, match="lease_seconds"):
        DatabaseRateLimiter(db, 7, lease_seconds=0)


@pytest.mark.slow
async def test_two_services_stay_under_the_sandbox_limit(stack: Any) -> None:
    """Two service instances on one database, one connection, rate limiting ON in the sandbox:
    30 calls, 0 responses 429 at the sandbox's strict sliding window."""
    from amobridge.services import Services

    await stack.connect("shared")
    await stack.control.patch(
        "/_sandbox/config", json={"rate_limit_enabled": True, "rate_limit_rps": 7}
    )
    other = Services.build(stack.settings, amo_transport=stack.services.clients.transport)
    try:
        async with stack.services.db.transaction() as session:
            row = await stack.services.connections(session).for_owner("shared")
        clients = [
            await stack.services.clients.client(row),
            await other.clients.client(row),
        ]
        calls = [clients[i % 2].account.get() for i in range(30)]
        results = await asyncio.gather(*calls)
        assert all(r.id == stack.account["id"] for r in results)
    finally:
        await other.stop()
    log = (
        await stack.control.get("/_sandbox/requests", params={"path_prefix": "/api/v4/account"})
    ).json()
    statuses = [r["status"] for r in log]
    assert statuses.count(200) == 30
    assert 429 not in statuses
    times = sorted(r["time"] for r in log)
    assert all(times[i + 7] - times[i] > 1.0 for i in range(len(times) - 7))


def test_service_uses_the_database_limiter_by_default(tmp_path: Any) -> None:
    from amobridge.services import Services
    from amobridge.settings import Settings

    settings = Settings(
        database={"url": f"sqlite:///{tmp_path}/x.db"},
        security={"secret_keys": ["k" * 43 + "="]},
    )
    services = Services.build(settings)
    assert isinstance(services.clients._shared_limiter, DatabaseRateLimiter)
    memory = Services.build(
        settings.model_copy(
            update={"amo": settings.amo.model_copy(update={"rate_limit_backend": "memory"})}
        )
    )
    assert memory.clients._shared_limiter is None
