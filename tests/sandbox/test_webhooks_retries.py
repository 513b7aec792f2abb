"""Conformance: webhook retries and auto-disable on the sandbox clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from amobridge.sandbox import Clock, Sandbox, SandboxConfig
from amobridge.sandbox import webhooks as webhooks_module
from amobridge.sandbox.events import EntityChange
from amobridge.sandbox.state import Account

HOOK = "https://hooks.example/amo"


@dataclass
class Destination:
    """Answers ``status`` to every webhook (or stalls past the deadline) and counts them."""

    status: int = 500
    stall: bool = False
    calls: int = 0
    bodies: list[str] = field(default_factory=list)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        self.bodies.append((await request.aread()).decode())
        if self.stall:
            await asyncio.Event().wait()
        return httpx.Response(self.status)


@pytest.fixture
def destination() -> Destination:
    return Destination()


@pytest.fixture
def clock() -> Clock:
    return Clock(frozen=True)


@pytest.fixture
def sandbox_config() -> SandboxConfig:
    return SandboxConfig(rate_limit_enabled=False, webhook_timeout=0.2)


@pytest.fixture
async def sandbox(
    sandbox_config: SandboxConfig,
    signing_key: rsa.RSAPrivateKey,
    destination: Destination,
    clock: Clock,
) -> AsyncIterator[Sandbox]:
    box = Sandbox(
        sandbox_config,
        clock=clock,
        signing_key=signing_key,
        outbound_transport=httpx.MockTransport(destination),
    )
    yield box
    await box.aclose()


@dataclass
class World:
    sandbox: Sandbox
    control: httpx.AsyncClient
    account: Account
    api: httpx.AsyncClient

    async def subscribe(self, destination: str = HOOK, *settings: str) -> httpx.Response:
        return await self.api.post(
            "/api/v4/webhooks",
            json={"destination": destination, "settings": list(settings) or ["add_lead"]},
        )

    async def emit(self, count: int = 1) -> None:
        changes = [
            EntityChange("leads", "add", 1_000_000 + i, snapshot={"id": 1_000_000 + i})
            for i in range(count)
        ]
        for change in changes:
            self.sandbox.emit(self.account, [change])
        assert (await self.control.post("/_sandbox/webhooks/flush")).status_code == 200

    async def advance(self, seconds: float) -> None:
        reply = await self.control.post("/_sandbox/clock", json={"advance_seconds": seconds})
        assert reply.status_code == 200

    async def attempts(self) -> list[dict[str, Any]]:
        return list((await self.control.get("/_sandbox/webhook-deliveries")).json())

    async def listed(self) -> dict[str, Any]:
        reply = await self.api.get("/api/v4/webhooks", params={"filter[destination]": HOOK})
        return dict(reply.json()["_embedded"]["webhooks"][0])


@pytest.fixture
async def world(
    sandbox: Sandbox, control: httpx.AsyncClient, sandbox_app: Any
) -> AsyncIterator[World]:
    account = (await control.post("/_sandbox/accounts", json={"subdomain": "acme"})).json()
    integration = (
        await control.post(
            "/_sandbox/integrations",
            json={"name": "hooks", "redirect_uri": "https://app.example/callback"},
        )
    ).json()
    token = (
        await control.post(
            "/_sandbox/long-lived-tokens",
            json={"client_id": integration["client_id"], "account_id": account["id"]},
        )
    ).json()["access_token"]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=sandbox_app),
        base_url=f"https://{account['host']}",
        headers={"Authorization": f"Bearer {token}"},
    ) as api:
        yield World(sandbox, control, sandbox.state.accounts[account["id"]], api)


# --- retries -----------------------------------------------------------------------------------


async def test_no_retry_before_five_minutes(world: World, destination: Destination) -> None:
    """Attempt 2 comes 5 minutes after a failure, not earlier."""
    await world.subscribe()
    await world.emit()
    [first] = await world.attempts()
    assert first["delivered"] is False
    assert first["next_retry_at"] == pytest.approx(first["due_at"] + 300)
    await world.advance(299)
    assert destination.calls == 1
    await world.advance(1)
    assert destination.calls == 2
    second = (await world.attempts())[-1]
    assert second["attempt"] == 2
    assert second["delivery_id"] == first["delivery_id"]
    assert second["raw"] == first["raw"]  # the same body is redelivered
    assert second["request_id"] != first["request_id"]


async def test_five_attempts_after_server_errors(world: World, destination: Destination) -> None:
    """After 5xx: attempts 2, 3 at +5, +15 min; 4, 5 at +15 min, +1 h; then no more."""
    await world.subscribe()
    start = world.sandbox.clock.now()
    await world.emit()
    for step, expected_calls in ((300, 2), (900, 3), (900, 4), (3600, 5)):
        await world.advance(step - 1)
        assert destination.calls == expected_calls - 1
        await world.advance(1)
        assert destination.calls == expected_calls
    await world.advance(86400)
    assert destination.calls == 5
    attempts = await world.attempts()
    assert [a["attempt"] for a in attempts] == [1, 2, 3, 4, 5]
    assert [a["due_at"] - start for a in attempts] == pytest.approx([0, 300, 1200, 2100, 5700])
    assert attempts[-1]["next_retry_at"] is None


@pytest.mark.parametrize("status", [404, 302, 429, 400])
async def test_three_attempts_after_other_codes(
    world: World, destination: Destination, status: int
) -> None:
    """Attempts 4 and 5 follow only a 499 or 5xx; any other failure stops after attempt 3."""
    destination.status = status
    await world.subscribe()
    await world.emit()
    await world.advance(7200)
    assert destination.calls == 3
    await world.advance(7200)
    assert destination.calls == 3


async def test_499_gets_five_attempts(world: World, destination: Destination) -> None:
    """499 counts like a 5xx for attempts 4 and 5."""
    destination.status = 499
    await world.subscribe()
    await world.emit()
    await world.advance(7200)
    assert destination.calls == 5


async def test_timeout_is_code_zero_and_three_attempts(
    world: World, destination: Destination
) -> None:
    """A reply after the deadline is code 0: retried by attempts 2, 3 only."""
    destination.stall = True
    await world.subscribe()
    await world.emit()
    await world.advance(300)
    await world.advance(900)
    await world.advance(7200)
    assert destination.calls == 3
    assert {a["code"] for a in await world.attempts()} == {0}


async def test_one_jump_plays_the_whole_schedule(world: World, destination: Destination) -> None:
    """Time compression: advancing the clock by 2 h sends every retry due in those 2 h."""
    await world.subscribe()
    await world.emit()
    await world.advance(7200)
    assert destination.calls == 5


async def test_a_success_ends_the_retries(world: World, destination: Destination) -> None:
    """Once an attempt is delivered there is no further attempt."""
    await world.subscribe()
    await world.emit()
    destination.status = 200
    await world.advance(300)
    assert destination.calls == 2
    await world.advance(7200)
    assert destination.calls == 2
    assert [a["delivered"] for a in await world.attempts()] == [False, True]


async def test_deleting_the_subscription_drops_its_retries(
    world: World, destination: Destination
) -> None:
    """A retry is not sent to a destination that was unsubscribed meanwhile."""
    await world.subscribe()
    await world.emit()
    await world.api.request("DELETE", "/api/v4/webhooks", json={"destination": HOOK})
    await world.advance(7200)
    assert destination.calls == 1


async def test_retry_delays_follow_config(
    world: World, destination: Destination, control: httpx.AsyncClient
) -> None:
    """The retry schedule is `webhook_retry_delays` in the runtime config."""
    await control.patch("/_sandbox/config", json={"webhook_retry_delays": [10, 20]})
    await world.subscribe()
    await world.emit()
    await world.advance(10)
    assert destination.calls == 2
    await world.advance(20)
    assert destination.calls == 3
    await world.advance(7200)
    assert destination.calls == 3


async def test_retries_go_out_while_real_time_passes(
    sandbox_config: SandboxConfig,
    signing_key: rsa.RSAPrivateKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Retries are due in sandbox time: with a running (scaled) clock a background ticker sends
    them without anyone advancing the clock, and aclose stops it."""
    monkeypatch.setattr(webhooks_module, "TICK_SECONDS", 0.01)
    destination = Destination()
    box = Sandbox(
        sandbox_config,
        clock=Clock(scale=20_000),  # 300 sandbox seconds = 15 ms
        signing_key=signing_key,
        outbound_transport=httpx.MockTransport(destination),
    )
    try:
        account = box.state.create_account("acme")
        box.emit(account, [])  # nothing to send: no task
        assert await box.hooks.flush() == 0
        from amobridge.sandbox.state import WebhookSubscription

        account.webhooks[HOOK] = WebhookSubscription(1, account.id, HOOK, ["add_lead"], 1, 0, 0, 0)
        box.emit(account, [EntityChange("leads", "add", 1, snapshot={"id": 1})])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while destination.calls < 2 and loop.time() < deadline:
            await asyncio.sleep(0.01)
            await box.hooks.flush()
        assert destination.calls >= 2
    finally:
        await box.aclose()
    assert box.hooks._ticker is None


