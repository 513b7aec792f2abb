"""The lead API: ``POST /leads`` accepted at ≥ 0.4 × ``/healthz`` requests/s with a durable commit,
and 10,000 of them pushed to amoCRM within 1.15 × the floor ``ceil(10000 / 50) / 7`` s, 0 × 429.

Both phases run ``amobridge serve`` as an operator runs it (one uvicorn worker, settings from the
environment, a clean working directory) against the sandbox running as ``amobridge sandbox`` does,
in a process of its own with its rate limiter **on** at 7 requests per second (amoCRM's limit),
once per database: SQLite in a temp file, PostgreSQL in a temporary database on 127.0.0.1:5432.

**Accept.** Workers off (``AMOBRIDGE_SERVER__RUN_WORKERS=false``): only the answering end is
measured. An ``app`` API key is made with ``amobridge api-keys create``, the owner is connected
with ``POST /amocrm/tokens`` (a long-lived sandbox token) and one lead is posted first (it reads
the account's pipelines and fields into the catalogue cache, as the first lead of a day does).
``wrk`` (one thread, ``--connections`` keep-alive connections, ``--latency``) then loads,
alternately for ``--rounds`` rounds, ``GET /healthz`` — the baseline: what this machine gives any
route of the app right now — and ``POST /leads`` with the app key. A Lua script makes every body a
new lead (its name, ``external_id``, and its contact's e-mail and phone count up: a new contact
each time, deduplicated against the mirror and stored with the lead, its push job and its audit
entry, all committed before the 201) and counts the 201s. Afterwards the leads are counted: every
answered 201 must be stored.

**Push.** In a database of its own and a new sandbox account, ``--leads`` leads (each with its own
contact) are posted with workers off; then the service is started again with workers on, and the
push is timed from the first request reaching the sandbox to the last lead's ``synced_at``. The
floor is one ``POST /api/v4/leads/complex`` of 50 per 1/7 s; the sandbox's request log gives the
429s, the most requests in any one second, and every request by path (what the push spends
besides the creates).

Targets, per database: leads/healthz ≥ 0.4, 0 errors, every 201 stored; push ≤ 1.15 × floor,
0 × 429, every lead ``synced``. Prints a table, writes ``bench/results/leads.json`` and returns 0
when every target is met.

    python bench/leads.py [--duration 4] [--rounds 2] [--connections 16] [--leads 10000]
                          [--databases sqlite,postgres] [--phases accept,push]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from _leads_accept import AcceptRun, measure_accept
from _leads_sandbox import (
    OWNER,
    RATE,
    lead_counts,
    pointed_at,
    post_leads,
    sandbox_clock,
    sandbox_log,
)
from _support import (
    Measurement,
    add_load_arguments,
    machine,
    most_in_one_second,
    new_account,
    running_sandbox,
    write_result,
)
from service import (
    create_app_key,
    database_at,
    import_token,
    pick_databases,
    run_cli,
    running_service,
    service_env,
)

TARGET_PUSH = 1.15
BATCH = 50
PUSH_DEADLINE = 900.0  # seconds the push may take before the run is called failed
RESULTS = Path(__file__).resolve().parent / "results" / "leads.json"


def import_account(env: dict[str, str], workdir: Path) -> None:
    """``amobridge import`` of the (empty) account, as an operator runs it after connecting: the
    mirror then holds the account's contacts, so the push looks for a lead's contact there."""
    out = run_cli(env, workdir, "import", "--owner", OWNER, "--json", timeout=120)
    if '"succeeded"' not in out:
        raise RuntimeError(f"amobridge import did not succeed: {out[-500:]}")


def _requests_by_path(log: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for entry in log:
        name = f"{entry['method']} {entry['path']}"
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def measure_push(database: str, sandbox: str, args: argparse.Namespace) -> dict[str, Any]:
    from amobridge.auth.service import new_api_key
    from amobridge.storage.crypto import generate_key

    admin_key, _ = new_api_key()
    key = generate_key()
    account = new_account(sandbox, f"push{database}")
    with tempfile.TemporaryDirectory(prefix=f"amobridge-bench-push-{database}-") as tmp:
        workdir = Path(tmp)
        with database_at(database, workdir) as url:
            env = pointed_at(service_env(url, key, admin_key, args.log_level), sandbox, account)
            with running_service(env, workdir) as base:
                app_key = create_app_key(env, workdir)
                import_token(base, admin_key, OWNER, account.host, account.token)
                import_account(env, workdir)
                started = time.perf_counter()
                created, other = asyncio.run(
                    post_leads(base, app_key, uuid.uuid4().hex[:8], args.leads)
                )
                posting = time.perf_counter() - started
            since = sandbox_clock(sandbox)
            env["AMOBRIDGE_SERVER__RUN_WORKERS"] = "true"
            with running_service(env, workdir):
                deadline = time.monotonic() + PUSH_DEADLINE
                while True:
                    counts = asyncio.run(lead_counts(url))
                    states = counts["states"]
                    done = states.get("synced", 0) + states.get("failed", 0)
                    if done >= created or time.monotonic() > deadline:
                        break
                    time.sleep(1.0)  # polling the database: the push announces nothing here
            log = sandbox_log(sandbox, account, since)
    first = min((entry["time"] for entry in log), default=None)
    last = counts["last_synced"]
    seconds = (last - first) if first is not None and last is not None else float("inf")
    floor = math.ceil(created / BATCH) / RATE
    result = {
        "database": database,
        "leads": args.leads,
        "answered_201": created,
        "answered_other": other,
        "posting_seconds": round(posting, 2),
        "states": counts["states"],
        "contacts": counts["contacts"],
        "requests": len(log),
        "requests_by_path": _requests_by_path(log),
        "responses_429": sum(1 for entry in log if entry["status"] == 429),
        "most_in_one_second": most_in_one_second([entry["time"] for entry in log]),
        "seconds": round(seconds, 2),
        "floor_seconds": round(floor, 2),
        "ratio": round(seconds / floor, 3) if floor else None,
    }
    result["passed"] = (
        other == 0
        and created == args.leads
        and counts["states"].get("synced", 0) == created
        and result["responses_429"] == 0
        and seconds <= TARGET_PUSH * floor
    )
    return result


def _accept_lines(runs: list[AcceptRun], args: argparse.Namespace) -> list[str]:
    lines = [
        f"accept: wrk -t1 -c{args.connections}, best of {args.rounds} × {args.duration:g} s "
        f"after {args.warmup:g} s warm-up; workers off",
        f"{Measurement.header(12)}{'ratio':>8}{'stored/201':>16}  result",
    ]
    lines.append("-" * len(lines[-1]))
    for run in runs:
        for m in (run.healthz, run.leads):
            last = m is run.leads
            lines.append(
                f"{m.row(run.database, 12)}{(f'{run.ratio:.2f}' if last else ''):>8}"
                f"{(f'{run.stored}/{run.created}' if last else ''):>16}  "
                f"{('PASS' if run.passed else 'FAIL') if last else ''}"
            )
    return lines


def _push_lines(pushes: list[dict[str, Any]]) -> list[str]:
    lines = [
        "push: rate limit 7/s, floor ceil(leads/50)/7 s, from the first request at the sandbox "
        "to the last lead synced",
        f"{'database':<10}{'leads':>7}{'synced':>8}{'requests':>10}{'seconds':>9}{'floor':>8}"
        f"{'ratio':>8}{'429s':>6}{'max/1s':>8}  result",
    ]
    lines.append("-" * len(lines[-1]))
    for push in pushes:
        lines.append(
            f"{push['database']:<10}{push['answered_201']:>7}"
            f"{push['states'].get('synced', 0):>8}{push['requests']:>10}{push['seconds']:>9.2f}"
            f"{push['floor_seconds']:>8.2f}{push['ratio']:>8.3f}{push['responses_429']:>6}"
            f"{push['most_in_one_second']:>8}  {'PASS' if push['passed'] else 'FAIL'}"
        )
        by_path = ", ".join(f"{k} × {v}" for k, v in push["requests_by_path"].items())
        lines.append(f"  {push['database']} requests: {by_path}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add_load_arguments(parser)
    parser.add_argument("--leads", type=int, default=10_000, help="leads the push phase pushes")
    parser.add_argument("--databases", default="sqlite,postgres", help="comma-separated")
    parser.add_argument("--phases", default="accept,push", help="comma-separated")
    parser.add_argument("--log-level", default="WARNING", help="AMOBRIDGE_LOG_LEVEL of the service")
    args = parser.parse_args(argv)
    phases = {p.strip() for p in args.phases.split(",") if p.strip()}
    if not phases or phases - {"accept", "push"}:
        parser.error("--phases: accept, push or both")
    wrk = shutil.which("wrk")
    if "accept" in phases and wrk is None:
        print("wrk is not installed (make system-deps): the accept phase needs it")
        return 1
    accepts: list[AcceptRun] = []
    pushes: list[dict[str, Any]] = []
    databases, skipped = pick_databases(parser, args.databases)
    with running_sandbox(RATE) as sandbox:
        for database in databases:
            if "accept" in phases:
                assert wrk is not None
                accepts.append(measure_accept(database, sandbox, args, wrk))
            if "push" in phases:
                pushes.append(measure_push(database, sandbox, args))
    lines = [f"lead API benchmark (load average {os.getloadavg()[0]:.1f})"]
    if accepts:
        lines += _accept_lines(accepts, args)
    if pushes:
        lines += _push_lines(pushes)
    lines += [f"{db:<10}not measured: {why}  FAIL" for db, why in skipped.items()]
    lines.append(
        "targets: leads/healthz ≥ 0.4, 0 errors, every 201 stored; push ≤ 1.15 × floor, "
        "0 × 429, every lead synced"
    )
    passed = (
        bool(accepts or pushes)
        and not skipped
        and all(run.passed for run in accepts)
        and all(push["passed"] for push in pushes)
    )
    summary = {
        "benchmark": "leads",
        "tool": "wrk",
        "connections": args.connections,
        "duration_s": args.duration,
        "rounds": args.rounds,
        **machine(),
        "targets": {"leads_to_healthz": 0.4, "push_to_floor": TARGET_PUSH, "responses_429": 0},
        "accept": [run.public() for run in accepts],
        "push": pushes,
        "skipped": skipped,
        "passed": passed,
    }
    return write_result(RESULTS, summary, "\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
