"""Service read path: an authenticated ``GET /amocrm/status`` at ≥ 0.3 × ``/healthz`` requests/s.

Starts ``amobridge serve`` as an operator runs it (one uvicorn worker, background workers off,
settings from the environment, a clean working directory so no ``.env`` leaks in) once per
database — SQLite in a temp file, and PostgreSQL in a temporary database on 127.0.0.1:5432 that
the benchmark creates and drops — then:

1. makes an ``app`` API key with ``amobridge api-keys create`` (the way an operator does);
2. imports a long-lived token for one owner with ``POST /amocrm/tokens`` and the admin key;
3. loads, with ``wrk`` (one thread, 16 keep-alive connections, ``--latency``), alternately
   ``GET /healthz`` — the baseline: what this machine gives any route of the app right now — and
   ``GET /amocrm/status?owner=…`` with ``Authorization: Bearer <app key>`` — the full read path:
   API-key check (cached), the status (answered from the status cache, read from the database
   when it is ``connection_check_ms`` old), JSON.

A Lua script carries the key, so it never appears on a command line. Each route keeps its best
round; the ratio of the two is the number that survives a noisy machine. Targets, per database:
status/healthz ≥ 0.3, status p99 ≤ 50 ms, no error. Prints a table, writes
``bench/results/service.json`` and returns 0 when every target is met.
``--connection-check-ms 0`` reads every status from the database: the cost of the read unit.

    python bench/service.py [--duration 4] [--rounds 2] [--connections 16]
                            [--databases sqlite,postgres] [--connection-check-ms N]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from _support import (
    Measurement,
    add_load_arguments,
    amobridge,
    best_of_rounds,
    clean_env,
    free_port,
    machine,
    running_process,
    write_result,
    wrk_load,
)

TARGET_RATIO = 0.3
TARGET_P99_MS = 50.0
RESULTS = Path(__file__).resolve().parent / "results" / "service.json"
POSTGRES_SERVER = "postgresql://postgres@127.0.0.1:5432"
OWNER = "bench-owner"
START_DEADLINE = 60.0


@dataclass
class DatabaseRun:
    database: str
    healthz: Measurement
    status: Measurement

    @property
    def ratio(self) -> float:
        return self.status.rps / self.healthz.rps if self.healthz.rps else 0.0

    @property
    def passed(self) -> bool:
        return (
            self.ratio >= TARGET_RATIO
            and self.status.p99_ms <= TARGET_P99_MS
            and self.healthz.errors == 0
            and self.status.errors == 0
        )

    def public(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "healthz": self.healthz.public(),
            "status": self.status.public(),
            "status_to_healthz": round(self.ratio, 3),
            "passed": self.passed,
        }


# --- databases -----------------------------------------------------------------------------------


@contextlib.contextmanager
def sqlite_database(workdir: Path) -> Iterator[str]:
    yield f"sqlite:///{workdir / 'amobridge.db'}"


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A database of its own on the local server (trust auth), dropped afterwards."""
    import psycopg

    name = f"amobridge_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{POSTGRES_SERVER}/postgres", autocommit=True, connect_timeout=5) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{POSTGRES_SERVER}/{name}"
    finally:
        with psycopg.connect(f"{POSTGRES_SERVER}/postgres", autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postgres_problem() -> str | None:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=2):
            return None
    except OSError as exc:
        return f"127.0.0.1:5432 is not reachable ({exc.strerror or exc})"


def database_at(database: str, workdir: Path) -> contextlib.AbstractContextManager[str]:
    """The URL of a new ``"sqlite"`` (a file in ``workdir``) or ``"postgres"`` database."""
    return sqlite_database(workdir) if database == "sqlite" else postgres_database()


def pick_databases(parser: argparse.ArgumentParser, spec: str) -> tuple[list[str], dict[str, str]]:
    """The databases of the comma-separated ``spec`` that can be measured here, and why each
    other one cannot (PostgreSQL not reachable); an unknown name is a usage error."""
    chosen: list[str] = []
    skipped: dict[str, str] = {}
    for database in [d.strip() for d in spec.split(",") if d.strip()]:
        if database not in ("sqlite", "postgres"):
            parser.error(f"unknown database {database!r}: sqlite or postgres")
        problem = postgres_problem() if database == "postgres" else None
        if problem:
            skipped[database] = problem
        else:
            chosen.append(database)
    return chosen, skipped


# --- the service -----------------------------------------------------------------------------------


def service_env(
    database_url: str,
    secret_key: str,
    admin_key: str,
    log_level: str,
    connection_check_ms: int | None = None,
) -> dict[str, str]:
    env = clean_env(
        AMOBRIDGE_ENVIRONMENT="production",
        AMOBRIDGE_LOG_LEVEL=log_level,
        AMOBRIDGE_DATABASE__URL=database_url,
        AMOBRIDGE_SECURITY__SECRET_KEYS=secret_key,
        AMOBRIDGE_SECURITY__ADMIN_API_KEY=admin_key,
        AMOBRIDGE_SERVER__RUN_WORKERS="false",
    )
    if connection_check_ms is not None:
        env["AMOBRIDGE_AMO__CONNECTION_CHECK_MS"] = str(connection_check_ms)
    return env


@contextlib.contextmanager
def running_service(env: dict[str, str], workdir: Path, port: int | None = None) -> Iterator[str]:
    """``amobridge serve`` on ``port`` (a free one by default: give it when the service's public
    URL must be known before it starts), ready once ``/healthz`` answers 200."""
    port = port or free_port()
    base = f"http://127.0.0.1:{port}"
    with running_process(
        amobridge("serve", "--host", "127.0.0.1", "--port", str(port)),
        health_url=f"{base}/healthz",
        name="amobridge serve",
        env=env,
        cwd=workdir,
        log_path=workdir / "serve.log",
        deadline=START_DEADLINE,
    ):
        yield base