async def test_reset_forgets_pending_retries(world: World, destination: Destination) -> None:
    """POST /_sandbox/reset forgets deliveries and pending retries."""
    await world.subscribe()
    await world.emit()
    assert world.sandbox.hooks.pending_retries == 1
    old_hooks = world.sandbox.hooks
    assert (await world.control.post("/_sandbox/reset")).status_code == 204
    assert old_hooks.pending_retries == 0
    assert await world.attempts() == []
    await world.advance(7200)
    assert destination.calls == 1


# --- auto-disable ------------------------------------------------------------------------------


async def test_more_than_100_failures_in_2h_disable(world: World, destination: Destination) -> None:
    """>100 invalid replies in the last 2 h, the latest invalid, disable the hook: GET shows
    `disabled: true`, nothing more is sent (not even pending retries) until re-enabled."""
    config = world.sandbox.config
    assert (config.webhook_disable_after, config.webhook_disable_window) == (100, 7200)
    await world.subscribe()
    await world.emit(config.webhook_disable_after)
    assert (await world.listed())["disabled"] is False
    await world.emit(1)
    assert destination.calls == config.webhook_disable_after + 1
    assert (await world.listed())["disabled"] is True
    assert (await world.attempts())[-1]["disabled_subscription"] is True
    await world.emit(5)
    await world.advance(7200)
    assert destination.calls == config.webhook_disable_after + 1


