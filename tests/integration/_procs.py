"""Helpers of the invariant proofs: real processes, and the full flows the secret scans run.

- The processes themselves come from ``process_support.py`` (shared with the acceptance tier):
  :func:`~process_support.spawn` with :meth:`~process_support.Process.kill` (SIGKILL: a crash, no
  shutdown code runs) and :func:`~process_support.run_sandbox` (the sandbox amoCRM as a real HTTP
  server, rate limiting off).
- :func:`run_workers` starts *refresh worker* processes: each builds the service's
  :class:`Services` on the shared database, waits at a barrier until all are ready, fires
  ``calls`` concurrent ``account.get()`` through ``services.clients.client(connection)`` and
  reports how many succeeded, and how many 401s amoCRM answered each call.
- :func:`full_flows`: every connect flow of the in-process ``stack`` (redirect, website button,
  refresh, re-auth, long-lived import, exchange-code, disconnect, uninstall, errors), and
  :func:`sandbox_secrets`: every token and secret the sandbox issued, to search for afterwards.
"""

from __future__ import annotations

import asyncio
import contextvars
import multiprocessing
import re
import threading
import traceback
from dataclasses import dataclass
from typing import Any

import httpx

from process_support import STOP_DEADLINE

SERVICE_URL = "http://service.test"


# --- service settings shared by the test process and the workers ---------------------------------


def service_settings(
    database_url: str,
    secret_keys: list[str],
    *,
    sandbox_url: str,
    client_id: str,
    client_secret: str,
) -> Any:
    """Settings of a service process talking to the sandbox server at ``sandbox_url``."""
    from amobridge.settings import Settings

    return Settings(
        environment="test",
        database={"url": database_url},
        security={"secret_keys": secret_keys},
        server={"public_url": SERVICE_URL, "run_workers": False},
        amo={
            "client_id": client_id,
            "client_secret": client_secret,
            "api_base_url": sandbox_url,
            "authorize_url": f"{sandbox_url}/oauth",
            "rate_limit_backend": "memory",
        },
    )


@dataclass
class WorkerResult:
    ok: int
    errors: list[str]
    # Per call (one ``account.get()``), how many 401s amoCRM answered it. Two means the call was
    # refused, refreshed (or took another's refresh) and refused again: it sent a spent token.
    unauthorized: list[int]


_context: Any = None


def worker_context() -> Any:
    """Worker processes come from a *forkserver* that imported the service once: each worker is
    a fresh process (own event loop, database connections, lease holder id), without paying the
    seconds of importing FastAPI, SQLAlchemy and the SDK again."""
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(["amobridge.services", __name__])
    return _context


async def run_workers(
    config: dict[str, Any], *, processes: int, deadline: float = 60.0
) -> list[WorkerResult]:
    """Start ``processes`` refresh workers, wait until every one is ready (Services built,
    connection loaded), release them together and gather their outcomes."""
    ctx = worker_context()
    barrier = ctx.Barrier(processes + 1)
    outcomes = ctx.Queue()
    procs = [
        ctx.Process(
            target=refresh_worker, args=(config, barrier, outcomes), name=f"refresh-worker-{i}"
        )
        for i in range(processes)
    ]
    try:
        for proc in procs:
            await asyncio.to_thread(proc.start)
        try:
            await asyncio.to_thread(barrier.wait, deadline)  # all ready: released at once
        except threading.BrokenBarrierError:
            failure = await asyncio.to_thread(outcomes.get, True, 5.0)
            raise AssertionError(f"a worker failed before the start:\n{failure}") from None
        results = []
        for _ in procs:
            outcome = await asyncio.to_thread(outcomes.get, True, deadline)
            assert "failure" not in outcome, outcome["failure"]
            results.append(WorkerResult(outcome["ok"], outcome["errors"], outcome["unauthorized"]))
        for proc in procs:
            await asyncio.to_thread(proc.join, STOP_DEADLINE)
            assert proc.exitcode == 0, f"{proc.name} exited with {proc.exitcode}"
        return results
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join(STOP_DEADLINE)
        outcomes.close()
        outcomes.join_thread()


