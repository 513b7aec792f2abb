"""An edit a manager makes in amoCRM reaches the mirror and the host app's event URL by itself:
the service runs its job workers in-process as ``amobridge serve`` does (nothing here drains the
queue or flushes the sandbox), the sandbox POSTs its webhooks when the lead changes, and every
rename and stage move is seen in ``GET /leads/{id}`` and arrives as a signed event — on SQLite
and PostgreSQL. The timing proof (≤ 1 s from delivery, with real processes) is
``bench/roundtrip.py``; the bound here only stops a broken chain from hanging."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
from notify_support import events_settings, events_stack
from webhooks_support import ui

OWNER = "user-7"
BOUND_S = 20.0  # generous: a loaded 2-core machine, PostgreSQL's LISTEN, the sandbox's tasks


async def _until(check: Callable[[], Any], what: str) -> Any:
    end = time.monotonic() + BOUND_S
    while True:
        found = await check()
        if found:
            return found
        assert time.monotonic() < end, f"{what}: not seen within {BOUND_S:g} s"
        await asyncio.sleep(0.02)  # the workers and the sandbox run on this loop meanwhile


async def test_an_edit_in_amocrm_reaches_the_mirror_and_the_host_app_by_itself(
    database_url: str, sandbox: Any, sandbox_app: Any, control: httpx.AsyncClient
) -> None:
    async with events_stack(
        database_url,
        sandbox,
        sandbox_app,
        control,
        server={"run_workers": True},
        webhooks={"auto_subscribe": True},
        **events_settings(types=["lead.*"]),
    ) as es:
        stack = es.stack
        assert stack.services.job_worker is not None, "the in-process worker is not running"
        assert (await stack.connect(OWNER)).status_code == 200

        async def subscribed() -> bool:
            found = await control.get(f"/_sandbox/webhooks/{stack.account['id']}")
            return bool(found.json())

        await _until(subscribed, "the webhook subscription the service makes on connect")

        made = await ui(stack, "POST", "leads", {"name": "Из amoCRM", "price": 900})

        async def created() -> dict[str, Any] | None:
            return next((e for e in es.events() if e["type"] == "lead.created"), None)

        event = await _until(created, "lead.created")
        assert event["data"]["lead"]["amo_id"] == made["id"]
        assert event["data"]["source"] == "amocrm"
        local_id = event["data"]["lead"]["id"]

        pipeline = stack.sandbox.state.accounts[stack.account["id"]].pipelines[made["pipeline_id"]]
        stages = [s.id for s in pipeline.statuses if s.id not in (142, 143)]
        current = made["status_id"]
        for index in range(4):
            seen = len(es.events())
            if index % 2 == 0:
                change: dict[str, Any] = {"name": f"Переименована {index}"}
                wanted, shown = "lead.updated", ("name", change["name"])
            else:
                current = stages[(stages.index(current) + 1) % len(stages)]
                change = {"status_id": current}
                wanted, shown = "lead.stage_changed", ("stage_id", current)
            await ui(stack, "PATCH", f"leads/{made['id']}", change)

            async def mirrored(field: str = shown[0], value: Any = shown[1]) -> bool:
                got = await stack.http.get(
                    f"/leads/{local_id}", params={"owner": OWNER}, headers=stack.app_headers()
                )
                assert got.status_code == 200, got.text
                return bool(got.json()[field] == value)

            async def announced(kind: str = wanted, after: int = seen) -> dict[str, Any] | None:
                return next((e for e in es.events()[after:] if e["type"] == kind), None)

            await _until(mirrored, f"edit {index} in the mirror")
            arrived = await _until(announced, f"edit {index}'s {wanted}")
            assert arrived["data"]["lead"]["id"] == local_id
            assert arrived["data"]["owner"] == OWNER
            if wanted == "lead.updated":
                assert "name" in arrived["data"]["changed"]
                assert arrived["data"]["lead"]["name"] == change["name"]
            else:
                assert arrived["data"]["to"]["stage_id"] == current
                assert arrived["data"]["lead"]["stage_id"] == current

        # Every webhook the sandbox sent was answered 2xx, and every event was delivered once.
        log = (
            await control.get(
                "/_sandbox/webhook-deliveries", params={"account_id": stack.account["id"]}
            )
        ).json()
        assert log
        assert all(r["delivered"] for r in log), log
        ids = [a.headers["webhook-id"] for a in es.host.at("/hook")]
        assert len(ids) == len(set(ids))
