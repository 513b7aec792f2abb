"""A sick tenant does not slow a healthy one: 2,000 leads pushed through faults, and the latency
of another tenant's leads alone and meanwhile.

Tenant A (2,000 leads, 100 contacts each shared by 20 leads) is pushed while its amoCRM account
answers ~10 % 5xx (half of them after doing the work), gateway timeouts and dropped connections,
two 429 bursts, a ban that ends, and a revoked grant that its owner repairs by connecting again
(``tests/integration/faults_support.py``, shared with ``test_leads_faults.py``). Tenant B is
healthy and posts one lead every ``--every`` seconds, ``--b-leads`` of them, first alone, then
during A's faulty sync, with the same count and cadence. B's latency is per lead, from its row's
``created_at`` (committed with its job) to ``synced_at`` (amoCRM answered), both this host's
clock. Targets: p99(during) ≤ 1.2 × p99(alone); afterwards every lead of both is ``synced`` and in
amoCRM exactly once (by its marker), no contact doubled, no job failed.

The sandbox runs as ``amobridge sandbox``, a process of its own with its rate limiter on at 7/s
(amoCRM is another machine). The service runs in this process as ``serve`` runs it by default:
the API (over ASGI) and one job worker (``JobWorker.start()``, concurrency 4) on one event loop,
on a temporary SQLite database or a PostgreSQL one (``--database postgres``). In-process because
a ban's end must pass in the service's time: the service assumes a detected ban lasts an hour,
so the worker and the ban breakers run on a VirtualClock that jumps that hour when the sandbox's
ban is over; everything else — requests, pacing, backoffs, B's latency — is real time.

    python bench/faults.py [--a-leads 2000] [--b-leads 200] [--every 0.4] [--database sqlite]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT / "tests" / "integration") not in sys.path:
    sys.path.append(str(_ROOT / "tests" / "integration"))  # the proof shared with the tests

from faults_support import (  # noqa: E402
    VirtualClock,
    ambiguous_creates,
    breakers_on,
    burst,
    lead_body,
    noise,
    revoke,
    tenant_report,
)

from _support import free_port, running_process, write_result  # noqa: E402
from amobridge.jobs import JobWorker  # noqa: E402
from amobridge.services import Services  # noqa: E402
from amobridge.settings import Settings  # noqa: E402
from amobridge.storage.crypto import generate_key  # noqa: E402
from amobridge.storage.tables import Job, Lead  # noqa: E402
from amobridge.web.app import create_app  # noqa: E402
from service import postgres_database, postgres_problem  # noqa: E402

A, B = "tenant-a", "tenant-b"
RATE = 7
B_CONTACTS = 5  # B's leads share 5 contacts, created in the warm-up: each push is 2 requests
TARGET = 1.2
SERVICE_URL = "http://bench.example"
RESULTS = Path(__file__).resolve().parent / "results" / "faults.json"
TIMEOUT_DELAY = 2.0  # s an injected timeout holds a request before its 504
# When (s after A's sync starts) the account is banned, the ban ends, the grant is revoked and
# the owner connects again.
BAN_AT, BAN_SECONDS, REVOKE_AT, RECONNECT_AT = 10.0, 10.0, 35.0, 45.0


class Bench:
    def __init__(self, control: httpx.AsyncClient, services: Services, http: httpx.AsyncClient):
        self.control, self.services, self.http = control, services, http
        self.headers: dict[str, str] = {}
        self.integration: dict[str, Any] = {}
        self.events: list[tuple[float, str]] = []
        self.clock = VirtualClock()  # the worker's and the ban breakers'

    async def connect(self, owner: str, account_id: int) -> None:
        start = await self.http.get(
            "/amocrm/auth", params={"owner": owner, "format": "json"}, headers=self.headers
        )
        hop = await self.http.get(start.json()["url"])
        state = httpx.URL(hop.headers["location"]).params["state"]
        consent = await self.control.post(
            "/_sandbox/authorize",
            json={
                "client_id": self.integration["client_id"],
                "account_id": account_id,
                "state": state,
            },
        )
        back = httpx.URL(consent.json()["redirect_url"])
        done = await self.http.get("/amocrm/callback", params=dict(back.params))
        if done.status_code != 200:
            raise RuntimeError(f"connecting {owner} failed: {done.status_code}")

    async def post(self, owner: str, i: int, contacts: int) -> str:
        made = await self.http.post(
            "/leads", json=lead_body(owner, i, contacts=contacts), headers=self.headers
        )
        if made.status_code != 201:
            raise RuntimeError(f"POST /leads: {made.status_code} {made.text[:200]}")
        return str(made.json()["id"])

    async def paced(self, first: int, count: int, every: float) -> list[str]:
        """B posts lead ``first + k`` at ``k * every`` s (a fixed schedule, not after the last
        answer: a slow answer does not thin out the load)."""
        started = time.monotonic()
        ids = []
        for k in range(count):
            await asyncio.sleep(max(0.0, started + k * every - time.monotonic()))
            ids.append(await self.post(B, first + k, contacts=B_CONTACTS))
        return ids

    async def latencies(self, ids: list[str], deadline: float) -> list[float]:
        """Seconds from created to synced of each lead, once all are synced."""
        until = time.monotonic() + deadline
        while True:
            async with self.services.db.read() as session:
                rows = list(
                    await session.execute(
                        select(Lead.created_at, Lead.synced_at, Lead.sync_state).where(
                            Lead.id.in_(ids)
                        )
                    )
                )
            if all(state == "synced" for _, _, state in rows) and len(rows) == len(ids):
                return sorted(
                    (synced - created).total_seconds()
                    for created, synced, _ in rows
                    if synced is not None  # set with the state
                )
            if time.monotonic() > until:
                raise RuntimeError("B's leads were not all synced in time")
            await asyncio.sleep(0.5)

    async def waits(self, ids: list[str]) -> list[float]:
        """Seconds each lead's create job waited in the queue (created → claimed): the part
        of the latency the queue's fairness decides (the rest is the push itself)."""
        wanted = set(ids)
        async with self.services.db.read() as session:
            rows = await session.execute(
                select(Job.payload, Job.created_at, Job.started_at).where(
                    Job.owner == B, Job.kind == "sync.lead.create"
                )
            )
            return sorted(
                (self.clock.real(started) - created).total_seconds()
                for payload, created, started in rows
                if payload.get("lead_id") in wanted and started is not None
            )

    async def a_active(self) -> int:
        async with self.services.db.read() as session:
            found = await session.scalar(
                select(func.count()).where(
                    Job.owner == A, Job.state.in_(("pending", "running", "paused"))
                )
            )
        return int(found or 0)

    async def chaos(self, a_account: int, clock: VirtualClock, started: float) -> None:
        """The fault schedule of A's account, on the wall clock from ``started``."""

        async def at(second: float, what: str) -> None:
            await asyncio.sleep(max(0.0, started + second - time.monotonic()))
            self.events.append((round(time.monotonic() - started, 1), what))

        faults = [burst(a_account, 5), *ambiguous_creates(a_account, timeout_delay=TIMEOUT_DELAY)]
        await self.control.post(
            "/_sandbox/faults", json=faults + noise(a_account, timeout_delay=TIMEOUT_DELAY)
        )
        self.events.append((0.0, "429 burst, ambiguous creates, 10 % noise"))
        await at(BAN_AT, "ban")
        await self.control.post(
            "/_sandbox/ban", json={"account_id": a_account, "seconds": BAN_SECONDS}
        )
        await at(BAN_AT + BAN_SECONDS, "ban over (+1 h of service time), 429 burst")
        clock.advance(3600 + 60)
        await self.control.post("/_sandbox/faults", json=[burst(a_account, 5)])
        await at(REVOKE_AT, "grant revoked")
        await self.control.post("/_sandbox/faults", json=[revoke(a_account)])
        await at(RECONNECT_AT, "owner connects again")
        await self.connect(A, a_account)


