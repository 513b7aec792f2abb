"""The accept phase of ``bench/leads.py``: ``wrk`` alternating ``GET /healthz`` and ``POST /leads``
(every body a new lead with a new contact, 201s counted by the script), then the leads counted.

(``bench/run.py`` skips modules whose name starts with ``_``.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from _leads_sandbox import OWNER, lead_body, lead_counts, pointed_at
from _support import (
    Measurement,
    best_of_rounds,
    lua_string,
    new_account,
    wrk_load,
    wrk_run,
)
from service import create_app_key, database_at, import_token, running_service, service_env

TARGET_RATIO = 0.4
RUN_SPAN = 10_000_000  # lead numbers each wrk run may use: runs never reuse one


def lua_script(app_key: str, prefix: str, first: int) -> str:
    """POSTs of lead ``first + 1``, ``first + 2``, …; ``created`` counts the 201s (a counter of
    :func:`_support.wrk_run`)."""
    template = json.dumps(lead_body(prefix, 123456789), ensure_ascii=False)
    template = template.replace("9123456789", "9@P@").replace("123456789", "@N@")
    if template.count("@N@") != 4 or template.count("@P@") != 1:
        raise RuntimeError(f"the lead template lost a counter: {template}")
    return "\n".join(
        [
            'wrk.method = "POST"',
            'wrk.headers["Content-Type"] = "application/json"',
            f'wrk.headers["Authorization"] = {lua_string("Bearer " + app_key)}',
            f"local template = {lua_string(template)}",
            f"local counter = {first}",
            "request = function()",
            "  counter = counter + 1",
            '  local body = string.gsub(template, "@N@", tostring(counter))',
            '  body = string.gsub(body, "@P@", string.format("%09d", counter % 1000000000))',
            "  return wrk.format(nil, nil, nil, body)",
            "end",
            "response = function(status, headers, body)",
            "  if status == 201 then created = created + 1 end",
            "end",
        ]
    )


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
        with database_at(database, workdir) as url:
            env = service_env(url, generate_key(), admin_key, args.log_level)
            env = pointed_at(env, sandbox, account)
            with running_service(env, workdir) as base:
                app_key = create_app_key(env, workdir)
                import_token(base, admin_key, OWNER, account.host, account.token)
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
                        got, counted = wrk_run(
                            wrk,
                            base + "/leads",
                            script,
                            duration=seconds,
                            connections=args.connections,
                            counters=("created",),
                        )
                        created += counted["created"]
                    return Measurement(name, *got)

                best = best_of_rounds(load, ("healthz", "leads"), args)
            counts = asyncio.run(lead_counts(url))
    # wrk counts an answer once it is read: every counted 201 was committed before it was sent.
    return AcceptRun(
        database, best["healthz"], best["leads"], created, counts["leads"], counts["contacts"]
    )
