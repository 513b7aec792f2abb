"""The accept phase of ``bench/leads.py``: ``wrk`` alternating ``GET /healthz`` and ``POST /leads``
(every body a new lead with a new contact, 201s counted by the script), then the leads counted.

(``bench/run.py`` skips modules whose name starts with ``_``.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from _leads_sandbox import OWNER, connect_owner, lead_body, lead_counts, new_account, pointed_at
from _support import wrk_load
from service import (
    create_app_key,
    postgres_database,
    running_service,
    service_env,
    sqlite_database,
)

TARGET_RATIO = 0.4
RUN_SPAN = 10_000_000  # lead numbers each wrk run may use: runs never reuse one

_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  local made = 0
  for _, t in ipairs(threads) do made = made + t:get("created") end
  io.write(string.format(
    "BENCH_JSON {\\"requests\\":%d,\\"duration_us\\":%d,\\"errors\\":%d,"
    .. "\\"p50_us\\":%d,\\"p99_us\\":%d,\\"created\\":%d}\\n",
    summary.requests, summary.duration,
    e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99), made))
end
"""


def _lua(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def lua_script(app_key: str, prefix: str, first: int) -> str:
    """POSTs of lead ``first + 1``, ``first + 2``, …; ``created`` counts the 201s."""
    template = json.dumps(lead_body(prefix, 123456789), ensure_ascii=False)
    template = template.replace("9123456789", "9@P@").replace("123456789", "@N@")
    if template.count("@N@") != 4 or template.count("@P@") != 1:
        raise RuntimeError(f"the lead template lost a counter: {template}")
    return "\n".join(
        [
            'wrk.method = "POST"',
            'wrk.headers["Content-Type"] = "application/json"',
            f'wrk.headers["Authorization"] = {_lua("Bearer " + app_key)}',
            f"local template = {_lua(template)}",
            f"local counter = {first}",
            "threads = {}",
            "created = 0",
            "setup = function(thread) table.insert(threads, thread) end",
            "request = function()",
            "  counter = counter + 1",
            '  local body = string.gsub(template, "@N@", tostring(counter))',
            '  body = string.gsub(body, "@P@", string.format("%09d", counter % 1000000000))',
            "  return wrk.format(nil, nil, nil, body)",
            "end",
            "response = function(status, headers, body)",
            "  if status == 201 then created = created + 1 end",
            "end",
            _DONE,
        ]
    )


def wrk_post_leads(
    wrk: str, url: str, script: str, *, duration: float, connections: int
) -> tuple[tuple[int, float, int, float, float], int]:
    """((requests, seconds, errors, p50 ms, p99 ms), 201s) of one ``wrk -t1`` run."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "leads.lua"
        path.touch(mode=0o600)  # it holds the app key
        path.write_text(script)
        completed = subprocess.run(  # noqa: S603 - wrk from PATH, our arguments
            [
                wrk,
                "-t1",
                f"-c{connections}",
                f"-d{duration:g}s",
                "--latency",
                "--timeout",
                "5s",
                "-s",
                str(path),
                url,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    for line in completed.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            data = json.loads(line.removeprefix("BENCH_JSON "))
            numbers = (
                int(data["requests"]),
                data["duration_us"] / 1e6,
                int(data["errors"]),
                data["p50_us"] / 1000,
                data["p99_us"] / 1000,
            )
            return numbers, int(data["created"])
    raise RuntimeError(f"wrk failed ({completed.returncode}): {completed.stderr.strip()[:500]}")


@dataclass
class Measurement:
    route: str
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float
    rounds_rps: list[float] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def public(self) -> dict[str, Any]:
        data = asdict(self)
        data["rps"] = round(self.rps, 1)
        return data


@dataclass
class AcceptRun:
    database: str
    healthz: Measurement
    leads: Measurement
    created: int  # answered 201, the first check included
    stored: int
    contacts: int

    @property
    def ratio(self) -> float:
        return self.leads.rps / self.healthz.rps if self.healthz.rps else 0.0

    @property
    def passed(self) -> bool:
        return (
            self.ratio >= TARGET_RATIO
            and self.healthz.errors == 0
            and self.leads.errors == 0
            and self.stored >= self.created
        )

    def public(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "healthz": self.healthz.public(),
            "leads": self.leads.public(),
            "leads_to_healthz": round(self.ratio, 3),
            "answered_201": self.created,
            "stored": self.stored,
            "contacts_stored": self.contacts,
            "passed": self.passed,
        }


def measure_accept(database: str, sandbox: str, args: argparse.Namespace, wrk: str) -> AcceptRun:
    from amobridge.auth.service import new_api_key
    from amobridge.storage.crypto import generate_key

    admin_key, _ = new_api_key()
    account = new_account(sandbox, f"accept{database}")
    prefix = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory(prefix=f"amobridge-bench-leads-{database}-") as tmp:
        workdir = Path(tmp)
        holder = sqlite_database(workdir) if database == "sqlite" else postgres_database()
        with holder as url:
            env = service_env(url, generate_key(), admin_key, args.log_level)
            env = pointed_at(env, sandbox, account)
            with running_service(env, workdir) as base:
                app_key = create_app_key(env, workdir)
                connect_owner(base, admin_key, account)
                check = httpx.post(
                    f"{base}/leads",
                    json=lead_body(prefix, 0),
                    headers={"Authorization": f"Bearer {app_key}"},
                    timeout=30,
                )
                if check.status_code != 201 or check.json().get("owner", OWNER) != OWNER:
                    raise RuntimeError(f"POST /leads answered {check.status_code}")
                created = 1
                runs = 0

                def load(name: str, seconds: float) -> Measurement:
                    nonlocal created, runs
                    if name == "healthz":
                        got = wrk_load(
                            wrk,
                            base + "/healthz",
                            {},
                            duration=seconds,
                            connections=args.connections,
                        )
                    else:
                        runs += 1
                        script = lua_script(app_key, prefix, runs * RUN_SPAN)
                        got, made = wrk_post_leads(
                            wrk,
                            base + "/leads",
                            script,
                            duration=seconds,
                            connections=args.connections,
                        )
                        created += made
                    return Measurement(name, *got)

                for name in ("healthz", "leads"):  # warm-up
                    load(name, args.warmup)
                rounds: dict[str, list[Measurement]] = {"healthz": [], "leads": []}
                for _ in range(args.rounds):
                    for name in rounds:
                        rounds[name].append(load(name, args.duration))
            counts = asyncio.run(lead_counts(url))
    best: dict[str, Measurement] = {}
    for name, measured in rounds.items():
        chosen = max(measured, key=lambda m: m.rps)
        chosen.rounds_rps = [round(m.rps, 1) for m in measured]
        chosen.errors = sum(m.errors for m in measured)
        best[name] = chosen
    # wrk counts an answer once it is read: every counted 201 was committed before it was sent.
    return AcceptRun(
        database, best["healthz"], best["leads"], created, counts["leads"], counts["contacts"]
    )