def refresh_worker(config: dict[str, Any], barrier: Any, outcomes: Any) -> None:
    """A worker process: see :func:`run_workers`."""
    try:
        outcome = asyncio.run(_refresh_worker(config, barrier))
    except BaseException:
        barrier.abort()
        outcome = {"failure": traceback.format_exc()}
    outcomes.put(outcome)
    outcomes.close()
    outcomes.join_thread()


_call_index: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "refresh_worker_call", default=None
)


class _UnauthorizedPerCall(httpx.AsyncBaseTransport):
    """The worker's transport to the sandbox, counting the 401s of each API call: every call runs
    in a task of its own whose context holds its index, and the SDK sends a call's requests (its
    retry after a refresh too) from that task.

    Given a transport, httpx ignores a client's pool limits, so the pools are the service's own:
    API calls get the ``AmoClient``'s (``MAX_IN_FLIGHT`` connections, as many kept idle), the
    token endpoint its client's httpx default."""

    def __init__(self, calls: int) -> None:
        from amobridge.amo.client import MAX_IN_FLIGHT

        self._api = httpx.AsyncHTTPTransport(
            limits=httpx.Limits(
                max_connections=MAX_IN_FLIGHT, max_keepalive_connections=MAX_IN_FLIGHT
            )
        )
        self._other = httpx.AsyncHTTPTransport()
        self.counts = [0] * calls
        self.unattributed = 0  # an API 401 outside any call: the counting above is wrong

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        api = request.url.path.startswith("/api/")
        response = await (self._api if api else self._other).handle_async_request(request)
        if api and response.status_code == 401:
            index = _call_index.get()
            if index is None:
                self.unattributed += 1
            else:
                self.counts[index] += 1
        return response

    async def aclose(self) -> None:  # both clients close it: closing a closed pool is a no-op
        await self._api.aclose()
        await self._other.aclose()


async def _refresh_worker(config: dict[str, Any], barrier: Any) -> dict[str, Any]:
    from amobridge.amo.ratelimit import InMemoryRateLimiter
    from amobridge.services import Services

    settings = service_settings(
        config["database_url"],
        config["secret_keys"],
        sandbox_url=config["sandbox_url"],
        client_id=config["client_id"],
        client_secret=config["client_secret"],
    )
    transport = _UnauthorizedPerCall(config["calls"])
    services = Services.build(settings, amo_transport=transport)
    try:
        async with services.db.transaction() as session:
            connection = await services.connections(session).for_owner(config["owner"])
        assert connection is not None, "no connection for the owner"
        # The service paces 7 requests/second per connection (amoCRM's limit; the shared,
        # cross-process pace is proven by test_rate_limit_shared.py). The sandbox's limiter is
        # off here and this proof is about the refresh, so every call may start at once.
        services.clients._limiters[connection.id] = InMemoryRateLimiter(rate=1_000_000)
        client = await services.clients.client(connection)

        async def call(index: int) -> Any:
            _call_index.set(index)  # this call's task only: gather runs each in its own task
            return await client.account.get()

        await asyncio.to_thread(barrier.wait, 60.0)
        results = await asyncio.gather(
            *(call(i) for i in range(config["calls"])), return_exceptions=True
        )
    finally:
        await services.stop()
    assert transport.unattributed == 0, f"{transport.unattributed} API 401s outside any call"
    ok = sum(
        1 for r in results if not isinstance(r, BaseException) and r.id == config["account_id"]
    )
    errors = sorted({f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)})
    return {"ok": ok, "errors": errors, "unauthorized": transport.counts}


# --- full flows and what the sandbox issued (for the secret scans) -------------------------------

JWT_LIKE = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")
# An amoCRM refresh token: "def50" and hex. Not inside a longer hex run: a SHA-256 (a hashed
# secret, a hook signature's id) contains those five characters now and then by chance.
DEF502_LIKE = re.compile(r"(?<![0-9a-f])def50[0-9a-f]{32,}", re.IGNORECASE)
# In log lines a token starts a value (after a quote, "=", a space): no letter or digit before.
DEF502_IN_TEXT = re.compile(r"(?<![0-9A-Za-z])def50[0-9a-f]{32,}", re.IGNORECASE)


