"""The subscription's life: made through amoCRM's API by a job when a connection becomes active
(the sandbox lists it), removed when the owner disconnects, restored (and audited) by the
periodic check after amoCRM disabled it or someone removed it; off with auto-subscription off —
on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from leads_support import OWNER, connected
from webhooks_support import WEBHOOKS_ON, secret_of, settle, ui

from amobridge.audit import AuditRepository
from amobridge.webhooks.service import EVENTS


@pytest.fixture
def stack_overrides() -> dict[str, Any]:
    return WEBHOOKS_ON


async def _listed(stack: Any) -> list[dict[str, Any]]:
    found = await stack.control.get(f"/_sandbox/webhooks/{stack.account['id']}")
    assert found.status_code == 200, found.text
    return list(found.json())


async def _audit(stack: Any, action: str) -> list[Any]:
    async with stack.services.db.read() as session:
        return await AuditRepository(session).tail(action=action)


async def _subscription(stack: Any) -> dict[str, Any]:
    shown = await stack.http.get(
        "/webhooks/subscription", params={"owner": OWNER}, headers=stack.app_headers()
    )
    assert shown.status_code == 200, shown.text
    return dict(shown.json())


async def test_connecting_subscribes_and_disconnecting_unsubscribes(stack: Any) -> None:
    await connected(stack)
    assert await _listed(stack) == []  # a job subscribes, not the callback's request
    await settle(stack)
    secret = await secret_of(stack)
    (hook,) = await _listed(stack)
    assert hook["destination"] == f"http://service.test/webhooks/amocrm/{secret}"
    assert sorted(hook["settings"]) == sorted(EVENTS)
    assert hook["disabled"] is False
    shown = await _subscription(stack)
    assert shown["state"] == "active"
    assert shown["amo_webhook_id"] == hook["id"]
    assert secret not in str(shown)
    assert shown["destination"].endswith(secret[:4] + "…")
    (entry,) = await _audit(stack, "webhook.subscribed")
    assert secret not in (entry.message or "")

    # Connecting again (a re-consent) keeps the one subscription.
    await connected(stack)
    await settle(stack)
    assert len(await _listed(stack)) == 1

    gone = await stack.http.delete(
        "/amocrm/disconnect", params={"owner": OWNER}, headers=stack.app_headers()
    )
    assert gone.status_code == 200, gone.text
    await settle(stack)
    assert await _listed(stack) == []
    (entry,) = await _audit(stack, "webhook.unsubscribed")
    assert entry.success
    assert (await _subscription(stack))["state"] == "unsubscribed"
    sub = await _stored(stack)
    assert sub.unsubscribe_token_enc is None  # the token copy is gone once used

    await connected(stack)  # and back: subscribed again with the same URL
    await settle(stack)
    (hook,) = await _listed(stack)
    assert hook["destination"].endswith(secret)


async def _stored(stack: Any) -> Any:
    from amobridge.webhooks.repository import SubscriptionRepository

    connection_id = (await stack.services.connect.current_status(OWNER))["connectionId"]
    async with stack.services.db.read() as session:
        return await SubscriptionRepository(session).of(connection_id)


async def test_a_webhook_amocrm_disabled_is_restored_by_the_check(stack: Any) -> None:
    await connected(stack)
    await settle(stack)
    made = await ui(stack, "POST", "leads", {"name": "Сделка"})
    await settle(stack)
    # amoCRM disables a webhook whose deliveries keep failing: here every one times out.
    config = await stack.control.patch(
        "/_sandbox/config", json={"webhook_timeout": 0.000001, "webhook_disable_after": 1}
    )
    assert config.status_code == 200, config.text
    for name in ("Раз", "Два"):
        await ui(stack, "PATCH", f"leads/{made['id']}", {"name": name})
        await stack.control.post("/_sandbox/webhooks/flush")
    (hook,) = await _listed(stack)
    assert hook["disabled"] is True
    await stack.control.patch("/_sandbox/config", json={"webhook_timeout": 2.0})

    # Not checked yet within the interval: nothing queued.
    assert await stack.services.webhook_tasks.check_subscriptions() == 0
    assert await stack.services.webhook_tasks.check_subscriptions(interval=timedelta(0)) == 1
    await settle(stack)
    (hook,) = await _listed(stack)
    assert hook["disabled"] is False
    (entry,) = await _audit(stack, "webhook.restored")
    assert entry.success
    assert "disabled" in (entry.message or "")
    shown = await _subscription(stack)
    assert shown["state"] == "active"
    assert shown["restores"] == 1

    # Removed in amoCRM by hand: the check subscribes it again.
    secret = await secret_of(stack)
    account = stack.sandbox.state.accounts[stack.account["id"]]
    account.webhooks.pop(f"http://service.test/webhooks/amocrm/{secret}")
    await stack.services.webhook_tasks.check_subscriptions(interval=timedelta(0))
    await settle(stack)
    assert len(await _listed(stack)) == 1
    assert len(await _audit(stack, "webhook.restored")) == 2

    # A healthy one is only looked at.
    await stack.services.webhook_tasks.check_subscriptions(interval=timedelta(0))
    await settle(stack)
    assert len(await _audit(stack, "webhook.restored")) == 2


async def test_a_user_who_is_no_admin_gets_a_failed_subscription_that_says_why(
    stack: Any,
) -> None:
    account = stack.sandbox.state.accounts[stack.account["id"]]
    for user in account.users.values():
        user.is_admin = False
    await connected(stack)
    await settle(stack)
    shown = await _subscription(stack)
    assert shown["state"] == "failed"
    assert "administrator" in shown["last_error"]
    (entry,) = await _audit(stack, "webhook.subscribe_failed")
    assert not entry.success
    assert "WEB HOOKS" in (entry.error or "")
    assert await _listed(stack) == []
