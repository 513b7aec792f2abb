"""Import throughput under amoCRM's rate limit: 10,000 leads into the mirror at 7 requests/second.

The service (``Services`` in this process, a temporary SQLite database — or ``--database-url`` —
and the database-backed pace shared by all processes) imports an account of ``--leads`` leads from
the sandbox running as ``amobridge sandbox`` does, a server in a process of its own (amoCRM is
another machine: its work must not share this process's CPU), with its rate limiter **on** at 7
requests per second (amoCRM's limit). The leads are put into the sandbox through its control API,
250 a call, not with one API call each. The import runs as in production: the service queues its
job and a job worker runs it.

The ceiling is 250 leads a page × 7 pages a second = 1,750 leads/s; the target is **≥ 90 %** of
it over the lead pages (from the first lead request to the last lead page written), with **0**
responses 429 and exactly ``--leads`` leads in the mirror. The whole import — pipelines and
custom fields, contacts (none here), leads — is timed beside it.

    python bench/import.py [--leads 10000] [--database-url postgresql+psycopg://…]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import platform
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from _support import (
    Account,
    create_account,
    grid,
    most_in_one_second,
    running_sandbox,
    write_result,
)
from amobridge.services import Services
from amobridge.settings import Settings
from amobridge.storage.crypto import generate_key
from amobridge.storage.tables import Lead

RATE = 7
PAGE = 250
TARGET = 0.90
OWNER = "bench"
RESULTS = Path(__file__).resolve().parent / "results" / "import.json"


async def _seed(control: httpx.AsyncClient, count: int) -> Account:
    """An account holding ``count`` leads, an integration and a long-lived token."""
    account = await create_account(control, "bench")
    for start in range(0, count, PAGE):
        items = [
            {"name": f"Сделка {i}", "price": i} for i in range(start, min(count, start + PAGE))
        ]
        made = await control.post(f"/_sandbox/accounts/{account.id}/leads", json=items)
        made.raise_for_status()
    return account


def _settings(database_url: str, client_id: str, sandbox_url: str) -> Settings:
    return Settings(
        environment="test",
        database={"url": database_url},
        security={"secret_keys": [generate_key()]},
        server={"public_url": "http://bench.example", "run_workers": False},
        amo={
            "client_id": client_id,
            "client_secret": "bench-client-secret-0123456789",
            "rate_limit_rps": RATE,
            "api_base_url": sandbox_url,
        },
        webhooks={"auto_subscribe": False},
    )


async def _import(
    sandbox_url: str, leads: int, database_url: str
) -> tuple[float, dict[str, Any], int, list[dict[str, Any]]]:
    async with httpx.AsyncClient(base_url=sandbox_url, timeout=60.0) as control:
        account = await _seed(control, leads)
        services = Services.build(_settings(database_url, account.client_id, sandbox_url))
        await services.start()
        try:
            async with services.db.transaction() as session:
                await services.connect.import_tokens(
                    session,
                    OWNER,
                    domain=account.host,
                    access_token=account.token,
                    refresh_token=None,
                    expires_in=None,
                    client_id=None,
                    client_secret=None,
                    redirect_uri=None,
                )
            since = (await control.get("/_sandbox/clock")).json()["now"]
            started = time.perf_counter()
            queued, _ = await services.imports.start(OWNER, actor="bench")
            worker = services.new_job_worker(concurrency=1)
            while True:
                if await worker.run_once():
                    continue
                state = (await services.imports.get(OWNER, queued["id"]))["state"]
                if state in ("succeeded", "failed"):
                    break
                await asyncio.sleep(0.05)  # a slice ended: its job is due again shortly
            seconds = time.perf_counter() - started
            shown = await services.imports.get(OWNER, queued["id"])
            async with services.db.read() as session:
                stored = await session.scalar(
                    select(func.count()).select_from(Lead).where(Lead.owner == OWNER)
                )
            log = (
                await control.get(
                    "/_sandbox/requests", params={"account_id": account.id, "since": since}
                )
            ).json()
        finally:
            await services.stop()
    return seconds, shown, int(stored or 0), log


async def run(leads: int, database_url: str | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder, running_sandbox(RATE) as sandbox_url:
        url = database_url or f"sqlite+aiosqlite:///{folder}/bench.db"
        seconds, shown, stored, log = await _import(sandbox_url, leads, url)
    api = [r for r in log if r["path"].startswith("/api/v4")]
    lead_pages = [r for r in api if r["path"] == "/api/v4/leads"]
    # The lead pages: from the first lead request's arrival to the commit of the last one (the
    # import's finished_at). Both are this host's wall clock: the sandbox's runs in real time.
    finished = datetime.fromisoformat(shown["finished_at"]).timestamp()
    lead_seconds = finished - lead_pages[0]["time"] if lead_pages else 0.0
    ceiling = PAGE * RATE
    throughput = leads / lead_seconds if lead_seconds else 0.0
    whole = leads / seconds if seconds else 0.0
    result = {
        "benchmark": "import",
        "rate_limit_rps": RATE,
        "leads": leads,
        "stored": stored,
        "state": shown["state"],
        "requests": len(api),
        "lead_pages": len(lead_pages),
        "lead_pages_floor": math.ceil(leads / PAGE),
        "seconds": round(seconds, 3),
        "lead_seconds": round(lead_seconds, 3),
        "ceiling_leads_per_second": ceiling,
        "leads_per_second": round(throughput, 1),
        "ratio": round(throughput / ceiling, 4),
        "whole_import_leads_per_second": round(whole, 1),
        "whole_import_ratio": round(whole / ceiling, 4),
        "target_ratio": TARGET,
        "responses_429": sum(1 for r in api if r["status"] == 429),
        "responses_403": sum(1 for r in api if r["status"] == 403),
        "most_in_one_second": most_in_one_second([r["time"] for r in api]),
        "database": "postgresql" if database_url and "postgres" in database_url else "sqlite",
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    result["passed"] = (
        result["ratio"] >= TARGET
        and result["responses_429"] == 0
        and result["responses_403"] == 0
        and result["stored"] == leads
        and result["state"] == "succeeded"
    )
    return result


def _table(result: dict[str, Any]) -> str:
    rows = [
        ("run", "leads", "requests", "pages", "seconds", "leads/s", "of 1,750", "429s", "max/1s"),
        (
            "lead pages",
            f"{result['stored']:,}",
            str(result["lead_pages"]),
            f"{result['lead_pages']} (≥ {result['lead_pages_floor']})",
            f"{result['lead_seconds']:.2f}",
            f"{result['leads_per_second']:,.0f}",
            f"{result['ratio']:.1%} (≥ {TARGET:.0%})",
            str(result["responses_429"]),
            str(result["most_in_one_second"]),
        ),
        (
            "whole import",
            f"{result['stored']:,}",
            str(result["requests"]),
            "",
            f"{result['seconds']:.2f}",
            f"{result['whole_import_leads_per_second']:,.0f}",
            f"{result['whole_import_ratio']:.1%}",
            str(result["responses_429"]),
            str(result["most_in_one_second"]),
        ),
    ]
    lines = grid(rows)
    lines.append("")
    lines.append(f"database: {result['database']}; import {result['state']}")
    lines.append(f"target met: {'yes' if result['passed'] else 'NO'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--leads", type=int, default=10_000)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.leads, args.database_url))
    return write_result(RESULTS, result, _table(result))


if __name__ == "__main__":
    raise SystemExit(main())
