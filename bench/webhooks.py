"""Webhook ingestion: ``POST /webhooks/amocrm/{secret}`` at ≥ 0.5 × ``/healthz`` requests/s.

Starts ``amobridge serve`` as an operator runs it (one uvicorn worker, background workers off so
only the receiving end is measured, settings from the environment, a clean working directory)
once per database — SQLite in a temp file, and PostgreSQL in a temporary database on
127.0.0.1:5432 that the benchmark creates and drops — then:

1. imports a long-lived token for one owner with ``POST /amocrm/tokens`` (a JWT whose
   ``account_id`` claim names the account), which gives the connection its webhook URL secret;
   the benchmark reads the secret back from the database with the key it gave the service;
2. loads, with ``wrk`` (one thread, ``--connections`` keep-alive connections, ``--latency``),
   alternately ``GET /healthz`` — the baseline: what this machine gives any route of the app
   right now — and ``POST /webhooks/amocrm/{secret}`` with an amoCRM-shaped form body (a lead
   moved to another stage, with custom fields; ~0.9 KB). A Lua script makes every body unique
   (the lead id and ``updated_at`` count up), so each one is a new delivery — stored with its
   processing job and committed before its 200 — never a cheaper duplicate.

Afterwards the stored deliveries are counted: at least every answered request must be there.
Targets, per database: webhook/healthz ≥ 0.5, webhook p99 ≤ 20 ms, no error. Prints a table,
writes ``bench/results/webhooks.json`` and returns 0 when every target is met.

    python bench/webhooks.py [--duration 4] [--rounds 2] [--connections 16]
                             [--databases sqlite,postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from _support import (
    Measurement,
    WrkNumbers,
    add_load_arguments,
    best_of_rounds,
    lua_string,
    machine,
    write_result,
    wrk_load,
    wrk_run,
)
from service import database_at, import_token, pick_databases, running_service, service_env

TARGET_RATIO = 0.5
TARGET_P99_MS = 20.0
RESULTS = Path(__file__).resolve().parent / "results" / "webhooks.json"
OWNER = "bench-owner"
ACCOUNT_ID = 30739638
SUBDOMAIN = "bench"


def form_body(lead_id: str, updated_at: str) -> str:
    """amoCRM's body for a stage move, %-encoded as it sends it (``{lead}``/``{at}`` markers)."""
    from urllib.parse import urlencode

    fields = [
        ("account[subdomain]", SUBDOMAIN),
        ("account[id]", str(ACCOUNT_ID)),
        ("account[_links][self]", f"https://{SUBDOMAIN}.amocrm.ru"),
        ("leads[status][0][id]", lead_id),
        ("leads[status][0][name]", "Заявка с сайта"),
        ("leads[status][0][status_id]", "142"),
        ("leads[status][0][old_status_id]", "53861254"),
        ("leads[status][0][price]", "15000"),
        ("leads[status][0][responsible_user_id]", "6114522"),
        ("leads[status][0][last_modified]", updated_at),
        ("leads[status][0][modified_user_id]", "6114522"),
        ("leads[status][0][created_user_id]", "6114522"),
        ("leads[status][0][date_create]", "1672100000"),
        ("leads[status][0][pipeline_id]", "6254262"),
        ("leads[status][0][account_id]", str(ACCOUNT_ID)),
        ("leads[status][0][custom_fields][0][id]", "500004"),
        ("leads[status][0][custom_fields][0][name]", "Источник"),
        ("leads[status][0][custom_fields][0][values][0][value]", "Сайт"),
        ("leads[status][0][custom_fields][0][values][0][enum]", "139517"),
        ("leads[status][0][custom_fields][1][id]", "500006"),
        ("leads[status][0][custom_fields][1][name]", "Город"),
        ("leads[status][0][custom_fields][1][values][0][value]", "Москва"),
        ("leads[status][0][created_at]", "1672100000"),
        ("leads[status][0][updated_at]", updated_at),
    ]
    return urlencode(fields)


def wrk_post(wrk: str, url: str, *, duration: float, connections: int) -> WrkNumbers:
    """(requests, seconds, errors, p50 ms, p99 ms) of one ``wrk -t1`` run POSTing unique bodies."""
    template = form_body("LEADID", "UPDATEDAT")
    script = "\n".join(
        [
            'wrk.method = "POST"',
            'wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"',
            'wrk.headers["User-Agent"] = "amoCRM-Webhooks/3.0"',
            f"local template = {lua_string(template)}",
            f"local counter = {int(time.time() * 1000) % 1_000_000_000}",
            "request = function()",
            "  counter = counter + 1",
            '  local body = string.gsub(template, "LEADID", tostring(counter))',
            '  body = string.gsub(body, "UPDATEDAT", tostring(1700000000 + counter))',
            "  return wrk.format(nil, nil, nil, body)",
            "end",
        ]
    )
    numbers, _ = wrk_run(wrk, url, script, duration=duration, connections=connections)
    return numbers


@dataclass
class DatabaseRun:
    database: str
    healthz: Measurement
    webhook: Measurement
    sent: int
    stored: int

    @property
    def ratio(self) -> float:
        return self.webhook.rps / self.healthz.rps if self.healthz.rps else 0.0

    @property
    def passed(self) -> bool:
        return (
            self.ratio >= TARGET_RATIO
            and self.webhook.p99_ms <= TARGET_P99_MS
            and self.healthz.errors == 0
            and self.webhook.errors == 0
            and self.stored >= self.sent
        )

    def public(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "healthz": self.healthz.public(),
            "webhook": self.webhook.public(),
            "webhook_to_healthz": round(self.ratio, 3),
            "answered": self.sent,
            "stored": self.stored,
            "passed": self.passed,
        }