def _settings(database_url: str, client_id: str, secret: str, sandbox_url: str) -> Settings:
    return Settings(
        environment="test",
        database={"url": database_url},
        security={"secret_keys": [generate_key()], "jwt_secret": "bench-jwt-secret-0123456789abc"},
        server={"public_url": SERVICE_URL, "run_workers": False},
        amo={
            "client_id": client_id,
            "client_secret": secret,
            "rate_limit_rps": RATE,
            "api_base_url": sandbox_url,
            "authorize_url": f"{sandbox_url}/oauth",
        },
        webhooks={"auto_subscribe": False},
        jobs={"resume_seconds": 1.0},
    )


@contextlib.asynccontextmanager
async def _sandbox() -> AsyncIterator[httpx.AsyncClient]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AMOBRIDGE_")},
        "AMOBRIDGE_LOG_LEVEL": "WARNING",
        "AMOBRIDGE_SANDBOX__RATE_LIMIT_ENABLED": "true",
        "AMOBRIDGE_SANDBOX__RATE_LIMIT_RPS": str(RATE),
    }
    argv = [
        sys.executable,
        "-m",
        "amobridge",
        "sandbox",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with running_process(argv, health_url=f"{url}/_sandbox/health", name="the sandbox", env=env):
        async with httpx.AsyncClient(base_url=url, timeout=60.0) as control:
            yield control


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(_percentile(values, 0.50) * 1000, 1),
        "p99_ms": round(_percentile(values, 0.99) * 1000, 1),
        "max_ms": round(max(values) * 1000, 1),
    }


