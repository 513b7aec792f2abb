"""Crash proof: 10,000 leads through ``POST /leads`` while a worker is killed 20 times (SIGKILL).

No lead lost, none doubled (invariants 1 and 2), with real processes, once per database — SQLite
in a temp file, and PostgreSQL in a temporary database on 127.0.0.1:5432 that the benchmark
creates and drops:

- the sandbox amoCRM as ``amobridge sandbox`` runs it, its rate limit **on** (7 requests/s, as
  amoCRM; ``--rate-limit-rps``);
- ``amobridge serve`` with its in-process workers off (``AMOBRIDGE_SERVER__RUN_WORKERS=false``),
  an owner connected with a long-lived token through ``POST /amocrm/tokens``;
- ``--workers`` separate ``amobridge worker`` processes (job leases of ``--lease-seconds``).

``--leads`` leads, each with a contact (every 10th lead gives the previous lead's contact, written
otherwise: one contact for both), are POSTed by ``--posters`` clients at once. ``--kills``
times, at a random point of each of ``kills + 1`` equal parts of the posting, the worker that
holds running push jobs is killed with SIGKILL a random 0–0.4 s into its run (any worker if none
claims within 10 s), and started again; no POST past the next kill's point starts before the
kill is done, so every kill comes while leads still arrive and are pushed. When the queue is
empty, the sandbox's account is read through API v4 (250 a page, another integration's token)
and the service's database with SQL. It passes when the
sandbox holds exactly the leads posted (distinct names and amobridge refs, 0 duplicates), each
linked to its expected contact, the expected number of contacts exists there and locally, every
local lead and contact is ``synced``, and every kill was done. The proof itself lives in
``tests/integration/crash_support.py`` (``test_leads_crash.py`` runs a small one in the suite).

Prints a table per database, writes ``bench/results/crash.json``, returns 0 when every
invariant holds on every database.

    python bench/crash.py [--leads 10000] [--kills 20] [--databases sqlite,postgres]
                          [--workers 2] [--rate-limit-rps 7] [--lease-seconds 2] [--posters 2]
                          [--seed N]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parent.parent
for _path in (_ROOT / "tests", _ROOT / "tests" / "integration"):
    if str(_path) not in sys.path:
        sys.path.append(str(_path))  # the proof shared with the test suite

from crash_count import CrashResult  # noqa: E402
from crash_support import CrashConfig, run_crash  # noqa: E402

from _support import write_result  # noqa: E402
from service import postgres_database, postgres_problem, sqlite_database  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "crash.json"
ROWS: list[tuple[str, str]] = [
    ("leads posted", "leads_posted"),
    ("POST errors", "post_errors"),
    ("sandbox leads", "sandbox_leads"),
    ("distinct names", "distinct_names"),
    ("distinct refs", "distinct_refs"),
    ("duplicates", "duplicates"),
    ("contacts expected", "contacts_expected"),
    ("sandbox contacts", "sandbox_contacts"),
    ("distinct contact e-mails", "distinct_contact_emails"),
    ("duplicate contacts", "duplicate_contacts"),
    ("leads with a wrong contact", "wrong_contact"),
    ("local leads", "local_leads"),
    ("local synced", "local_synced"),
    ("local pending", "local_pending"),
    ("local failed", "local_failed"),
    ("local contacts synced", "local_contacts_synced"),
    ("local amo_ids in sandbox", "local_amo_ids_matching"),
    ("kills done", "kills_done"),
    ("kills holding jobs", "kills_holding_jobs"),
    ("adopted after a kill", "adopted_after_kill"),
    ("taken over from a live one", "taken_over_alive"),
    ("lease renewals failed", "lease_renewals_failed"),
]


def table(results: list[CrashResult], skipped: dict[str, str], args: argparse.Namespace) -> str:
    names = [r.database for r in results]
    lines = [
        f"crash proof: {args.leads:,} leads, {args.kills} kills (SIGKILL) of {args.workers} "
        f"worker process(es), sandbox rate limit {args.rate_limit_rps or 'off'} rps, lease "
        f"{args.lease_seconds:g} s; floor ⌈{args.leads}/50⌉/7 ≈ "
        f"{math.ceil(args.leads / 50) / 7:.0f} s; load average {os.getloadavg()[0]:.1f}",
        f"{'':<28}" + "".join(f"{n:>12}" for n in names),
        "-" * (28 + 12 * len(names)),
    ]
    for label, attribute in ROWS:
        lines.append(f"{label:<28}" + "".join(f"{getattr(r, attribute):>12,}" for r in results))
    lines.append(f"{'posting s':<28}" + "".join(f"{r.post_seconds:>12.1f}" for r in results))
    lines.append(f"{'seconds (post + push)':<28}" + "".join(f"{r.seconds:>12.1f}" for r in results))
    lines.append(
        f"{'result':<28}" + "".join(f"{'PASS' if r.passed else 'FAIL':>12}" for r in results)
    )
    for result in results:
        for problem in result.problems:
            lines.append(f"{result.database}: {problem}")
    for database, why in skipped.items():
        lines.append(f"{database}: not measured: {why}  FAIL")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--leads", type=int, default=10_000)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--databases", default="sqlite,postgres", help="comma-separated")
    parser.add_argument("--workers", type=int, default=2, help="amobridge worker processes")
    parser.add_argument(
        "--rate-limit-rps", type=int, default=7, help="the sandbox's limit (0: off)"
    )
    parser.add_argument("--lease-seconds", type=float, default=2.0)
    parser.add_argument(
        "--in-flight-seconds",
        type=float,
        default=10.0,
        help="AMOBRIDGE_SYNC__IN_FLIGHT_SECONDS of the workers (the service's default is 75)",
    )
    parser.add_argument("--posters", type=int, default=2, help="concurrent POST /leads clients")
    parser.add_argument("--deadline", type=float, default=900.0, help="seconds per database")
    parser.add_argument("--seed", type=int, default=None, help="of the kill schedule")
    args = parser.parse_args(argv)
    config = CrashConfig(
        leads=args.leads,
        kills=args.kills,
        workers=args.workers,
        rate_limit_rps=args.rate_limit_rps,
        lease_seconds=args.lease_seconds,
        in_flight_seconds=args.in_flight_seconds,
        posters=args.posters,
        deadline=args.deadline,
    )
    results: list[CrashResult] = []
    skipped: dict[str, str] = {}
    for database in [d.strip() for d in args.databases.split(",") if d.strip()]:
        if database not in ("sqlite", "postgres"):
            parser.error(f"unknown database {database!r}: sqlite or postgres")
        problem = postgres_problem() if database == "postgres" else None
        if problem:
            skipped[database] = problem
            continue
        workdir = Path(tempfile.mkdtemp(prefix=f"amobridge-crash-{database}-"))
        holder = sqlite_database(workdir) if database == "sqlite" else postgres_database()
        with holder as url:
            results.append(run_crash(database, url, workdir, config, seed=args.seed, say=print))
        if results[-1].passed:
            shutil.rmtree(workdir, ignore_errors=True)
        else:  # the processes' logs, for whoever looks into it
            print(f"{database}: FAILED; the logs are kept in {workdir}")
    passed = bool(results) and not skipped and all(r.passed for r in results)
    summary: dict[str, Any] = {
        "benchmark": "crash",
        "leads": args.leads,
        "kills": args.kills,
        "workers": args.workers,
        "rate_limit_rps": args.rate_limit_rps,
        "lease_seconds": args.lease_seconds,
        "in_flight_seconds": args.in_flight_seconds,
        "seed": args.seed,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "measured_at": int(time.time()),
        "results": [r.public() for r in results],
        "skipped": skipped,
        "passed": passed,
    }
    return write_result(RESULTS, summary, table(results, skipped, args))


if __name__ == "__main__":
    sys.exit(main())