def _token() -> str:
    import jwt

    claims = {
        "account_id": ACCOUNT_ID,
        "exp": int(time.time()) + 86400 * 365,
        "iat": int(time.time()),
        "sub": "6114522",
    }
    return jwt.encode(claims, "bench-only-" + uuid.uuid4().hex, algorithm="HS256")


async def _secret_and_count(url: str, key: str) -> tuple[str, int]:
    from sqlalchemy import func, select

    from amobridge.connect.repository import ConnectionRepository
    from amobridge.storage.crypto import Keyring
    from amobridge.storage.db import Database
    from amobridge.storage.tables import WebhookDelivery

    keyring = Keyring([key])
    database = Database(url)
    try:
        async with database.read() as session:
            row = await ConnectionRepository(session, keyring).for_owner(OWNER)
            if row is None or row.webhook_secret_enc is None:
                raise RuntimeError("the imported connection has no webhook secret")
            stored = await session.scalar(select(func.count()).select_from(WebhookDelivery))
        return keyring.decrypt(row.webhook_secret_enc), int(stored or 0)
    finally:
        await database.dispose()


def measure(database: str, args: argparse.Namespace, wrk: str) -> DatabaseRun:
    from amobridge.auth.service import new_api_key
    from amobridge.storage.crypto import generate_key

    admin_key, _ = new_api_key()
    key = generate_key()
    with tempfile.TemporaryDirectory(prefix=f"amobridge-bench-hooks-{database}-") as tmp:
        workdir = Path(tmp)
        with database_at(database, workdir) as url:
            env = service_env(url, key, admin_key, args.log_level)
            env["AMOBRIDGE_SERVER__PUBLIC_URL"] = "http://127.0.0.1:8000"
            with running_service(env, workdir) as base:
                import_token(base, admin_key, OWNER, f"{SUBDOMAIN}.amocrm.ru", _token())
                secret, _ = asyncio.run(_secret_and_count(url, key))
                hook = f"{base}/webhooks/amocrm/{secret}"
                check = httpx.post(
                    hook,
                    content=form_body("1", "1700000000"),
                    headers={"Content-Type": "application/x-www-form-urlencoded"},
                )
                if check.status_code != 200:
                    raise RuntimeError(f"the webhook answered {check.status_code}")

                sent = 1

                def load(name: str, seconds: float) -> Measurement:
                    nonlocal sent
                    if name == "healthz":
                        got = wrk_load(
                            wrk,
                            base + "/healthz",
                            {},
                            duration=seconds,
                            connections=args.connections,
                        )
                        return Measurement(name, *got)
                    got = wrk_post(wrk, hook, duration=seconds, connections=args.connections)
                    measured = Measurement(name, *got)
                    sent += measured.requests - measured.errors
                    return measured

                best = best_of_rounds(load, ("healthz", "webhook"), args)
                _, stored = asyncio.run(_secret_and_count(url, key))
    # wrk counts a request once its answer is read: every counted 200 was committed before it.
    return DatabaseRun(database, best["healthz"], best["webhook"], sent, stored)


def report(runs: list[DatabaseRun], skipped: dict[str, str], args: argparse.Namespace) -> None:
    print(
        f"webhook ingestion benchmark (wrk -t1 -c{args.connections}, best of {args.rounds} × "
        f"{args.duration:g} s after {args.warmup:g} s warm-up; load average "
        f"{os.getloadavg()[0]:.1f})"
    )
    header = f"{Measurement.header(10)}{'ratio':>8}{'stored':>14}  result"
    print(header)
    print("-" * len(header))
    for run in runs:
        for m in (run.healthz, run.webhook):
            last = m is run.webhook
            print(
                f"{m.row(run.database, 10)}{(f'{run.ratio:.2f}' if last else ''):>8}"
                f"{(f'{run.stored}/{run.sent}' if last else ''):>14}  "
                f"{('PASS' if run.passed else 'FAIL') if last else ''}"
            )
    for database, why in skipped.items():
        print(f"{database:<10}not measured: {why}  FAIL")
    print(
        f"targets: webhook/healthz ≥ {TARGET_RATIO}, webhook p99 ≤ {TARGET_P99_MS:g} ms, "
        "0 errors, every answered delivery stored"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add_load_arguments(parser)
    parser.add_argument("--databases", default="sqlite,postgres", help="comma-separated")
    parser.add_argument("--log-level", default="WARNING", help="AMOBRIDGE_LOG_LEVEL of the service")
    args = parser.parse_args(argv)
    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk is not installed (make system-deps): this benchmark needs it")
        return 1
    databases, skipped = pick_databases(parser, args.databases)
    runs = [measure(database, args, wrk) for database in databases]
    report(runs, skipped, args)
    passed = bool(runs) and not skipped and all(run.passed for run in runs)
    summary = {
        "benchmark": "webhooks",
        "tool": "wrk",
        "connections": args.connections,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "rounds": args.rounds,
        "log_level": args.log_level,
        **machine(),
        "targets": {"webhook_to_healthz": TARGET_RATIO, "webhook_p99_ms": TARGET_P99_MS},
        "results": [run.public() for run in runs],
        "skipped": skipped,
        "passed": passed,
    }
    return write_result(RESULTS, summary, "")


if __name__ == "__main__":
    sys.exit(main())
