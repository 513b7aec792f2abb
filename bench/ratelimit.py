"""The cross-process rate limiter under amoCRM's limit: 100 connections × 7 requests/second.

Target: **100 keys at 7 rps driven from 4 processes on PostgreSQL → 0 responses 429 and limiter
overhead p50 ≤ 1 ms per call; the same on SQLite from one process.**

How: a fake amoCRM runs in its own process — a line protocol over TCP (one ``key`` line per
request, answered at once with the status and the arrival time). It counts every request with the
sandbox's own strict sliding window (``amobridge.sandbox.ratelimit.RateLimiter``: 7 per
integration and account in any ``(t - 1 s, t]``) and answers 429 over it, so the 429 count comes
from the strict window. It stands in for ``amobridge sandbox`` because 700 HTTP requests/second
through uvicorn and httpx would cost most of this 2-vCPU machine and measure the HTTP stack
instead of the limiter. Worker processes (``python bench/ratelimit.py --worker …``) share one
temporary PostgreSQL database (created in the local server, dropped after) or one SQLite file;
each key has callers that loop acquire → request (0–``--jitter-ms`` on the way there and back) →
release, so every key is always in demand.

Per call the workers record enter, grant, release (system-wide monotonic clock) and the server's
arrival time. **Overhead** = grant − the earliest moment the rule itself allowed that grant,
replayed from the key's own history across all processes (its previous grants and releases, the
spacing, the window): lease takes, handoffs, polling and event-loop lag count, the rule's waits do
not. A probe key per worker, called once a second, measures acquire + release when a slot is free.

Scenarios: the lease limiter on PostgreSQL with every process driving every key (processes take
turns), with each process driving its share, and on SQLite from one process; then the previous
design (one reservation transaction per call, slots counted from acquire) as the baseline.

    python bench/ratelimit.py [--duration 12] [--baseline-duration 6] [--no-baseline]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from _support import most_in_one_second, write_result

RATE = 7.0
PER = 1.0
MARGIN = 0.05
TARGET_P50_MS = 1.0
RESULTS = Path(__file__).resolve().parent / "results" / "ratelimit.json"
ADMIN_URLS = (
    os.environ.get("AMOBRIDGE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    "postgresql://root@127.0.0.1:5432/test",
)
START_DELAY = 0.5
"""Seconds between the last worker's "ready" and the common start."""


# --- the fake amoCRM (a process of its own) ----------------------------------------------------


async def _serve() -> None:
    from amobridge.sandbox import Clock, SandboxConfig
    from amobridge.sandbox.ratelimit import RateLimiter

    config = SandboxConfig(
        rate_limit_enabled=True,
        rate_limit_rps=int(RATE),
        account_rps_cap=None,
        ban_after_violations=10**9,  # count every 429; a ban would only end the run
    )
    window = RateLimiter(Clock())
    counts = {"200": 0, "429": 0}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            word = line.split()
            if word[0] == b"RESET":
                window.reset()
                counts.update({"200": 0, "429": 0})
                writer.write(b"OK\n")
            elif word[0] == b"STATS":
                writer.write(json.dumps(counts).encode() + b"\n")
            else:  # "<key index>": one API request of integration i on account i
                index = int(word[0])
                arrival = time.monotonic()
                allowed = window.check(
                    config, account_id=index, client_id=f"bench-{index}", client_ip="127.0.0.1"
                ).allowed
                status = "200" if allowed else "429"
                counts[status] += 1
                writer.write(f"{status} {arrival:.6f}\n".encode())
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


class _Control:
    """The bench's line to the fake server."""

    def __init__(self, port: int) -> None:
        import socket

        self._sock = socket.create_connection(("127.0.0.1", port))
        self._file = self._sock.makefile("rwb")

    def ask(self, command: str) -> str:
        self._file.write(command.encode() + b"\n")
        self._file.flush()
        return self._file.readline().decode().strip()

    def close(self) -> None:
        self._file.close()
        self._sock.close()


# --- the previous design, for the baseline row ---------------------------------------------------


