"""What holds in one process holds across several: a second ``Services`` on the same database is
a second process as far as every cache is concerned (its own clients, providers, store holder).

Each test here reproduces a defect the service core had:
- process B kept using its cached client after process A disconnected, and then flipped the
  disconnected row to ``reauth_required`` (with an audit entry and a host callback);
- a refresh holder that outlived its lease saved over the newer pair; a save after a disconnect
  wrote tokens into the disconnected row;
- ``issued_at`` was not stored, so a fresh short-lived token was refreshed at once;
- the keep-alive pass stopped at the first ``TokenLockTimeout``;
- the host app's reauth callback was an inline POST on the caller's path, never retried (it is
  now an endpoint of the events outbox: a delivery job, retried, each attempt logged).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from amobridge.amo.auth import TokenSet
from amobridge.amo.errors import AmoReauthRequired
from amobridge.audit import AuditRepository
from amobridge.connect.clients import ConnectionDisconnected
from amobridge.connect.repository import SaveRefused
from amobridge.connect.token_store import TokenLockTimeout, TokenSaveRefused
from amobridge.jobs import JobWorker
from amobridge.services import Services
from amobridge.storage.tables import Connection, Event, EventDelivery


async def _row(services: Services, owner: str) -> Connection:
    async with services.db.read() as session:
        row = await services.connections(session).for_owner(owner)
    assert row is not None
    return row


async def _refreshes(stack: Any) -> int:
    log = (await stack.control.get("/_sandbox/requests", params={"path_prefix": "/oauth2"})).json()
    return sum(1 for r in log if r.get("grant_type") == "refresh_token")


@pytest.fixture
async def other(stack: Any, sandbox_app: Any) -> AsyncIterator[Services]:
    """Process B: the same settings and database, nothing shared in memory."""
    settings = stack.settings.model_copy(
        update={"amo": stack.settings.amo.model_copy(update={"connection_check_ms": 0})}
    )
    services = Services.build(settings, amo_transport=httpx.ASGITransport(app=sandbox_app))
    await services.start(migrate=False, workers=False)
    yield services
    await services.stop()


async def test_a_disconnect_reaches_every_process_and_stays_disconnected(
    stack: Any, other: Services
) -> None:
    await stack.connect("u")
    row = await _row(other, "u")
    client_b = await other.clients.client(row)
    assert (await client_b.account.get()).id == stack.account["id"]  # B caches a working client

    gone = await stack.http.delete(
        "/amocrm/disconnect", params={"owner": "u"}, headers=stack.app_headers()
    )
    assert gone.status_code == 200

    before = len((await stack.control.get("/_sandbox/requests")).json())
    with pytest.raises(ConnectionDisconnected):
        await client_b.account.get()
    after = len((await stack.control.get("/_sandbox/requests")).json())
    assert after == before  # refused without calling amoCRM

    row = await _row(stack.services, "u")
    assert row.status == "disconnected"
    assert row.access_token_enc is None
    async with stack.services.db.read() as session:
        assert await AuditRepository(session).tail(owner="u", action="reauth_required") == []
        assert list(await session.scalars(select(Event))) == []


async def test_a_reconnect_elsewhere_is_picked_up_by_the_cached_client(
    stack: Any, other: Services
) -> None:
    await stack.connect("u")
    client_b = await other.clients.client(await _row(other, "u"))
    await client_b.account.get()
    first = other.tokens_of(await _row(other, "u"))
    assert first is not None
    # A re-connects (a new grant); amoCRM revokes the old one, which B still holds in memory.
    assert (await stack.connect("u")).status_code == 200
    stack.sandbox.state.refresh_tokens[first.refresh_token].revoked = True
    stack.sandbox.state.access_tokens[first.access_token].revoked = True
    # B's next call goes out with the new grant: no 401, no refresh of the dead one.
    assert (await client_b.account.get()).id == stack.account["id"]
    assert await _refreshes(stack) == 0
    assert (await _row(stack.services, "u")).status == "active"


async def test_a_dead_grant_reported_for_a_disconnected_row_changes_nothing(stack: Any) -> None:
    await stack.connect("u")
    row = await _row(stack.services, "u")
    version = row.token_version
    async with stack.services.db.transaction() as session:
        await stack.services.connect.disconnect(session, "u", actor="test")
    flagged = await stack.services.reauth.on_reauth_required(
        row.id, AmoReauthRequired("Token has been revoked", status=401), version
    )
    assert flagged is False
    assert (await _row(stack.services, "u")).status == "disconnected"


async def test_a_dead_grant_is_flagged_once_and_not_for_a_newer_grant(stack: Any) -> None:
    await stack.connect("u")
    row = await _row(stack.services, "u")
    error = AmoReauthRequired("Token has been revoked", status=401)
    assert await stack.services.reauth.on_reauth_required(row.id, error, row.token_version)
    assert not await stack.services.reauth.on_reauth_required(row.id, error, row.token_version)
    async with stack.services.db.read() as session:
        assert len(await AuditRepository(session).tail(owner="u", action="reauth_required")) == 1
    # A stale report (an older grant) never blames the current one...
    await stack.connect("v")
    fresh = await _row(stack.services, "v")
    assert not await stack.services.reauth.on_reauth_required(
        fresh.id, error, fresh.token_version - 1
    )
    assert (await _row(stack.services, "v")).status == "active"


async def test_a_holder_that_outlived_its_lease_loses(stack: Any, other: Services) -> None:
    await stack.connect("u")
    key = (await _row(stack.services, "u")).id
    a, b = stack.services.store, other.store
    pair_a = TokenSet("access-from-a", "refresh-from-a", expires_at=9e9, issued_at=1.0)
    pair_b = TokenSet("access-from-b", "refresh-from-b", expires_at=9e9, issued_at=1.0)
    async with a.lock(key):
        assert await a.load(key) is not None
        # A stalls past its lease: the lease expires (as the database's clock would say).
        async with stack.services.db.transaction() as session:
            await session.execute(
                update(Connection)
                .where(Connection.id == key)
                .values(refresh_lease_until=datetime.now(UTC) - timedelta(seconds=1))
            )
        async with b.lock(key):  # B takes the lease, refreshes and saves
            assert await b.load(key) is not None
            await b.save(key, pair_b)
        with pytest.raises(TokenSaveRefused) as refused:
            await a.save(key, pair_a)  # A's late save
        assert refused.value.reason == SaveRefused.superseded
    stored = stack.services.tokens_of(await _row(stack.services, "u"))
    assert stored is not None
    assert stored.access_token == "access-from-b"


async def test_a_save_under_a_lease_taken_over_is_refused(stack: Any, other: Services) -> None:
    await stack.connect("u")
    key = (await _row(stack.services, "u")).id
    a, b = stack.services.store, other.store
    async with a.lock(key):
        await a.load(key)
        async with stack.services.db.transaction() as session:
            await session.execute(
                update(Connection)
                .where(Connection.id == key)
                .values(refresh_lease_until=datetime.now(UTC) - timedelta(seconds=1))
            )
        async with b.lock(key):  # B holds the lease now (and has not saved yet)
            with pytest.raises(TokenSaveRefused) as refused:
                await a.save(key, TokenSet("late", "late", expires_at=9e9))
            assert refused.value.reason == SaveRefused.lease_lost


async def test_a_save_after_a_disconnect_writes_nothing(stack: Any) -> None:
    await stack.connect("u")
    key = (await _row(stack.services, "u")).id
    store = stack.services.store
    async with store.lock(key):
        await store.load(key)
        async with stack.services.db.transaction() as session:
            await stack.services.connect.disconnect(session, "u", actor="test")
        with pytest.raises(TokenSaveRefused) as refused:
            await store.save(key, TokenSet("after", "after", expires_at=9e9))
        assert refused.value.reason == SaveRefused.disconnected
    row = await _row(stack.services, "u")
    assert row.status == "disconnected"
    assert row.access_token_enc is None
    assert row.refresh_token_enc is None


async def test_issued_at_is_stored_so_a_fresh_short_token_is_not_refreshed(stack: Any) -> None:
    # Tokens living 2 minutes: with the default 5-minute leeway and no issued_at, the very
    # first call refreshed. Capped at half the lifetime, the token is good for a minute.
    await stack.control.patch("/_sandbox/config", json={"access_ttl": 120})
    await stack.connect("u")
    row = await _row(stack.services, "u")
    assert row.issued_at is not None
    client = await stack.services.clients.client(row)
    await client.account.get()
    assert await _refreshes(stack) == 0
    assert (await _row(stack.services, "u")).token_version == row.token_version


async def test_keepalive_goes_on_past_a_stuck_lease(stack: Any) -> None:
    await stack.connect("stuck")
    await stack.connect("fine")
    stuck = await _row(stack.services, "stuck")
    async with stack.services.db.transaction() as session:
        await session.execute(
            update(Connection).values(last_refresh_at=datetime.now(UTC) - timedelta(days=40))
        )
        # Another process holds stuck's refresh lease (and will for a while).
        await session.execute(
            update(Connection)
            .where(Connection.id == stuck.id)
            .values(
                refresh_lease_until=datetime.now(UTC) + timedelta(minutes=5),
                refresh_lease_holder="someone-else:1",
            )
        )
    stack.services.store.wait_seconds = 0.2
    report = await stack.services.connect_tasks.keepalive(older_than=timedelta(days=30))
    assert (report.refreshed, report.failed) == (1, 1)
    assert "refresh lock" in ((await _row(stack.services, "stuck")).last_error or "")
    fine = await _row(stack.services, "fine")
    assert datetime.now(UTC) - (fine.last_refresh_at or datetime.min.replace(tzinfo=UTC)) < (
        timedelta(minutes=1)
    )
    with pytest.raises(TokenLockTimeout):
        async with stack.services.store.lock(stuck.id):
            pass


@dataclass
class HostApp:
    """Services whose reauth callback goes to a recording host app, with one connection whose
    grant amoCRM has just revoked (the integration was disabled, the access token expired)."""

    services: Services
    connection: Connection
    replies: list[int]
    received: list[httpx.Request] = field(default_factory=list)


@contextlib.asynccontextmanager
async def host_app(
    database_url: str,
    sandbox_app: Any,
    control: httpx.AsyncClient,
    *,
    replies: list[int],
    secret: str | None = None,
) -> AsyncIterator[HostApp]:
    from conftest import make_settings  # type: ignore[import-not-found]

    holder: list[HostApp] = []

    class Route(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.host == "hostapp.test":
                await request.aread()
                holder[0].received.append(request)
                return httpx.Response(holder[0].replies.pop(0))
            return await httpx.ASGITransport(app=sandbox_app).handle_async_request(request)

    integ = (
        await control.post(
            "/_sandbox/integrations",
            json={"name": "x", "redirect_uri": "http://service.test/amocrm/callback"},
        )
    ).json()
    account = (await control.post("/_sandbox/accounts", json={"subdomain": "hooked"})).json()
    hooks: dict[str, str] = {"reauth_callback_url": "http://hostapp.test/hook"}
    if secret is not None:
        hooks["reauth_callback_secret"] = secret
    settings = make_settings(
        database_url,
        amo={"client_id": integ["client_id"], "client_secret": integ["client_secret"]},
        hooks=hooks,
    )
    services = Services.build(settings, amo_transport=Route())
    await services.start(migrate=False)
    try:
        code = (
            await control.post(
                "/_sandbox/authorize",
                json={"client_id": integ["client_id"], "account_id": account["id"]},
            )
        ).json()
        connection = await services.connect_callback.exchange_code_for(
            "o", code["code"], code["referer"]
        )
        await control.post(
            f"/_sandbox/integrations/{integ['client_id']}/uninstall",
            json={"account_id": account["id"]},
        )
        await control.post("/_sandbox/tokens/expire", json={})
        holder.append(HostApp(services, connection, replies))
        yield holder[0]
    finally:
        await services.stop()


async def _deliver(services: Services, *, ahead: timedelta | None = None) -> int:
    """One round of the job worker (its clock ``ahead`` of this one's): the jobs it ran."""
    clock = (lambda: datetime.now(UTC) + ahead) if ahead else None
    worker = JobWorker(
        services.db,
        services.jobs,
        services.job_handlers,
        services.settings.jobs,
        clients=services.clients,
        services=services,
        clock=clock,
    )
    return len(await worker.run_once())


async def test_reauth_callback_is_signed_and_sent_once_per_dead_grant(
    database_url: str, sandbox_app: Any, control: httpx.AsyncClient
) -> None:
    async with host_app(
        database_url, sandbox_app, control, replies=[200], secret="hook-secret-123"
    ) as host:
        client = await host.services.clients.client(host.connection)
        for _ in range(2):
            with pytest.raises(AmoReauthRequired):
                await client.account.get()
        assert host.received == []  # queued, never POSTed on the caller's path
        assert await _deliver(host.services) == 1
        assert await _deliver(host.services) == 0  # delivered once
    assert len(host.received) == 1  # once per dead grant, not once per failed call
    body = host.received[0].content
    payload = json.loads(body)
    assert payload["event"] == "connection.reauth_required"
    assert payload["owner"] == "o"
    expected = hmac.new(b"hook-secret-123", body, hashlib.sha256).hexdigest()
    assert host.received[0].headers["X-Amobridge-Signature"] == f"sha256={expected}"


async def test_reauth_callback_is_queued_retried_and_audited(
    database_url: str, sandbox_app: Any, control: httpx.AsyncClient
) -> None:
    async with host_app(database_url, sandbox_app, control, replies=[500, 200]) as host:
        services = host.services
        client = await services.clients.client(host.connection)
        with pytest.raises(AmoReauthRequired):
            await client.account.get()
        assert host.received == []  # the caller did not wait for the host app

        assert await _deliver(services) == 1  # 500: retry later
        assert await _deliver(services) == 0  # not due yet
        async with services.db.read() as session:
            row = (await session.scalars(select(EventDelivery))).one()
            assert (row.state, row.attempts, row.last_error) == ("pending", 1, "HTTP 500")
            assert row.next_attempt_at is not None
            assert row.next_attempt_at > datetime.now(UTC)
        assert await _deliver(services, ahead=timedelta(minutes=1)) == 1  # the retry is due
        async with services.db.read() as session:
            row = (await session.scalars(select(EventDelivery))).one()
            assert (row.state, row.attempts, row.subscription_id) == (
                "delivered",
                2,
                "legacy-reauth",
            )
            audit = await AuditRepository(session).tail(owner="o", action="reauth_callback")
        assert [e.success for e in reversed(audit)] == [False, True]
        assert len(host.received) == 2
        assert host.received[0].content == host.received[1].content
