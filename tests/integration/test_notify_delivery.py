"""Events to the host app, end to end: emitted in the change's unit of work, delivered by jobs,
signed so the Standard Webhooks library verifies them, retried until a 2xx, logged."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import httpx
import pytest
from notify_support import (
    HOST_URL,
    SECRET,
    events_settings,
    events_stack,
    run_jobs,
)
from sqlalchemy import select
from standardwebhooks import Webhook, WebhookVerificationError

from amobridge.amo.errors import AmoReauthRequired
from amobridge.storage.tables import Event, EventDelivery, Job

OWNER = "user-42"


async def _connect(es: Any, owner: str = OWNER) -> None:
    done = await es.stack.connect(owner)
    assert done.status_code == 200, done.text


async def _post_lead(es: Any, **body: Any) -> dict[str, Any]:
    answer = await es.stack.http.post(
        "/leads", json={"owner": OWNER, **body}, headers=es.stack.app_headers()
    )
    assert answer.status_code == 201, answer.text
    found: dict[str, Any] = answer.json()
    return found


async def _deliveries(es: Any, **params: Any) -> list[dict[str, Any]]:
    answer = await es.stack.http.get(
        "/event-deliveries", params=params, headers=es.stack.admin_headers()
    )
    assert answer.status_code == 200, answer.text
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


async def test_a_lead_created_event_arrives_signed_and_verifies(
    database_url: str, sandbox: Any, sandbox_app: Any, control: httpx.AsyncClient
) -> None:
    async with events_stack(database_url, sandbox, sandbox_app, control, **events_settings()) as es:
        await _connect(es)
        lead = await _post_lead(es, name="Заявка с сайта", price=1500)
        await run_jobs(es.services)

        (arrival,) = es.host.at("/hook")
        payload = Webhook(SECRET).verify(arrival.body, arrival.headers)
        assert payload["type"] == "lead.created"
        assert payload["timestamp"].endswith("Z")
        data = payload["data"]
        assert (data["owner"], data["source"]) == (OWNER, "amobridge")
        assert data["lead"]["id"] == lead["id"]
        assert data["lead"]["amo_id"] is not None
        assert data["lead"]["name"] == "Заявка с сайта"
        assert arrival.headers["content-type"] == "application/json"
        assert arrival.headers["webhook-signature"].startswith("v1,")

        # Another secret, a changed body or an old timestamp does not verify.
        with pytest.raises(WebhookVerificationError):
            Webhook("whsec_" + "QUJD" * 8).verify(arrival.body, arrival.headers)
        with pytest.raises(WebhookVerificationError):
            Webhook(SECRET).verify(arrival.body.replace(b"1500", b"9999"), arrival.headers)
        stale = {
            **arrival.headers,
            "webhook-timestamp": str(int(arrival.headers["webhook-timestamp"]) - 600),
        }
        with pytest.raises(WebhookVerificationError):
            Webhook(SECRET).verify(arrival.body, stale)

        (delivery,) = await _deliveries(es)
        assert delivery["event_id"] == arrival.headers["webhook-id"]
        assert (delivery["state"], delivery["attempts"], delivery["last_status"]) == (
            "delivered",
            1,
            200,
        )
        assert delivery["subscription_id"] == "settings"


async def test_a_failing_host_app_gets_it_on_the_third_attempt_with_three_log_entries(
    database_url: str, sandbox: Any, sandbox_app: Any, control: httpx.AsyncClient
) -> None:
    async with events_stack(database_url, sandbox, sandbox_app, control, **events_settings()) as es:
        es.host.replies["/hook"] = [500, "hang", 200]
        await _connect(es)
        await _post_lead(es, name="retried")
        await run_jobs(es.services)  # the push, then attempt 1: 500
        (delivery,) = await _deliveries(es)
        assert (delivery["state"], delivery["attempts"], delivery["last_status"]) == (
            "pending",
            1,
            500,
        )
        assert delivery["next_attempt_at"] is not None
        assert await run_jobs(es.services) == 0  # the retry is not due yet
        await run_jobs(es.services, ahead=timedelta(minutes=1))  # attempt 2: no answer
        await run_jobs(es.services, ahead=timedelta(minutes=5))  # attempt 3: 200

        detail = await es.stack.http.get(
            f"/event-deliveries/{delivery['id']}", headers=es.stack.admin_headers()
        )
        assert detail.status_code == 200, detail.text
        shown = detail.json()
        assert (shown["state"], shown["attempts"], shown["last_status"]) == ("delivered", 3, 200)
        assert shown["delivered_at"] is not None
        log = shown["log"]
        assert [entry["attempt"] for entry in log] == [1, 2, 3]
        assert [entry["status_code"] for entry in log] == [500, None, 200]
        assert log[0]["error"] == "HTTP 500: reply 500"
        assert "no answer within" in log[1]["error"]
        assert log[2]["error"] is None
        assert all(entry["duration_ms"] >= 0 for entry in log)
        assert shown["event"]["type"] == "lead.created"

        arrivals = es.host.at("/hook")
        assert len(arrivals) == 3
        assert len({a.headers["webhook-id"] for a in arrivals}) == 1  # one message, retried
        assert len({a.body for a in arrivals}) == 1
        for arrival in arrivals:
            Webhook(SECRET).verify(arrival.body, arrival.headers)
        async with es.services.db.read() as session:
            job = await session.get(Job, shown["job_id"])
        assert job is not None
        assert (job.state, job.attempts) == ("succeeded", 3)


async def test_an_event_emitted_in_a_rolled_back_unit_is_never_delivered(
    database_url: str, sandbox: Any, sandbox_app: Any, control: httpx.AsyncClient
) -> None:
    async with events_stack(database_url, sandbox, sandbox_app, control, **events_settings()) as es:
        notify = es.services.notify

        async def change_that_fails() -> None:
            async with es.services.db.transaction() as session:
                emitted = await notify.emit(
                    session, "lead.updated", owner=OWNER, data={"owner": OWNER, "n": 1}
                )
                assert emitted is not None  # written in the unit…
                raise RuntimeError("the change failed")  # …which then rolls back

        with pytest.raises(RuntimeError, match="the change failed"):
            await change_that_fails()
        async with es.services.db.transaction() as session:
            await notify.emit(session, "lead.updated", owner=OWNER, data={"owner": OWNER, "n": 2})
        assert await run_jobs(es.services) == 1
        assert [json.loads(a.body)["data"]["n"] for a in es.host.arrivals] == [2]
        async with es.services.db.read() as session:
            events = list(await session.scalars(select(Event)))
            deliveries = list(await session.scalars(select(EventDelivery)))
            jobs = list(await session.scalars(select(Job).where(Job.kind == "notify.deliver")))
        assert [e.data["n"] for e in events] == [2]
        assert len(deliveries) == len(jobs) == 1


async def test_each_endpoint_gets_only_the_types_it_asked_for(
    database_url: str, sandbox: Any, sandbox_app: Any, control: httpx.AsyncClient
) -> None:
    async with events_stack(
        database_url,
        sandbox,
        sandbox_app,
        control,
        **events_settings("/leads-only", types=["lead.created", "lead.sync_failed"]),
    ) as es:
        added = await es.stack.http.post(
            "/event-subscriptions",
            json={"url": f"{HOST_URL}/connections", "types": ["connection.*"]},
            headers=es.stack.admin_headers(),
        )
        assert added.status_code == 201, added.text
        everything = await es.stack.http.post(
            "/event-subscriptions",
            json={"url": f"{HOST_URL}/all"},
            headers=es.stack.admin_headers(),
        )
        assert everything.status_code == 201, everything.text
        await _connect(es)
        await _post_lead(es, name="good")
        await _post_lead(es, name="bad", responsible_user_id=999)  # amoCRM refuses it
        await run_jobs(es.services)
        gone = await es.stack.http.delete(
            "/amocrm/disconnect", params={"owner": OWNER}, headers=es.stack.app_headers()
        )
        assert gone.status_code == 200
        again = await es.stack.http.delete(
            "/amocrm/disconnect", params={"owner": OWNER}, headers=es.stack.app_headers()
        )
        assert again.status_code == 200  # a second disconnect is no new event
        await run_jobs(es.services)

        def types(path: str) -> list[str]:
            return sorted(json.loads(a.body)["type"] for a in es.host.at(path))

        assert types("/leads-only") == ["lead.created", "lead.sync_failed"]
        assert types("/connections") == ["connection.disconnected"]
        assert types("/all") == ["connection.disconnected", "lead.created", "lead.sync_failed"]
        secret = added.json()["secret"]
        (arrival,) = es.host.at("/connections")
        data = Webhook(secret).verify(arrival.body, arrival.headers)["data"]
        assert (data["owner"], data["by"], data["domain"]) == (OWNER, "api", "acme.amocrm.ru")
        failed = next(
            json.loads(a.body)["data"]
            for a in es.host.at("/leads-only")
            if json.loads(a.body)["type"] == "lead.sync_failed"
        )
        assert failed["operation"] == "create"
        assert failed["lead"]["state"] == "failed"
        assert "responsible_user_id" in failed["error"]

        only = await _deliveries(es, type="lead.sync_failed")
        assert {d["event_type"] for d in only} == {"lead.sync_failed"}
        assert len(only) == 2  # /leads-only and /all


async def test_a_revoked_grant_sends_connection_reauth_required(
    database_url: str, sandbox: Any, sandbox_app: Any, control: httpx.AsyncClient
) -> None:
    async with events_stack(
        database_url,
        sandbox,
        sandbox_app,
        control,
        **events_settings(types=["connection.*"]),
    ) as es:
        await _connect(es)
        await control.post(
            "/_sandbox/faults", json={"kind": "revoke", "path_prefix": "/api/v4/", "count": 1}
        )
        async with es.services.db.read() as session:
            row = await es.services.connections(session).for_owner(OWNER)
        assert row is not None
        client = await es.services.clients.client(row)
        for _ in range(2):  # seen twice, reported once
            with pytest.raises(AmoReauthRequired):
                await client.account.get()
        assert es.host.arrivals == []  # never on the caller's path
        await run_jobs(es.services)
        (arrival,) = es.host.at("/hook")
        payload = Webhook(SECRET).verify(arrival.body, arrival.headers)
        assert payload["type"] == "connection.reauth_required"
        data = payload["data"]
        assert (data["owner"], data["connection_id"]) == (OWNER, row.id)
        assert data["fix"] == f"http://service.test/amocrm/auth?owner={OWNER}"
        assert data["reason"]


async def test_the_reauth_callback_of_earlier_versions_is_an_endpoint_with_its_old_body(
    database_url: str, sandbox: Any, sandbox_app: Any, control: httpx.AsyncClient
) -> None:
    async with events_stack(
        database_url,
        sandbox,
        sandbox_app,
        control,
        hooks={
            "reauth_callback_url": f"{HOST_URL}/legacy",
            "reauth_callback_secret": "old-hook-secret",
        },
        **events_settings(),
    ) as es:
        listed = await es.stack.http.get("/event-subscriptions", headers=es.stack.admin_headers())
        assert [(s["id"], s["source"], s["types"]) for s in listed.json()["items"]] == [
            ("settings", "settings", None),
            ("legacy-reauth", "legacy", ["connection.reauth_required"]),
        ]
        await _connect(es)
        await control.post(
            "/_sandbox/faults", json={"kind": "revoke", "path_prefix": "/api/v4/", "count": 1}
        )
        await _post_lead(es, name="needs a grant")
        await run_jobs(es.services)  # the push finds the dead grant; its job pauses

        (old,) = es.host.at("/legacy")
        body = json.loads(old.body)
        assert set(body) == {"event", "owner", "connection_id", "reason", "fix"}
        assert body["event"] == "connection.reauth_required"
        import hashlib
        import hmac

        expected = hmac.new(b"old-hook-secret", old.body, hashlib.sha256).hexdigest()
        assert old.headers["x-amobridge-signature"] == f"sha256={expected}"
        (new,) = es.host.at("/hook")  # the settings' endpoint gets it too, in the new shape
        assert Webhook(SECRET).verify(new.body, new.headers)["type"] == (
            "connection.reauth_required"
        )
