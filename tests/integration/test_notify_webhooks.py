"""What a manager changes in amoCRM reaches the host app as events: the sandbox's real webhooks
are applied to the mirror, and each change that reached it is announced (added, moved, edited,
deleted) — while amobridge's own push coming back is announced once, as its lead.created."""

from __future__ import annotations

from typing import Any

import httpx
from notify_support import events_settings, events_stack
from webhooks_support import settle, ui

OWNER = "user-42"


async def test_changes_made_in_amocrm_arrive_as_events(
    database_url: str, sandbox: Any, sandbox_app: Any, control: httpx.AsyncClient
) -> None:
    async with events_stack(
        database_url,
        sandbox,
        sandbox_app,
        control,
        webhooks={"auto_subscribe": True},
        **events_settings(types=["lead.*"]),
    ) as es:
        stack = es.stack
        assert (await stack.connect(OWNER)).status_code == 200
        await settle(stack)  # the subscription is made

        made = await ui(stack, "POST", "leads", {"name": "Из amoCRM", "price": 900})
        await settle(stack)
        (created,) = es.events()
        assert created["type"] == "lead.created"
        assert created["data"]["source"] == "amocrm"
        assert created["data"]["lead"]["amo_id"] == made["id"]
        assert created["data"]["owner"] == OWNER
        local_id = created["data"]["lead"]["id"]

        pipeline = stack.sandbox.state.accounts[stack.account["id"]].pipelines[made["pipeline_id"]]
        stage = next(
            s for s in pipeline.statuses if s.id != made["status_id"] and s.id not in (142, 143)
        )
        await ui(
            stack, "PATCH", f"leads/{made['id']}", {"name": "Новое имя", "status_id": stage.id}
        )
        await settle(stack)
        by_type = {e["type"]: e["data"] for e in es.events()[1:]}
        assert set(by_type) == {"lead.stage_changed", "lead.updated"}
        moved = by_type["lead.stage_changed"]
        assert moved["from"] == {"pipeline_id": made["pipeline_id"], "stage_id": made["status_id"]}
        assert moved["to"] == {"pipeline_id": made["pipeline_id"], "stage_id": stage.id}
        assert moved["lead"]["id"] == local_id
        assert "name" in by_type["lead.updated"]["changed"]
        assert by_type["lead.updated"]["lead"]["name"] == "Новое имя"

        await ui(stack, "DELETE", f"leads/{made['id']}")
        await settle(stack)
        deleted = es.events()[-1]
        assert deleted["type"] == "lead.deleted"
        assert deleted["data"]["lead"]["id"] == local_id
        assert deleted["data"]["lead"]["deleted"] is True


async def test_our_own_push_coming_back_is_one_lead_created(
    database_url: str, sandbox: Any, sandbox_app: Any, control: httpx.AsyncClient
) -> None:
    async with events_stack(
        database_url,
        sandbox,
        sandbox_app,
        control,
        webhooks={"auto_subscribe": True},
        **events_settings(),
    ) as es:
        stack = es.stack
        assert (await stack.connect(OWNER)).status_code == 200
        await settle(stack)
        posted = await stack.http.post(
            "/leads", json={"owner": OWNER, "name": "С сайта"}, headers=stack.app_headers()
        )
        assert posted.status_code == 201, posted.text
        await settle(stack)  # the push, then amoCRM's webhook of it
        events = es.events()
        created = [e for e in events if e["type"] == "lead.created"]
        assert len(created) == 1  # by the push, not again by its webhook
        # What amoCRM filled in itself (its defaults) is news to the mirror: a lead.updated
        # naming those fields, never the ones the push sent.
        for other in events:
            if other["type"] != "lead.created":
                assert other["type"] == "lead.updated"
                assert set(other["data"]["changed"]) <= {"price", "responsible_user_id"}
        events = created
        assert events[0]["data"]["source"] == "amobridge"
        assert events[0]["data"]["lead"]["id"] == posted.json()["id"]