def _legacy_limiter(db: Any, rate: int) -> Any:
    """The design this benchmark replaced, as it was: one write transaction per acquire (insert
    the row if missing, lock it, reserve the earliest slot in the grant times), slots counted
    from acquire, no release."""
    from sqlalchemy import select
    from sqlalchemy.dialects.postgresql import insert as pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    from amobridge.storage.tables import RateLimitSlot

    window = PER + MARGIN
    insert = sqlite_insert if db.is_sqlite else pg_insert

    class Legacy:
        def __init__(self) -> None:
            self._local: dict[str, asyncio.Lock] = {}

        async def acquire(self, key: str) -> None:
            async with self._local.setdefault(key, asyncio.Lock()):
                async with db.transaction() as session:
                    await session.execute(
                        insert(RateLimitSlot)
                        .values(key=key, grants=[], paused_until=0.0)
                        .on_conflict_do_nothing(index_elements=["key"])
                    )
                    row = await session.scalar(
                        select(RateLimitSlot).where(RateLimitSlot.key == key).with_for_update()
                    )
                    assert row is not None
                    now = time.time()
                    grants = sorted(g for g in (row.grants or []) if g > now - window)
                    slot = max(now, row.paused_until or 0.0)
                    if len(grants) >= rate:
                        slot = max(slot, grants[-rate] + window)
                    grants.append(slot)
                    row.grants = sorted(grants)[-rate:]
                wait = slot - time.time()
                if wait > 0:
                    await asyncio.sleep(wait)

        async def release(self, key: str) -> None:
            return None

        async def close(self) -> None:
            return None

    return Legacy()


# --- a worker process ----------------------------------------------------------------------------