def sandbox_secrets(sandbox: Any) -> set[str]:
    """Every token and secret the in-process sandbox ever issued: access tokens (JWTs and
    long-lived), refresh tokens, authorization codes, integration client secrets."""
    state = sandbox.state
    values = set(state.access_tokens) | set(state.refresh_tokens) | set(state.codes)
    values |= {i.client_secret for i in state.integrations.values()}
    return {v for v in values if v}


def needles(values: set[str]) -> set[str]:
    """What to search for: each value, and a 24-character slice of its end (a value stored cut
    short, or split, is still found)."""
    found = set(values)
    found |= {v[-28:-4] for v in values if len(v) >= 40}
    return found


async def full_flows(stack: Any) -> dict[str, str]:
    """Every flow of the connections service, in-process, ending with a connection per owner.

    Returns the plaintext secrets the flows handed to the service besides the sandbox's
    (API keys, OAuth states), by name.
    """
    from amobridge.amo.errors import AmoReauthRequired

    extra: dict[str, str] = {"admin_key": stack.admin_key, "app_key": stack.app_key}
    control = stack.control
    account_id = stack.account["id"]

    # Redirect flow, then a refresh of its grant.
    assert (await stack.connect("redirect-user")).status_code == 200
    await control.post("/_sandbox/tokens/expire", json={"account_id": account_id})
    row = await _connection(stack, "redirect-user")
    client = await stack.services.clients.client(row)
    assert (await client.account.get()).id == account_id

    # The states of the flows are secrets while live: remember one issued for a flow left open.
    start = await stack.http.get(
        "/amocrm/auth", params={"owner": "abandoned", "format": "json"}, headers=stack.app_headers()
    )
    extra["open_state"] = httpx.URL(start.json()["url"]).params["state"]

    # Website button: the sandbox POSTs the new integration's secrets first.
    button = await _button(stack, "button-user")
    assert button.status_code == 200, button.text
    row = await _connection(stack, "button-user")
    await control.post("/_sandbox/tokens/expire", json={"account_id": account_id})
    assert (await (await stack.services.clients.client(row)).account.get()).id == account_id
    # …and one whose secrets arrived but whose user never came back: kept (encrypted) ≤ 10 min.
    pending = await _button_state(stack, "button-pending")
    extra["button_state"] = pending
    secrets = await stack.http.post(
        "/amocrm/secrets",
        json={
            "client_id": "pending-integration-id",
            "client_secret": "pending-secret-" + "7" * 40,
            "state": pending,
        },
    )
    assert secrets.status_code == 200, secrets.text
    extra["pending_button_secret"] = "pending-secret-" + "7" * 40

    # exchange-code with a user's JWT (a mobile app's flow), then the same code again (an error).
    consent = (
        await control.post(
            "/_sandbox/authorize",
            json={"client_id": stack.integration["client_id"], "account_id": account_id},
        )
    ).json()
    headers = {"Authorization": f"Bearer {stack.user_token('mobile-user')}"}
    body = {"code": consent["code"], "referer": consent["referer"]}
    assert (await stack.http.post("/amocrm/exchange-code", json=body, headers=headers)).is_success
    again = await stack.http.post("/amocrm/exchange-code", json=body, headers=headers)
    assert again.status_code == 400

    # Long-lived token import (admin), used for a call.
    long_lived = (
        await control.post(
            "/_sandbox/long-lived-tokens",
            json={"client_id": stack.integration["client_id"], "account_id": account_id},
        )
    ).json()["access_token"]
    imported = await stack.http.post(
        "/amocrm/tokens",
        json={"owner": "long-lived-user", "domain": "acme", "access_token": long_lived},
        headers=stack.admin_headers(),
    )
    assert imported.status_code == 201, imported.text
    row = await _connection(stack, "long-lived-user")
    assert (await (await stack.services.clients.client(row)).account.get()).id == account_id

    # Re-auth: a grant amoCRM revoked (its refresh token spent elsewhere).
    assert (await stack.connect("revoked-user")).status_code == 200
    row = await _connection(stack, "revoked-user")
    tokens = stack.services.tokens_of(row)
    stack.sandbox.state.refresh_tokens[tokens.refresh_token].revoked = True
    await control.post("/_sandbox/tokens/expire", json={"account_id": account_id})
    try:
        await (await stack.services.clients.client(row)).account.get()
    except AmoReauthRequired:
        pass
    else:
        raise AssertionError("a revoked grant must need re-authorization")

    # Errors: a replayed callback, a forged state, a bad token import, a bad uninstall signature.
    replay = await _replayed_callback(stack)
    assert replay.status_code == 400
    forged = await stack.http.get("/amocrm/callback", params={"code": "x", "state": "a.b"})
    assert forged.status_code == 400
    bad_import = await stack.http.post(
        "/amocrm/tokens",
        json={"owner": "x", "domain": "not a domain!", "access_token": long_lived},
        headers=stack.admin_headers(),
    )
    assert bad_import.status_code == 400
    bad_hook = await stack.http.get(
        "/amocrm/uninstall",
        params={
            "account_id": account_id,
            "client_uuid": stack.integration["client_id"],
            "signature": "0" * 64,
        },
    )
    assert bad_hook.status_code == 401

    # Disconnect, and amoCRM's uninstall hook (signed by the sandbox).
    assert (await stack.connect("leaving-user")).status_code == 200
    gone = await stack.http.delete(
        "/amocrm/disconnect", params={"owner": "leaving-user"}, headers=stack.app_headers()
    )
    assert gone.status_code == 200
    uninstall_account = (
        await control.post("/_sandbox/accounts", json={"subdomain": "uninstalled"})
    ).json()
    assert (await stack.connect("uninstalled-user", uninstall_account["id"])).status_code == 200
    hook = await control.post(
        f"/_sandbox/integrations/{stack.integration['client_id']}/uninstall",
        json={"account_id": uninstall_account["id"]},
    )
    assert hook.status_code == 200, hook.text
    status = await stack.http.get(
        "/amocrm/status", params={"owner": "uninstalled-user"}, headers=stack.app_headers()
    )
    assert status.json()["status"] == "disconnected"
    return extra