def run_cli(env: dict[str, str], workdir: Path, *args: str, timeout: float = 60) -> str:
    """``amobridge <args>`` as an operator runs it beside the service; its output."""
    done = subprocess.run(  # noqa: S603 - our own interpreter and program
        amobridge(*args),
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    if done.returncode != 0:
        command = " ".join(itertools.takewhile(lambda a: not a.startswith("-"), args))
        raise RuntimeError(
            f"amobridge {command} failed: {(done.stderr or done.stdout).strip()[-500:]}"
        )
    return done.stdout


def create_app_key(env: dict[str, str], workdir: Path) -> str:
    out = run_cli(env, workdir, "api-keys", "create", "--name", "bench", "--role", "app")
    return out.strip().splitlines()[-1]


def import_token(base: str, admin_key: str, owner: str, domain: str, access_token: str) -> None:
    """``POST /amocrm/tokens``: ``owner`` connected to ``domain`` with a long-lived token."""
    with httpx.Client(base_url=base, timeout=30) as client:
        made = client.post(
            "/amocrm/tokens",
            headers={"Authorization": f"Bearer {admin_key}"},
            json={"owner": owner, "domain": domain, "access_token": access_token},
        )
    if made.status_code != 201:  # not its body: a 422 would repeat the token
        raise RuntimeError(f"POST /amocrm/tokens answered {made.status_code}")


def connect_owner(base: str, admin_key: str, app_key: str) -> str:
    """A long-lived connection for ``OWNER``; checks the status read answers it."""
    import_token(base, admin_key, OWNER, "bench.amocrm.ru", "bench-long-lived-" + uuid.uuid4().hex)
    with httpx.Client(base_url=base, timeout=10) as client:
        path = f"/amocrm/status?owner={OWNER}"
        check = client.get(path, headers={"Authorization": f"Bearer {app_key}"})
        if check.status_code != 200 or check.json().get("connected") is not True:
            raise RuntimeError(f"GET {path} answered {check.status_code}")
        return path


# --- load: wrk -------------------------------------------------------------------------------------


def measure(database: str, args: argparse.Namespace, wrk: str) -> DatabaseRun:
    from amobridge.auth.service import new_api_key
    from amobridge.storage.crypto import generate_key

    admin_key, _ = new_api_key()
    with tempfile.TemporaryDirectory(prefix=f"amobridge-bench-{database}-") as tmp:
        workdir = Path(tmp)
        with database_at(database, workdir) as url:
            env = service_env(
                url, generate_key(), admin_key, args.log_level, args.connection_check_ms
            )
            with running_service(env, workdir) as base:
                app_key = create_app_key(env, workdir)
                status_path = connect_owner(base, admin_key, app_key)
                routes = {
                    "healthz": ("/healthz", {}),
                    "status": (status_path, {"Authorization": f"Bearer {app_key}"}),
                }

                def load(name: str, seconds: float) -> Measurement:
                    path, headers = routes[name]
                    got = wrk_load(
                        wrk, base + path, headers, duration=seconds, connections=args.connections
                    )
                    return Measurement(name, *got)

                best = best_of_rounds(load, routes, args)
    return DatabaseRun(database, best["healthz"], best["status"])


# --- main --------------------------------------------------------------------------------------------


def _check_ms(args: argparse.Namespace) -> str:
    return "default" if args.connection_check_ms is None else str(args.connection_check_ms)


def report(runs: list[DatabaseRun], skipped: dict[str, str], args: argparse.Namespace) -> None:
    print(
        f"service benchmark (wrk -t1 -c{args.connections}, best of {args.rounds} × "
        f"{args.duration:g} s after {args.warmup:g} s warm-up; log level {args.log_level}; "
        f"connection_check_ms {_check_ms(args)}; load average {os.getloadavg()[0]:.1f})"
    )
    header = f"{Measurement.header(18)}{'ratio':>8}  result"
    print(header)
    print("-" * len(header))
    for run in runs:
        for m in (run.healthz, run.status):
            last = m is run.status
            ratio = f"{run.ratio:.2f}" if last else ""
            verdict = ("PASS" if run.passed else "FAIL") if last else ""
            print(f"{m.row(run.database, 18)}{ratio:>8}  {verdict}")
    for database, why in skipped.items():
        print(f"{database:<10}not measured: {why}  FAIL")
    print(f"targets: status/healthz ≥ {TARGET_RATIO}, status p99 ≤ {TARGET_P99_MS:g} ms, 0 errors")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add_load_arguments(parser)
    parser.add_argument("--databases", default="sqlite,postgres", help="comma-separated")
    parser.add_argument(
        "--log-level", default="INFO", help="AMOBRIDGE_LOG_LEVEL of the service (INFO: default)"
    )
    parser.add_argument(
        "--connection-check-ms",
        type=int,
        default=None,
        help="AMOBRIDGE_AMO__CONNECTION_CHECK_MS of the service (default: its own, 500); "
        "0 answers every status read from the database",
    )
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
        "benchmark": "service",
        "tool": "wrk",
        "connections": args.connections,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "rounds": args.rounds,
        "log_level": args.log_level,
        "connection_check_ms": args.connection_check_ms,
        **machine(),
        "targets": {"status_to_healthz": TARGET_RATIO, "status_p99_ms": TARGET_P99_MS},
        "results": [run.public() for run in runs],
        "skipped": skipped,
        "passed": passed,
    }
    return write_result(RESULTS, summary, "")


if __name__ == "__main__":
    sys.exit(main())
