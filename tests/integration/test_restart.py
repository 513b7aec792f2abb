"""Proof: kill the service mid-flow (SIGKILL, no shutdown code runs); tokens survive, the
connection works after the restart, and an interrupted flow can simply be finished or restarted.

A service that keeps tokens in memory loses them on every restart. Here ``amobridge serve`` runs
as a real process on SQLite (WAL) against the sandbox as a real server; the test kills it with
SIGKILL while one owner is connected, two have a state issued (one with the user's consent given
and its callback still to come) and one callback is inside its code exchange, then restarts it on
the same database.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from _procs import DEF502_LIKE, JWT_LIKE, run_workers
from sqlalchemy import create_engine, select

from amobridge.storage.crypto import generate_key
from amobridge.storage.tables import OAuthState
from process_support import Process as Proc
from process_support import SandboxServer, amobridge, clean_env, free_port, run_sandbox, spawn

JWT_SECRET = "restart-test-jwt-secret-0123456789"
EXCHANGE_DELAY = 10.0
"""How long the sandbox holds the exchange the kill interrupts (the kill comes long before)."""


@pytest.fixture(scope="module")
def sandbox_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxServer]:
    with run_sandbox(tmp_path_factory.mktemp("sandbox")) as server:
        yield server


@dataclass
class Service:
    """``amobridge serve`` on a fixed port and database, restartable."""

    workdir: Path
    port: int
    env: dict[str, str]
    database: Path
    proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = spawn(
            "service",
            amobridge("serve", "--host", "127.0.0.1", "--port", str(self.port)),
            env=self.env,
            workdir=self.workdir,
            ready_url=f"{self.url}/healthz",
        )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        assert self.proc.popen.returncode == -9

    def headers(self, owner: str) -> dict[str, str]:
        token = jwt.encode({"sub": owner, "exp": int(time.time()) + 600}, JWT_SECRET, "HS256")
        return {"Authorization": f"Bearer {token}"}

    def state_for(self, http: httpx.Client, owner: str) -> str:
        reply = http.get(
            f"{self.url}/amocrm/auth", params={"format": "json"}, headers=self.headers(owner)
        )
        assert reply.status_code == 200, reply.text
        # Opened as a browser would: the flow is bound to this client, which calls back.
        hop = http.get(reply.json()["url"])
        assert hop.status_code == 302, hop.text
        return httpx.URL(hop.headers["location"]).params["state"]

    def status(self, http: httpx.Client, owner: str) -> dict[str, Any]:
        reply = http.get(f"{self.url}/amocrm/status", headers=self.headers(owner))
        assert reply.status_code == 200, reply.text
        found: dict[str, Any] = reply.json()
        return found

    def used_at(self, state: str) -> Any:
        engine = create_engine(f"sqlite:///{self.database}")
        try:
            with engine.connect() as conn:
                return conn.scalar(
                    select(OAuthState.used_at).where(
                        OAuthState.id == hashlib.sha256(state.encode()).hexdigest()
                    )
                )
        finally:
            engine.dispose()


@pytest.fixture
def service(
    sandbox_server: SandboxServer, tmp_path: Path
) -> Iterator[tuple[Service, dict[str, Any]]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    integration = sandbox_server.create_integration(f"{url}/amocrm/callback")
    database = tmp_path / "amobridge.db"
    key = generate_key()
    env = clean_env(
        AMOBRIDGE_ENVIRONMENT="test",
        AMOBRIDGE_LOG_LEVEL="INFO",
        AMOBRIDGE_DATABASE__URL=f"sqlite:///{database}",
        AMOBRIDGE_SECURITY__SECRET_KEYS=key,
        AMOBRIDGE_SECURITY__JWT_SECRET=JWT_SECRET,
        AMOBRIDGE_AMO__CLIENT_ID=integration["client_id"],
        AMOBRIDGE_AMO__CLIENT_SECRET=integration["client_secret"],
        AMOBRIDGE_AMO__AUTHORIZE_URL=f"{sandbox_server.url}/oauth",
        AMOBRIDGE_AMO__API_BASE_URL=sandbox_server.url,
        AMOBRIDGE_SERVER__PUBLIC_URL=url,
        AMOBRIDGE_SERVER__RUN_WORKERS="false",
    )
    svc = Service(tmp_path / "service", port, env, database)
    svc.start()
    worker = {
        "database_url": f"sqlite:///{database}",
        "secret_keys": [key],
        "sandbox_url": sandbox_server.url,
        "client_id": integration["client_id"],
        "client_secret": integration["client_secret"],
    }
    try:
        yield svc, worker
    finally:
        if svc.proc is not None:
            svc.proc.stop()


def callback(
    http: httpx.Client,
    service: Service,
    server: SandboxServer,
    client_id: str,
    account: int,
    state: str,
) -> httpx.Response:
    consent = server.consent(client_id, account, state)
    params = dict(httpx.URL(consent["redirect_url"]).params)
    return http.get(f"{service.url}/amocrm/callback", params=params)


def test_tokens_and_flows_survive_a_kill(
    sandbox_server: SandboxServer, service: tuple[Service, dict[str, Any]]
) -> None:
    svc, worker = service
    client_id = worker["client_id"]
    accounts = {
        owner: sandbox_server.create_account(f"{owner}{uuid.uuid4().hex[:8]}")["id"]
        for owner in ("alice", "bob", "carol", "dave")
    }
    with httpx.Client(timeout=30.0) as http, ThreadPoolExecutor(1) as background:
        # alice connects; bob's flow is started; carol consents but her callback is yet to come.
        alice = callback(
            http, svc, sandbox_server, client_id, accounts["alice"], svc.state_for(http, "alice")
        )
        assert alice.status_code == 200, alice.text
        assert "amoCRM подключён!" in alice.text
        connected_at = svc.status(http, "alice")["lastRefreshAt"]
        svc.state_for(http, "bob")
        carol_consent = sandbox_server.consent(
            client_id, accounts["carol"], svc.state_for(http, "carol")
        )
        # dave's callback is inside its code exchange (amoCRM answering slowly) at the kill.
        sandbox_server.post(
            "/_sandbox/faults",
            {
                "kind": "slow",
                "delay": EXCHANGE_DELAY,
                "path_prefix": "/oauth2/access_token",
                "account_id": accounts["dave"],
                "count": 1,
            },
        )
        dave_state = svc.state_for(http, "dave")
        dave_params = dict(
            httpx.URL(
                sandbox_server.consent(client_id, accounts["dave"], dave_state)["redirect_url"]
            ).params
        )
        in_flight = background.submit(http.get, f"{svc.url}/amocrm/callback", params=dave_params)
        deadline = time.monotonic() + EXCHANGE_DELAY / 2
        while svc.used_at(dave_state) is None:  # consumed, committed: the exchange is next
            assert time.monotonic() < deadline, "dave's callback never consumed its state"
            time.sleep(0.02)  # polling interval under a deadline
        svc.kill()
        with pytest.raises(httpx.TransportError):
            in_flight.result(timeout=EXCHANGE_DELAY)

        svc.start()

        # Tokens survived: alice is connected, with the pair she had.
        status = svc.status(http, "alice")
        assert status["connected"] is True
        assert status["status"] == "active"
        assert status["lastRefreshAt"] == connected_at
        # carol's consent from before the kill completes now: the state outlived the process.
        carol = http.get(
            f"{svc.url}/amocrm/callback",
            params=dict(httpx.URL(carol_consent["redirect_url"]).params),
        )
        assert carol.status_code == 200, carol.text
        assert svc.status(http, "carol")["connected"] is True
        # bob's interrupted flow is simply started again.
        assert svc.status(http, "bob")["connected"] is False
        bob = callback(
            http, svc, sandbox_server, client_id, accounts["bob"], svc.state_for(http, "bob")
        )
        assert bob.status_code == 200, bob.text
        # dave's callback cannot be replayed (its state was used); the page says to start again,
        # and starting again works.
        replay = http.get(f"{svc.url}/amocrm/callback", params=dave_params)
        assert replay.status_code == 400
        assert 'data-error="state_used"' in replay.text
        assert svc.status(http, "dave")["connected"] is False
        dave = callback(
            http, svc, sandbox_server, client_id, accounts["dave"], svc.state_for(http, "dave")
        )
        assert dave.status_code == 200, dave.text

        # alice's connection works after the restart: her access token expired, so another
        # process refreshes it (once) and persists the new pair before using it.
        assert sandbox_server.expire_tokens(accounts["alice"]) == 1
        alice_worker = {**worker, "owner": "alice", "account_id": accounts["alice"], "calls": 3}
        [result] = asyncio.run(run_workers(alice_worker, processes=1))
        assert (result.ok, result.errors) == (3, [])
        assert [r["status"] for r in sandbox_server.refreshes(accounts["alice"])] == [200]
        refreshed_at = svc.status(http, "alice")["lastRefreshAt"]
        assert refreshed_at > connected_at

        # Killed again right after the refresh: the persisted pair is the one in use.
        svc.kill()
        svc.start()
        status = svc.status(http, "alice")
        assert (status["connected"], status["lastRefreshAt"]) == (True, refreshed_at)
        [result] = asyncio.run(run_workers({**alice_worker, "calls": 2}, processes=1))
        assert (result.ok, result.errors) == (2, [])
        assert len(sandbox_server.refreshes(accounts["alice"])) == 1
        assert {c["status"] for c in sandbox_server.requests(accounts["alice"], "/api/v4")} == {
            200,
            401,  # the one call that found the expired token, before the refresh
        }

    # What the three service processes wrote (uvicorn's access log included): the callback URLs'
    # codes masked, no token, no secret.
    assert svc.proc is not None
    written = svc.proc.log()
    assert "GET /amocrm/callback?code=def502…" in written
    assert not JWT_LIKE.search(written)
    assert not DEF502_LIKE.search(written)
    assert worker["client_secret"] not in written