async def _connection(stack: Any, owner: str) -> Any:
    async with stack.services.db.transaction() as session:
        row = await stack.services.connections(session).for_owner(owner)
    assert row is not None, f"no connection for {owner}"
    return row


async def _button_state(stack: Any, owner: str) -> str:
    page = await stack.http.get(
        "/amocrm/connect", params={"owner": owner}, headers=stack.app_headers()
    )
    assert page.status_code == 200, page.text
    match = re.search(r'data-state="([^"]+)"', page.text)
    assert match, "the button page carries no state"
    return match.group(1)


async def _button(stack: Any, owner: str) -> httpx.Response:
    callback = await stack.install_button(await _button_state(stack, owner))
    reply: httpx.Response = await stack.http.get("/amocrm/callback", params=callback)
    return reply


async def _replayed_callback(stack: Any) -> httpx.Response:
    start = await stack.http.get(
        "/amocrm/auth", params={"owner": "replay", "format": "json"}, headers=stack.app_headers()
    )
    state = await stack.open_link(start.json()["url"])
    consent = await stack.control.post(
        "/_sandbox/authorize",
        json={
            "client_id": stack.integration["client_id"],
            "account_id": stack.account["id"],
            "state": state,
        },
    )
    params = dict(httpx.URL(consent.json()["redirect_url"]).params)
    assert (await stack.http.get("/amocrm/callback", params=params)).status_code == 200
    # From another browser (the one that connected would be shown the success page again).
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=stack.app), base_url=str(stack.http.base_url)
    ) as elsewhere:
        reply: httpx.Response = await elsewhere.get("/amocrm/callback", params=params)
    return reply