async def run(args: argparse.Namespace, database_url: str) -> dict[str, Any]:
    async with _sandbox() as control:
        sandbox_url = str(control.base_url).rstrip("/")
        integration = (
            await control.post(
                "/_sandbox/integrations",
                json={"name": "amobridge", "redirect_uri": f"{SERVICE_URL}/amocrm/callback"},
            )
        ).json()
        a_account = (await control.post("/_sandbox/accounts", json={"subdomain": "sick"})).json()
        b_account = (await control.post("/_sandbox/accounts", json={"subdomain": "well"})).json()
        settings = _settings(
            database_url, integration["client_id"], integration["client_secret"], sandbox_url
        )
        clock = VirtualClock()
        with breakers_on(clock):
            services = Services.build(settings)
            app = create_app(settings, services=services)
            await services.start()
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url=SERVICE_URL) as http:
                bench = Bench(control, services, http)
                bench.integration, bench.clock = integration, clock
                async with services.db.transaction() as session:
                    key = await services.auth.create_api_key(session, name="bench", role="app")
                bench.headers = {"Authorization": f"Bearer {key}"}
                try:
                    return await _phases(args, bench, clock, a_account["id"], b_account["id"])
                finally:
                    await services.stop()


def _worker(services: Services, clock: VirtualClock) -> JobWorker:
    return JobWorker(
        services.db,
        services.jobs,
        services.job_handlers,
        services.settings.jobs,
        clients=services.clients,
        services=services,
        clock=clock.now,
    )


