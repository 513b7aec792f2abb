"""The admin's side of events to the host app: subscriptions (the secret shown once, stored
encrypted), the delivery log with its filters and pages, retry — and no secret in any answer or
log line."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any

import httpx
import pytest
from notify_support import HOST_URL, SECRET, events_settings, events_stack, run_jobs
from sqlalchemy import select
from standardwebhooks import Webhook

from amobridge.storage.tables import EventSubscription

OWNER = "user-42"


async def _emit(es: Any, event_type: str, n: int, owner: str = OWNER) -> None:
    async with es.services.db.transaction() as session:
        await es.services.notify.emit(
            session, event_type, owner=owner, data={"owner": owner, "n": n}
        )


async def test_only_an_admin_key_manages_events(
    database_url: str, sandbox: Any, sandbox_app: Any, control: httpx.AsyncClient
) -> None:
    async with events_stack(database_url, sandbox, sandbox_app, control) as es:
        http, app = es.stack.http, es.stack.app_headers()
        user = {"Authorization": f"Bearer {es.stack.user_token(OWNER)}"}
        for headers in (app, user):
            for method, path in (
                ("POST", "/event-subscriptions"),
                ("GET", "/event-subscriptions"),
                ("DELETE", "/event-subscriptions/x"),
                ("GET", "/event-deliveries"),
                ("GET", "/event-deliveries/1"),
                ("POST", "/event-deliveries/1/retry"),
            ):
                body = {"url": f"{HOST_URL}/x"} if method == "POST" else None
                answer = await http.request(method, path, json=body, headers=headers)
                assert answer.status_code == 403, (method, path, answer.text)
                assert answer.json()["error"] == "forbidden"
        assert (await http.get("/event-deliveries")).status_code == 401


async def test_a_subscription_shows_its_secret_once_and_never_logs_it(
    database_url: str,
    sandbox: Any,
    sandbox_app: Any,
    control: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with events_stack(database_url, sandbox, sandbox_app, control, **events_settings()) as es:
        http, admin = es.stack.http, es.stack.admin_headers()
        created = await http.post(
            "/event-subscriptions",
            json={"url": f"{HOST_URL}/sub", "types": ["lead.*"], "description": "CRM"},
            headers=admin,
        )
        assert created.status_code == 201, created.text
        shown = created.json()
        secret = shown["secret"]
        assert secret.startswith("whsec_")
        assert (shown["types"], shown["source"], shown["description"]) == (
            ["lead.*"],
            "api",
            "CRM",
        )
        es.host.replies["/sub"] = [500, 200]
        await _emit(es, "lead.updated", 1)
        await run_jobs(es.services)
        await run_jobs(es.services, ahead=timedelta(minutes=1))
        arrivals = es.host.at("/sub")
        assert len(arrivals) == 2
        Webhook(secret).verify(arrivals[1].body, arrivals[1].headers)

        listed = await http.get("/event-subscriptions", headers=admin)
        page = await http.get("/event-deliveries", headers=admin)
        details = [
            await http.get(f"/event-deliveries/{d['id']}", headers=admin)
            for d in page.json()["items"]
        ]
        answers = [listed.text, page.text, *(d.text for d in details)]
        signatures = [a.headers["webhook-signature"].split(",", 1)[1] for a in es.host.arrivals]
        for text in answers:
            assert "secret" not in json.loads(text).get("items", [{}])[0]
            for hidden in (secret, secret.removeprefix("whsec_"), SECRET, *signatures):
                assert hidden not in text
        logged = "\n".join(r.getMessage() for r in caplog.records)
        for hidden in (secret, secret.removeprefix("whsec_"), SECRET, *signatures):
            assert hidden not in logged
        async with es.services.db.read() as session:
            row = (await session.scalars(select(EventSubscription))).one()
        assert secret not in row.secret_enc  # encrypted at rest
        assert es.services.keyring.decrypt(row.secret_enc) == secret


async def test_removing_a_subscription_cancels_what_it_had_not_received(
    database_url: str, sandbox: Any, sandbox_app: Any, control: httpx.AsyncClient
) -> None:
    async with events_stack(database_url, sandbox, sandbox_app, control, **events_settings()) as es:
        http, admin = es.stack.http, es.stack.admin_headers()
        created = (
            await http.post("/event-subscriptions", json={"url": f"{HOST_URL}/b"}, headers=admin)
        ).json()
        await _emit(es, "lead.deleted", 1)
        gone = await http.delete(f"/event-subscriptions/{created['id']}", headers=admin)
        assert gone.status_code == 204
        missing = await http.delete(f"/event-subscriptions/{created['id']}", headers=admin)
        assert missing.status_code == 404
        assert missing.json()["error"] == "event_subscription_not_found"
        settings = await http.delete("/event-subscriptions/settings", headers=admin)
        assert settings.status_code == 409
        assert settings.json()["error"] == "subscription_in_settings"
        assert "AMOBRIDGE_EVENTS__URL" in settings.json()["detail"]

        await run_jobs(es.services)
        assert [a.path for a in es.host.arrivals] == ["/hook"]
        states = {
            d["subscription_id"]: d["state"]
            for d in (await http.get("/event-deliveries", headers=admin)).json()["items"]
        }
        assert states == {"settings": "delivered", created["id"]: "cancelled"}
        cancelled = next(
            d
            for d in (await http.get("/event-deliveries", headers=admin)).json()["items"]
            if d["state"] == "cancelled"
        )
        refused = await http.post(f"/event-deliveries/{cancelled['id']}/retry", headers=admin)
        assert refused.status_code == 409
        assert refused.json()["error"] == "delivery_cancelled"


async def test_a_failed_delivery_is_retried_by_hand_and_the_log_pages(
    database_url: str, sandbox: Any, sandbox_app: Any, control: httpx.AsyncClient
) -> None:
    async with events_stack(
        database_url, sandbox, sandbox_app, control, **events_settings(max_attempts=2)
    ) as es:
        http, admin = es.stack.http, es.stack.admin_headers()
        es.host.replies["/hook"] = [503, 503]
        await _emit(es, "lead.stage_changed", 1)
        await run_jobs(es.services)
        await run_jobs(es.services, ahead=timedelta(minutes=1))
        (failed,) = (
            await http.get("/event-deliveries", params={"state": "failed"}, headers=admin)
        ).json()["items"]
        assert (failed["attempts"], failed["last_status"]) == (2, 503)
        assert failed["next_attempt_at"] is None

        again = await http.post(f"/event-deliveries/{failed['id']}/retry", headers=admin)
        assert again.status_code == 200, again.text
        assert again.json()["state"] == "pending"
        assert again.json()["job_id"] != failed["job_id"]
        twice = await http.post(f"/event-deliveries/{failed['id']}/retry", headers=admin)
        assert twice.status_code == 409
        assert twice.json()["error"] == "delivery_pending"
        await run_jobs(es.services)
        detail = (await http.get(f"/event-deliveries/{failed['id']}", headers=admin)).json()
        assert (detail["state"], detail["attempts"]) == ("delivered", 3)
        assert [e["status_code"] for e in detail["log"]] == [503, 503, 200]
        assert len({a.headers["webhook-id"] for a in es.host.arrivals}) == 1

        for n in range(2, 6):
            await _emit(es, "lead.updated", n, owner=f"owner-{n % 2}")
        seen: list[int] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            page = (await http.get("/event-deliveries", params=params, headers=admin)).json()
            seen.extend(d["id"] for d in page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == sorted(seen, reverse=True)
        assert len(seen) == 5
        mine = (
            await http.get("/event-deliveries", params={"owner": "owner-0"}, headers=admin)
        ).json()["items"]
        assert {d["owner"] for d in mine} == {"owner-0"}
        assert len(mine) == 2
        typed = (
            await http.get(
                "/event-deliveries", params={"type": "lead.stage_changed"}, headers=admin
            )
        ).json()["items"]
        assert [d["id"] for d in typed] == [failed["id"]]
        bad = await http.get("/event-deliveries", params={"type": "lead.moved"}, headers=admin)
        assert bad.status_code == 422
        unknown = await http.get("/event-deliveries/999999", headers=admin)
        assert unknown.status_code == 404
        assert unknown.json()["error"] == "event_delivery_not_found"


async def test_a_subscription_refuses_unknown_types_and_unusable_urls(
    database_url: str, sandbox: Any, sandbox_app: Any, control: httpx.AsyncClient
) -> None:
    async with events_stack(database_url, sandbox, sandbox_app, control) as es:
        http, admin = es.stack.http, es.stack.admin_headers()
        for body in (
            {"url": f"{HOST_URL}/x", "types": ["lead.moved"]},
            {"url": "ftp://hostapp.test/x"},
            {"url": "/relative"},
            {"url": f"{HOST_URL}/x", "secret": "mine"},
        ):
            answer = await http.post("/event-subscriptions", json=body, headers=admin)
            assert answer.status_code == 422, body
            assert answer.json()["error"] == "validation_error"
        assert (await http.get("/event-subscriptions", headers=admin)).json() == {"items": []}
        # No endpoint at all: emitting writes nothing.
        async with es.services.db.transaction() as session:
            assert (
                await es.services.notify.emit(session, "lead.created", owner=OWNER, data={}) is None
            )


async def test_keys_rotate_re_encrypts_a_subscriptions_secret(
    database_url: str, sandbox: Any, sandbox_app: Any, control: httpx.AsyncClient
) -> None:
    from amobridge.storage.crypto import DecryptionError, Keyring, generate_key
    from amobridge.storage.rotate import rotate_all

    async with events_stack(database_url, sandbox, sandbox_app, control) as es:
        created = await es.stack.http.post(
            "/event-subscriptions",
            json={"url": f"{HOST_URL}/rotated"},
            headers=es.stack.admin_headers(),
        )
        secret = created.json()["secret"]
        key_a = es.stack.settings.security.secret_keys[0].get_secret_value()
        key_b = generate_key()
        assert await rotate_all(es.services.db, Keyring([key_b, key_a])) >= 1
        async with es.services.db.read() as session:
            row = (await session.scalars(select(EventSubscription))).one()
        assert Keyring([key_b]).decrypt(row.secret_enc) == secret
        with pytest.raises(DecryptionError):
            Keyring([key_a]).decrypt(row.secret_enc)