async def _drive(cfg: dict[str, Any]) -> dict[str, Any]:
    from amobridge.amo.ratelimit import InMemoryRateLimiter
    from amobridge.connect.ratelimit import DatabaseRateLimiter
    from amobridge.storage.db import Database

    db = Database(cfg["url"], pool_size=10) if cfg["url"] else None
    limiter: Any
    if cfg["design"] == "lease":
        assert db is not None
        limiter = DatabaseRateLimiter(db, RATE, PER, margin=MARGIN)
    elif cfg["design"] == "legacy":
        limiter = _legacy_limiter(db, int(RATE))
    else:
        limiter = InMemoryRateLimiter(RATE, PER, margin=MARGIN)
    if db is not None:  # connect before the start, not during it
        async with db.read() as session:
            from sqlalchemy import text

            await session.execute(text("SELECT 1"))
    rng = random.Random(cfg["seed"])
    jitter = cfg["jitter_ms"] / 1000
    records: list[tuple[int, float, float, float, float, int, int]] = []
    probes: list[float] = []
    callers = [
        (index, f"bench:{cfg['label']}:{index}", *await asyncio.open_connection("127.0.0.1", port))
        for index in cfg["keys"]
        for port in [cfg["port"]] * cfg["callers_per_key"]
    ]
    # Ready: the bench starts every worker at the same moment (system-wide monotonic clock).
    print("ready", flush=True)
    start = float(await asyncio.to_thread(sys.stdin.readline))
    end = start + cfg["duration"]

    async def until(moment: float) -> None:
        await asyncio.sleep(max(0.0, moment - time.monotonic()))

    async def caller(
        index: int, key: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await until(start + rng.random() * 0.2)
        while time.monotonic() < end:
            enter = time.monotonic()
            await limiter.acquire(key)
            granted = time.monotonic()
            try:
                if jitter:
                    await asyncio.sleep(rng.random() * jitter)  # the request on its way
                writer.write(f"{index}\n".encode())
                line = await reader.readline()
                if jitter:
                    await asyncio.sleep(rng.random() * jitter)  # the reply on its way
            finally:
                await limiter.release(key)
            released = time.monotonic()
            status, arrival = line.split()
            records.append(
                (index, enter, granted, released, float(arrival), int(status), cfg["worker"])
            )
        writer.close()

    async def probe(key: str) -> None:
        await until(start + 0.5)
        first = True  # takes the probe key's lease: the startup cost, not a free slot
        while time.monotonic() < end - 1.0:
            began = time.perf_counter()
            await limiter.acquire(key)
            await limiter.release(key)
            if not first:
                probes.append(time.perf_counter() - began)
            first = False
            await asyncio.sleep(1.0)

    tasks = [caller(*c) for c in callers]
    tasks.append(probe(f"bench:{cfg['label']}:probe:{cfg['worker']}"))
    await asyncio.gather(*tasks)
    if hasattr(limiter, "close"):  # hand the leases back
        await limiter.close()
    if db is not None:
        await db.dispose()
    return {"records": records, "probes": probes}


def _worker_main(config_path: str) -> int:
    cfg = json.loads(Path(config_path).read_text(encoding="utf-8"))
    try:
        import uvloop

        runner: Callable[[Awaitable[dict[str, Any]]], dict[str, Any]] = uvloop.run
    except ImportError:
        runner = asyncio.run
    result = runner(_drive(cfg))
    Path(cfg["out"]).write_text(json.dumps(result), encoding="utf-8")
    return 0


# --- the bench -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _postgres() -> Iterator[str | None]:
    """A temporary database in the local PostgreSQL, migrated; None when there is no server."""
    from sqlalchemy import create_engine, text

    from amobridge.storage import migrate

    name = f"amobridge_bench_{uuid.uuid4().hex[:8]}"
    for admin_url in ADMIN_URLS:
        admin = create_engine(
            admin_url.replace("postgresql://", "postgresql+psycopg://"),
            isolation_level="AUTOCOMMIT",
        )
        try:
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        except Exception:
            admin.dispose()
            continue
        url = f"{admin_url.rsplit('/', 1)[0]}/{name}"
        try:
            migrate.upgrade(url)
            yield url
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
        return
    yield None


@contextlib.contextmanager
def _fake_amocrm() -> Iterator[int]:
    server = subprocess.Popen(  # noqa: S603 - this file, run by this interpreter
        [sys.executable, __file__, "--server"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        yield int(server.stdout.readline())
    finally:
        server.terminate()
        server.wait(timeout=10)


def _run_workers(
    *,
    label: str,
    design: str,
    url: str | None,
    port: int,
    shares: list[list[int]],
    callers_per_key: int,
    duration: float,
    jitter_ms: float,
    workdir: Path,
) -> list[dict[str, Any]]:
    procs = []
    for worker, keys in enumerate(shares):
        cfg = {
            "label": label,
            "design": design,
            "url": url,
            "port": port,
            "keys": keys,
            "callers_per_key": callers_per_key,
            "duration": duration,
            "jitter_ms": jitter_ms,
            "seed": worker,
            "worker": worker,
            "out": str(workdir / f"{label}-{worker}.out.json"),
        }
        path = workdir / f"{label}-{worker}.json"
        path.write_text(json.dumps(cfg), encoding="utf-8")
        proc = subprocess.Popen(  # noqa: S603 - this file, run by this interpreter
            [sys.executable, __file__, "--worker", str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append((proc, Path(cfg["out"])))
    for proc, _ in procs:  # imports and connections take seconds on a busy machine
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"a {label} worker did not start (exit {proc.wait()})")
    start_at = time.monotonic() + START_DELAY
    for proc, _ in procs:
        assert proc.stdin is not None
        proc.stdin.write(f"{start_at}\n")
        proc.stdin.close()
    results = []
    for proc, out in procs:
        if proc.wait(timeout=duration + START_DELAY + 60) != 0:
            raise RuntimeError(f"a {label} worker failed (exit {proc.returncode})")
        results.append(json.loads(out.read_text(encoding="utf-8")))
    return results


def _pg_transactions(url: str | None) -> int:
    """PostgreSQL's count of the transactions of this database so far (statistics view)."""
    from sqlalchemy import create_engine, text

    assert url is not None
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_stat_clear_snapshot()"))
            found = conn.execute(
                text(
                    "SELECT xact_commit + xact_rollback FROM pg_stat_database"
                    " WHERE datname = current_database()"
                )
            ).scalar_one()
            return int(found)
    finally:
        engine.dispose()


def _overheads(
    records: list[list[float]], *, legacy: bool, steady: tuple[float, float]
) -> tuple[list[float], list[float]]:
    """Replay each key's history: for every grant, the earliest moment the rule allowed it.
    Returns (overhead per call, acquire time of the calls that found the rule ready), of the
    calls that entered acquire within ``steady`` (the whole history counts for the replay)."""
    capacity = max(1, math.floor(RATE))
    spacing = 0.0 if legacy else PER / RATE
    window = PER + MARGIN
    by_key: dict[int, list[list[float]]] = defaultdict(list)
    for record in records:
        by_key[int(record[0])].append(record)
    overhead: list[float] = []
    free: list[float] = []
    for calls in by_key.values():
        calls.sort(key=lambda r: r[2])
        frees: list[float] = []  # min-heap of the latest ``capacity`` slot ends + window
        previous = -math.inf
        for _, enter, granted, released, *_ in calls:
            ready = max(enter, previous + spacing)
            if len(frees) == capacity:
                ready = max(ready, frees[0])
            if steady[0] <= enter < steady[1]:
                overhead.append(granted - ready)
                if ready <= enter:
                    free.append(granted - enter)
            end = (granted if legacy else released) + window
            if len(frees) < capacity:
                heapq.heappush(frees, end)
            else:
                heapq.heappushpop(frees, end)
            previous = granted
    return overhead, free


def _ms(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0] * 1000, 3)
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000, 3)


def _scenario(
    control: _Control,
    *,
    name: str,
    design: str,
    backend: str,
    url: str | None,
    port: int,
    processes: int,
    keys: int,
    shared: bool,
    callers_per_key: int,
    duration: float,
    jitter_ms: float,
    workdir: Path,
    gated: bool,
) -> dict[str, Any]:
    control.ask("RESET")
    commits = _pg_transactions(url) if backend == "postgresql" else None
    indexes = list(range(keys))
    shares = [indexes] * processes if shared else [indexes[i::processes] for i in range(processes)]
    label = f"{design}-{backend}-{uuid.uuid4().hex[:6]}"
    results = _run_workers(
        label=label,
        design=design,
        url=url,
        port=port,
        shares=shares,
        callers_per_key=callers_per_key,
        duration=duration,
        jitter_ms=jitter_ms,
        workdir=workdir,
    )
    counts = json.loads(control.ask("STATS"))
    if commits is not None:
        commits = _pg_transactions(url) - commits
    records = [r for result in results for r in result["records"]]
    probes = [p for result in results for p in result["probes"]]
    # Steady state: not the first second (every key's first lease) nor the last (callers stop,
    # processes exit); the replay still sees every call.
    start = min((r[1] for r in records), default=0.0)
    steady = (start + 1.0, start + duration - 1.0)
    overhead, free = _overheads(records, legacy=design == "legacy", steady=steady)
    startup, _ = _overheads(records, legacy=design == "legacy", steady=(start, start + 1.0))
    arrivals: dict[int, list[float]] = defaultdict(list)
    for record in records:
        if int(record[5]) == 200:
            arrivals[int(record[0])].append(record[4])
    # Throughput in the steady window too: the first second's burst of ``rate`` would flatter it.
    per_key = [
        sum(1 for t in arrivals[i] if steady[0] <= t < steady[1]) / (steady[1] - steady[0])
        for i in indexes
    ]
    row = {
        "scenario": name,
        "design": design,
        "backend": backend,
        "processes": processes,
        "keys": keys,
        "every_process_drives_every_key": shared,
        "callers_per_key_per_process": callers_per_key,
        "seconds": duration,
        "calls": len(records),
        "responses_200": counts["200"],
        "responses_429": counts["429"],
        "most_in_one_second": max(
            (most_in_one_second(times) for times in arrivals.values()), default=0
        ),
        "rps_per_key_mean": round(statistics.fmean(per_key), 2),
        "rps_per_key_min": round(min(per_key), 2),
        "overhead_p50_ms": _ms(overhead, 50),
        "overhead_p99_ms": _ms(overhead, 99),
        "ready_acquire_p50_ms": _ms(free, 50),
        "first_second_overhead_max_ms": round(max(startup, default=0.0) * 1000, 1),
        "free_slot_acquire_release_p50_ms": _ms(probes, 50),
        "free_slot_acquire_release_p99_ms": _ms(probes, 99),
        # Every transaction PostgreSQL committed or rolled back during the scenario (its whole
        # run: worker start-up and shutdown included), per second of load.
        "db_transactions_per_second": (None if commits is None else round(commits / duration, 1)),
        "gated": gated,
    }
    p50 = row["overhead_p50_ms"]
    row["passed"] = (
        row["responses_429"] == 0
        and row["most_in_one_second"] <= int(RATE)
        and p50 is not None
        and p50 <= TARGET_P50_MS
    )
    return row


def run(args: argparse.Namespace) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    common = {"jitter_ms": args.jitter_ms}
    with tempfile.TemporaryDirectory() as tmp, _fake_amocrm() as port, _postgres() as pg_url:
        workdir = Path(tmp)
        control = _Control(port)
        sqlite_url = f"sqlite:///{workdir / 'bench.db'}"
        from amobridge.storage import migrate

        migrate.upgrade(sqlite_url)
        plan: list[dict[str, Any]] = []
        if pg_url is not None:
            plan += [
                {
                    "name": "lease, pg, 4 proc × all keys",
                    "design": "lease",
                    "backend": "postgresql",
                    "url": pg_url,
                    "processes": args.processes,
                    "shared": True,
                    "callers_per_key": 1,
                    "duration": args.duration,
                    "gated": True,
                },
                {
                    "name": "lease, pg, 4 proc × own share",
                    "design": "lease",
                    "backend": "postgresql",
                    "url": pg_url,
                    "processes": args.processes,
                    "shared": False,
                    "callers_per_key": 2,
                    "duration": args.duration,
                    "gated": True,
                },
            ]
        plan.append(
            {
                "name": "lease, sqlite, 1 proc",
                "design": "lease",
                "backend": "sqlite",
                "url": sqlite_url,
                "processes": 1,
                "shared": False,
                "callers_per_key": 2,
                "duration": args.duration,
                "gated": True,
            }
        )
        if not args.no_baseline:
            # The same load with no coordination at all (each process its own keys, in memory):
            # the floor this machine's event loops and timers put under any limiter.
            plan.append(
                {
                    "name": "reference: in-memory, 4 proc × own share",
                    "design": "memory",
                    "backend": "none",
                    "url": None,
                    "processes": args.processes,
                    "shared": False,
                    "callers_per_key": 2,
                    "duration": args.baseline_duration,
                    "gated": False,
                }
            )
            if pg_url is not None:
                plan.append(
                    {
                        "name": "baseline: previous design, pg, 4 proc × own share",
                        "design": "legacy",
                        "backend": "postgresql",
                        "url": pg_url,
                        "processes": args.processes,
                        "shared": False,
                        "callers_per_key": 2,
                        "duration": args.baseline_duration,
                        "gated": False,
                    }
                )
            plan.append(
                {
                    "name": "baseline: previous design, sqlite, 1 proc",
                    "design": "legacy",
                    "backend": "sqlite",
                    "url": sqlite_url,
                    "processes": 1,
                    "shared": False,
                    "callers_per_key": 2,
                    "duration": args.baseline_duration,
                    "gated": False,
                }
            )
        for step in plan:
            print(f"  running: {step['name']} ({step['duration']:g} s)", flush=True)
            rows.append(
                _scenario(control, port=port, keys=args.keys, workdir=workdir, **common, **step)
            )
        control.close()
    gated = [r for r in rows if r["gated"]]
    return {
        "benchmark": "ratelimit",
        "rate": RATE,
        "per": PER,
        "margin": MARGIN,
        "jitter_ms": args.jitter_ms,
        "target_overhead_p50_ms": TARGET_P50_MS,
        "postgresql": pg_url is not None,
        "rows": rows,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "passed": bool(gated) and all(r["passed"] for r in gated) and pg_url is not None,
    }


def _table(result: dict[str, Any]) -> str:
    def cell(value: Any) -> str:
        return "—" if value is None else str(value)

    header = (
        "scenario",
        "calls",
        "rps/key (min)",
        "429s",
        "max/1s",
        "overhead p50",
        "p99 ms",
        "free slot p50",
        "p99 ms",
        "db tx/s",
        "target",
    )
    lines = [header]
    for r in result["rows"]:
        lines.append(
            (
                r["scenario"],
                f"{r['calls']:,}",
                f"{r['rps_per_key_mean']} ({r['rps_per_key_min']})",
                str(r["responses_429"]),
                str(r["most_in_one_second"]),
                cell(r["overhead_p50_ms"]),
                cell(r["overhead_p99_ms"]),
                cell(r["free_slot_acquire_release_p50_ms"]),
                cell(r["free_slot_acquire_release_p99_ms"]),
                cell(r["db_transactions_per_second"]),
                ("✔" if r["passed"] else "✘") if r["gated"] else "—",
            )
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    text = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    if not result["postgresql"]:
        text.append("PostgreSQL not reachable at 127.0.0.1:5432: the 4-process rows did not run")
    text.append(f"target met: {'yes' if result['passed'] else 'NO'}")
    return "\n".join(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--baseline-duration", type=float, default=5.0)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--jitter-ms", type=float, default=5.0)
    parser.add_argument("--server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.server:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve())
        return 0
    if args.worker:
        return _worker_main(args.worker)
    result = run(args)
    return write_result(RESULTS, result, _table(result))


if __name__ == "__main__":
    raise SystemExit(main())