async def _phases(
    args: argparse.Namespace, bench: Bench, clock: VirtualClock, a_account: int, b_account: int
) -> dict[str, Any]:
    await bench.connect(A, a_account)
    await bench.connect(B, b_account)
    worker = _worker(bench.services, clock)
    worker.start()
    # Warm-up (not measured): the first push of each connection reads its catalogue and
    # creates the marker field.
    warm = [await bench.post(B, 10_000 + i, contacts=B_CONTACTS) for i in range(B_CONTACTS)]
    await bench.latencies(warm, 60)
    alone_ids = await bench.paced(0, args.b_leads, args.every)
    alone = await bench.latencies(alone_ids, 120)

    await worker.stop()  # A's leads go in first: its sync starts with the faults
    gate = asyncio.Semaphore(8)  # as many POSTs at once as a host app's pool would send

    async def post_a(i: int) -> str:
        async with gate:
            return await bench.post(A, i, contacts=args.a_contacts)

    a_ids = await asyncio.gather(*(post_a(i) for i in range(args.a_leads)))
    worker = _worker(bench.services, clock)
    worker.start()
    started = time.monotonic()
    chaos = asyncio.create_task(bench.chaos(a_account, clock, started))
    samples: list[int] = []

    async def watch() -> None:
        while True:
            samples.append(await bench.a_active())
            await asyncio.sleep(0.5)

    watcher = asyncio.create_task(watch())
    during_ids = await bench.paced(args.b_leads, args.b_leads, args.every)
    during = await bench.latencies(during_ids, 300)
    b_seconds = time.monotonic() - started
    watcher.cancel()
    await chaos
    until = time.monotonic() + args.deadline
    while await bench.a_active() and time.monotonic() < until:  # noqa: ASYNC110 - the database is polled: no event
        await asyncio.sleep(1.0)
    a_seconds = time.monotonic() - started
    # B alone once more, A done: how far the machine's own load moves B's latency.
    again_ids = await bench.paced(2 * args.b_leads, args.b_leads, args.every)
    again = await bench.latencies(again_ids, 120)
    await worker.stop()
    await bench.control.delete("/_sandbox/faults")
    log = (await bench.control.get("/_sandbox/requests", params={"account_id": a_account})).json()
    reports = {owner: await tenant_report(bench.services, owner) for owner in (A, B)}
    faults: dict[str, int] = {}
    for record in log:
        if record.get("fault"):
            faults[record["fault"]] = faults.get(record["fault"], 0) + 1
    ratio = _percentile(during, 0.99) / _percentile(alone, 0.99)
    result = {
        "benchmark": "faults",
        "a_leads": len(a_ids),
        "a_contacts": args.a_contacts,
        "b_leads_per_phase": args.b_leads,
        "b_every_seconds": args.every,
        "b_alone": _summary(alone),
        "b_during": _summary(during),
        "b_alone_again": _summary(again),
        "b_queue_wait": {
            name: _summary(await bench.waits(ids))
            for name, ids in (("alone", alone_ids), ("during", during_ids), ("again", again_ids))
        },
        "p99_ratio": round(ratio, 3),
        "target_ratio": TARGET,
        "b_phase_seconds": round(b_seconds, 1),
        "a_sync_seconds": round(a_seconds, 1),
        "a_busy_while_b_measured": round(sum(1 for s in samples if s) / max(1, len(samples)), 3),
        "a_requests": sum(1 for r in log if r["path"].startswith("/api/v4")),
        "a_responses": _statuses(log),
        "a_faults": faults,
        "events": bench.events,
        "tenants": {owner: {**vars(r), "holds": r.holds} for owner, r in reports.items()},
        "database": "postgresql"
        if "postgres" in str(bench.services.settings.database.url)
        else "sqlite",
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    result["passed"] = ratio <= TARGET and all(r.holds for r in reports.values())
    return result


def _statuses(log: list[dict[str, Any]]) -> dict[str, int]:
    found: dict[str, int] = {}
    for record in log:
        if record["path"].startswith("/api/v4"):
            found[str(record["status"])] = found.get(str(record["status"]), 0) + 1
    return dict(sorted(found.items()))


def _table(result: dict[str, Any]) -> str:
    keys = ("p50_ms", "p99_ms", "max_ms")
    rows: list[tuple[str, ...]] = [
        ("tenant B", "leads", "p50 ms", "p99 ms", "max ms", "queue p50/p99 ms")
    ]
    for name, phase in (
        ("alone", "alone"),
        ("during A's faults", "during"),
        ("alone again", "again"),
    ):
        shown = result["b_" + {"alone": "alone", "during": "during", "again": "alone_again"}[phase]]
        wait = result["b_queue_wait"][phase]
        rows.append(
            (
                name,
                str(result["b_leads_per_phase"]),
                *(f"{shown[k]:.0f}" for k in keys),
                f"{wait['p50_ms']:.0f} / {wait['p99_ms']:.0f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines.append(
        f"p99 during / alone: {result['p99_ratio']:.2f} (≤ {TARGET}); A busy during "
        f"{result['a_busy_while_b_measured']:.0%} of B's phase ({result['b_phase_seconds']} s)"
    )
    lines.append(
        f"A: {result['a_leads']} leads synced in {result['a_sync_seconds']} s, "
        f"{result['a_requests']} requests {result['a_responses']}, faults {result['a_faults']}"
    )
    for owner, report in result["tenants"].items():
        lines.append(
            f"{owner}: local {report['local']} {report['states']}, in amoCRM {report['in_amo']}, "
            f"doubled {report['markers_doubled']}, missing {report['missing']}, "
            f"contacts {report['contacts']} (doubled {report['contacts_doubled']}), jobs {report['jobs']}"
        )
    lines.append(f"database: {result['database']}; events: {result['events']}")
    lines.append(f"target met: {'yes' if result['passed'] else 'NO'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a-leads", type=int, default=2000)
    parser.add_argument("--a-contacts", type=int, default=100)
    parser.add_argument("--b-leads", type=int, default=200)
    parser.add_argument("--every", type=float, default=0.4, help="s between two of B's leads")
    parser.add_argument("--deadline", type=float, default=900, help="s A's sync may take")
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        if args.database == "postgres":
            problem = postgres_problem()
            if problem:
                print(f"PostgreSQL: {problem}")
                return 1
            url = stack.enter_context(postgres_database())
        else:
            folder = stack.enter_context(tempfile.TemporaryDirectory())
            url = f"sqlite:///{folder}/faults.db"
        result = asyncio.run(run(args, url))
    return write_result(RESULTS, result, _table(result))


if __name__ == "__main__":
    raise SystemExit(main())
