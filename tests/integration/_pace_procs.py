"""Real processes pacing through the database, and a fake amoCRM that timestamps arrivals.

- :class:`ArrivalServer`: a TCP server on a thread of the test process. One line per request
  (``key worker``), answered at once; it records when each request *arrived* (the system-wide
  monotonic clock, the one every worker process reads too).
- :func:`pace_worker`: a process with its own :class:`DatabaseRateLimiter` on the shared database.
  Its callers loop acquire → request (random latency on the way there and back) → release and
  report every grant and release. ``wait_go``/``signal_burst`` let a test stop a worker at a
  chosen moment (SIGSTOP) and start another after it.

Workers come from a forkserver that imported amobridge once (see ``_procs.worker_context``).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import threading
import time
import traceback
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from process_support import STOP_DEADLINE


class ArrivalServer:
    """Arrival times per key, from a server on its own thread and event loop."""

    def __init__(self) -> None:
        self.arrivals: dict[str, list[tuple[float, int]]] = defaultdict(list)
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="arrival-server", daemon=True)
        self.port = 0

    def __enter__(self) -> ArrivalServer:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the arrival server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(STOP_DEADLINE)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            self._loop.run_until_complete(server.wait_closed())
            self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            arrived = time.monotonic()
            key, worker = line.decode().split()
            with self._lock:
                self.arrivals[key].append((arrived, int(worker)))
            writer.write(b"ok\n")
            await writer.drain()
        writer.close()

    def times(self, key: str) -> list[float]:
        with self._lock:
            return sorted(t for t, _ in self.arrivals[key])

    def workers(self, key: str) -> set[int]:
        with self._lock:
            return {w for _, w in self.arrivals[key]}


def most_in_window(times: list[float], window: float) -> int:
    """The most arrivals in any window ``(t - window, t]`` (how amoCRM's sliding window counts)."""
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - window:
            start += 1
        best = max(best, end - start + 1)
    return best


@dataclass
class Plan:
    """What one worker process does."""

    database_url: str
    port: int
    keys: list[str]
    calls: int  # per caller
    callers: int = 1  # per key
    rate: float = 7.0
    per: float = 0.25
    margin: float = 0.05
    lease_seconds: float = 1.0
    poll_interval: float = 0.05
    latency: float = 0.02  # up to this much each way, random
    seed: int = 0
    after_burst_calls: int = 0  # more calls per caller after the "go" that follows the burst
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    grants: list[tuple[str, float, float]]  # key, grant, release (monotonic)
    deadlines: dict[str, float | None]  # each key's lease deadline right after the burst


def pace_worker(plan: Plan, index: int, sync: dict[str, Any], outcomes: Any) -> None:
    try:
        outcome = asyncio.run(_pace(plan, index, sync))
        outcomes.put({"index": index, "grants": outcome.grants, "deadlines": outcome.deadlines})
    except BaseException:
        sync["start"].abort()
        outcomes.put({"failure": traceback.format_exc()})
    outcomes.close()
    outcomes.join_thread()


async def _pace(plan: Plan, index: int, sync: dict[str, Any]) -> Outcome:
    from amobridge.connect.ratelimit import DatabaseRateLimiter
    from amobridge.storage.db import Database

    db = Database(plan.database_url)
    limiter = DatabaseRateLimiter(
        db,
        plan.rate,
        plan.per,
        margin=plan.margin,
        lease_seconds=plan.lease_seconds,
        poll_interval=plan.poll_interval,
    )
    rng = random.Random(plan.seed * 1000 + index)
    grants: list[tuple[str, float, float]] = []
    lines = [
        (key, await asyncio.open_connection("127.0.0.1", plan.port))
        for key in plan.keys
        for _ in range(plan.callers)
    ]

    async def caller(key: str, stream: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        reader, writer = stream
        await limiter.acquire(key)
        granted = time.monotonic()
        try:
            await asyncio.sleep(rng.random() * plan.latency)  # the request on its way
            writer.write(f"{key} {index}\n".encode())
            await writer.drain()
            await reader.readline()
            await asyncio.sleep(rng.random() * plan.latency)  # the reply on its way
        finally:
            await limiter.release(key)
        grants.append((key, granted, time.monotonic()))

    async def run(calls: int) -> None:
        async def loop(key: str, stream: Any) -> None:
            for _ in range(calls):
                await caller(key, stream)

        await asyncio.gather(*(loop(key, stream) for key, stream in lines))

    try:
        await asyncio.to_thread(sync["start"].wait, 30.0)
        if "go" in sync and index in plan.extra.get("wait_go", ()):
            await asyncio.to_thread(sync["go"].wait, 30.0)
        await run(plan.calls)
        deadlines = {key: limiter.lease_deadline(key) for key in plan.keys}
        if "burst" in sync and index in plan.extra.get("signal_burst", ()):
            sync["burst"].set()  # the test may SIGSTOP this process now
            await asyncio.to_thread(sync["resume"].wait, 30.0)
        await run(plan.after_burst_calls)
        await limiter.close()
    finally:
        for _, (_, writer) in lines:
            writer.close()
        await db.dispose()
    return Outcome(grants, deadlines)


_context: Any = None


def worker_context() -> Any:
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(["amobridge.connect.ratelimit", __name__])
    return _context


class Workers:
    """``pace_worker`` processes: started, released together, their outcomes gathered."""

    def __init__(self, plans: list[Plan]) -> None:
        ctx = worker_context()
        self.sync: dict[str, Any] = {
            "start": ctx.Barrier(len(plans) + 1),
            "go": ctx.Event(),
            "burst": ctx.Event(),
            "resume": ctx.Event(),
        }
        self._outcomes = ctx.Queue()
        self.procs = [
            ctx.Process(target=pace_worker, args=(plan, i, self.sync, self._outcomes))
            for i, plan in enumerate(plans)
        ]

    def start(self) -> None:
        for proc in self.procs:
            proc.start()
        try:
            self.sync["start"].wait(60.0)
        except threading.BrokenBarrierError:
            failure = self._outcomes.get(True, 5)
            raise AssertionError(f"a worker failed to start:\n{failure}") from None

    def results(self, deadline: float = 60.0) -> list[Outcome]:
        """Each worker's outcome, in the order of the plans."""
        found: dict[int, Outcome] = {}
        for _ in self.procs:
            outcome = self._outcomes.get(True, deadline)
            assert "failure" not in outcome, outcome["failure"]
            grants = [tuple(g) for g in outcome["grants"]]
            found[outcome["index"]] = Outcome(grants, outcome["deadlines"])
        for proc in self.procs:
            proc.join(STOP_DEADLINE)
            assert proc.exitcode == 0, f"{proc.name} exited with {proc.exitcode}"
        return [found[i] for i in sorted(found)]

    def stop(self) -> None:
        for proc in self.procs:
            if proc.is_alive():
                proc.kill()
                proc.join(STOP_DEADLINE)
        self._outcomes.close()
        self._outcomes.join_thread()


def db_clock_offset(database_url: str) -> float:
    """Database time minus local monotonic time (PostgreSQL's clock; SQLite's is this host's)."""
    if database_url.startswith("sqlite"):
        return time.time() - time.monotonic()
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            best: tuple[float, float] | None = None
            for _ in range(5):
                sent = time.monotonic()
                db = float(
                    conn.execute(text("SELECT extract(epoch from clock_timestamp())")).scalar_one()
                )
                width = time.monotonic() - sent
                if best is None or width < best[1]:
                    best = (db - (sent + width / 2), width)
            assert best is not None
            return best[0]
    finally:
        engine.dispose()