async def test_latest_reply_valid_keeps_it_enabled(
    world: World, destination: Destination, control: httpx.AsyncClient
) -> None:
    """The rule needs the latest reply invalid too: many failures followed by a success do
    not disable; the next failure does."""
    await control.patch(
        "/_sandbox/config", json={"webhook_disable_after": 5, "webhook_retry_delays": []}
    )
    await world.subscribe()
    await world.emit(5)
    destination.status = 200
    await world.emit(1)
    assert (await world.listed())["disabled"] is False
    destination.status = 500
    await world.emit(1)
    assert (await world.listed())["disabled"] is True


async def test_failures_outside_the_window_do_not_count(
    world: World, destination: Destination, control: httpx.AsyncClient
) -> None:
    """Only failures within the last `webhook_disable_window` (2 h) count."""
    await control.patch(
        "/_sandbox/config",
        json={
            "webhook_disable_after": 5,
            "webhook_disable_window": 100,
            "webhook_retry_delays": [],
        },
    )
    await world.subscribe()
    await world.emit(5)
    await world.advance(101)
    await world.emit(5)
    assert (await world.listed())["disabled"] is False
    await world.emit(1)
    assert (await world.listed())["disabled"] is True


async def test_reenable_by_posting_again(world: World, destination: Destination) -> None:
    """Re-enabled by hand (here: POST of the same destination) → deliveries resume."""
    world.sandbox.config = world.sandbox.config.updated(
        {"webhook_disable_after": 2, "webhook_retry_delays": []}
    )
    await world.subscribe()
    await world.emit(3)
    assert (await world.listed())["disabled"] is True
    reply = await world.subscribe()
    assert reply.json()["disabled"] is False
    destination.status = 200
    await world.emit(1)
    assert destination.calls == 4
    assert (await world.attempts())[-1]["delivered"] is True


async def test_reenable_through_control(
    world: World, destination: Destination, control: httpx.AsyncClient
) -> None:
    """An admin re-enables the hook; the failure count starts again from zero."""
    world.sandbox.config = world.sandbox.config.updated(
        {"webhook_disable_after": 2, "webhook_retry_delays": []}
    )
    await world.subscribe()
    await world.emit(3)
    assert (await world.listed())["disabled"] is True
    reply = await control.post(
        f"/_sandbox/webhooks/{world.account.id}/enable", json={"destination": HOOK}
    )
    assert reply.json()["disabled"] is False
    await world.emit(1)
    assert destination.calls == 4
    assert (await world.listed())["disabled"] is False


def test_works_across_event_loops_and_survives_a_closed_one(
    sandbox_config: SandboxConfig, signing_key: rsa.RSAPrivateKey
) -> None:
    """A sandbox outlives event loops (one per test): a retry pending on a loop that was closed
    goes out from the next loop, and reset() tolerates tasks of a closed loop."""
    from amobridge.sandbox.state import WebhookSubscription

    destination = Destination(status=500)
    box = Sandbox(
        sandbox_config,
        clock=Clock(frozen=True),
        signing_key=signing_key,
        outbound_transport=httpx.MockTransport(destination),
    )
    account = box.state.create_account("acme")
    account.webhooks[HOOK] = WebhookSubscription(1, account.id, HOOK, ["add_lead"], 1, 0, 0, 0)
    change = EntityChange("leads", "add", 1, snapshot={"id": 1})

    async def first() -> None:
        box.emit(account, [change])
        await box.hooks.flush()  # attempt 1 failed: attempt 2 pending, the ticker running

    loop = asyncio.new_event_loop()
    loop.run_until_complete(first())
    assert box.hooks.pending_retries == 1
    ticker = box.hooks._ticker
    assert ticker is not None
    assert not ticker.done()

    async def second() -> None:
        box.clock.advance(300)
        await box.hooks.run_due()

    asyncio.run(second())
    assert destination.calls == 2
    loop.close()
    third = asyncio.new_event_loop()
    third.run_until_complete(first())
    third.close()  # closed with its ticker still pending
    stranded = box.hooks._ticker
    assert stranded is not None
    assert not stranded.done()
    box.reset()
    assert box.hooks.pending_retries == 0
    for task in (ticker, stranded):  # their loops are gone: no "destroyed but pending" noise
        task._log_destroy_pending = False  # type: ignore[attr-defined]
