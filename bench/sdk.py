"""SDK throughput under amoCRM's rate limit: 10,000 leads at 7 requests/second.

Against the sandbox (in-process through httpx's ``ASGITransport``) with its rate limiter **on** at 7
requests per second per integration and account (amoCRM's limit), the SDK creates ``--leads``
leads with ``amo.leads.create`` in batches of ``--batch`` (50, amoCRM's recommendation). The floor is
``ceil(leads / batch) / 7`` seconds; the target is at most **1.15 ×** the floor with **0**
responses 429 (counted from the sandbox's request log, not from the client).

In the same run it times the naive way — one lead per request — on ``--naive`` leads and
extrapolates to ``--leads``. Prints a table, writes ``bench/results/sdk.json`` and returns 0 when
the batched run met its target.

    python bench/sdk.py [--leads 10000] [--batch 50] [--naive 100]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import platform
import time
from pathlib import Path
from typing import Any

import httpx

from _support import create_account, grid, most_in_one_second, write_result
from amobridge.amo import AmoClient, LeadCreate, StaticTokenProvider
from amobridge.sandbox import SandboxConfig, create_sandbox_app

RATE = 7
TARGET_RATIO = 1.15
RESULTS = Path(__file__).resolve().parent / "results" / "sdk.json"
CONTROL = "http://sandbox.test"


async def _setup(app: Any) -> tuple[str, str, int]:
    """An account, an integration and a long-lived token, through the control API."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=CONTROL) as c:
        account = await create_account(c, "bench")
    return account.host, account.token, account.id


async def _log(app: Any, account_id: int, since: float) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=CONTROL) as c:
        reply = await c.get(
            "/_sandbox/requests",
            params={"account_id": account_id, "path_prefix": "/api/v4", "since": since},
        )
    return list(reply.json())


async def _timed_run(
    app: Any, amo: AmoClient, account_id: int, count: int, batch: int, label: str
) -> dict[str, Any]:
    sandbox = app.state.sandbox
    since = sandbox.clock.now()
    leads = [LeadCreate(name=f"{label} {i}", price=i) for i in range(count)]
    started = time.perf_counter()
    created = await amo.leads.create(leads, chunk_size=batch)
    seconds = time.perf_counter() - started
    log = await _log(app, account_id, since)
    requests = math.ceil(count / batch)
    floor = requests / RATE
    return {
        "leads": count,
        "batch_size": batch,
        "requests": requests,
        "requests_seen": len(log),
        "created": len({c.id for c in created}),
        "seconds": round(seconds, 3),
        "floor_seconds": round(floor, 3),
        "ratio": round(seconds / floor, 4),
        "responses_429": sum(1 for r in log if r["status"] == 429),
        "responses_403": sum(1 for r in log if r["status"] == 403),
        "most_in_one_second": most_in_one_second([r["time"] for r in log]),
    }


async def run(leads: int, batch: int, naive: int) -> dict[str, Any]:
    config = SandboxConfig(rate_limit_enabled=True, rate_limit_rps=RATE)
    app = create_sandbox_app(config)
    host, token, account_id = await _setup(app)
    async with AmoClient(
        host, token_provider=StaticTokenProvider(token), transport=httpx.ASGITransport(app=app)
    ) as amo:
        batched = await _timed_run(app, amo, account_id, leads, batch, "batched")
        # Let the sandbox's one-second window drain so the two runs do not share it.
        await asyncio.sleep(1.1)
        one_by_one = await _timed_run(app, amo, account_id, naive, 1, "naive")
    await app.state.sandbox.aclose()
    per_lead = one_by_one["seconds"] / max(1, naive)
    one_by_one["extrapolated_seconds"] = round(per_lead * leads, 1)
    one_by_one["extrapolated_to_leads"] = leads
    batched["target_ratio"] = TARGET_RATIO
    batched["passed"] = (
        batched["ratio"] <= TARGET_RATIO
        and batched["responses_429"] == 0
        and batched["responses_403"] == 0
        and batched["created"] == leads
    )
    return {
        "benchmark": "sdk",
        "rate_limit_rps": RATE,
        "batched": batched,
        "naive": one_by_one,
        "speedup": round(one_by_one["extrapolated_seconds"] / max(batched["seconds"], 1e-9), 1),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "passed": batched["passed"],
    }


def _table(result: dict[str, Any]) -> str:
    b, n = result["batched"], result["naive"]
    rows = [
        ("way", "leads", "requests", "seconds", "floor s", "ratio", "429s", "max/1s"),
        (
            f"batched ×{b['batch_size']}",
            f"{b['leads']:,}",
            str(b["requests_seen"]),
            f"{b['seconds']:.2f}",
            f"{b['floor_seconds']:.2f}",
            f"{b['ratio']:.3f} (≤ {TARGET_RATIO})",
            str(b["responses_429"]),
            str(b["most_in_one_second"]),
        ),
        (
            "one per request",
            f"{n['leads']:,}",
            str(n["requests_seen"]),
            f"{n['seconds']:.2f}",
            f"{n['floor_seconds']:.2f}",
            f"{n['ratio']:.3f}",
            str(n["responses_429"]),
            str(n["most_in_one_second"]),
        ),
    ]
    lines = grid(rows)
    lines.append("")
    lines.append(
        f"one lead per request, extrapolated to {n['extrapolated_to_leads']:,} leads: "
        f"{n['extrapolated_seconds']:,.0f} s ({result['speedup']}× slower than batched)"
    )
    lines.append(f"target met: {'yes' if result['passed'] else 'NO'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--leads", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--naive", type=int, default=100)
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.leads, args.batch, args.naive))
    return write_result(RESULTS, result, _table(result))


if __name__ == "__main__":
    raise SystemExit(main())
