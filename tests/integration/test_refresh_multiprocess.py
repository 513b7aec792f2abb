"""Proof: many worker **processes** share one expired grant and refresh it exactly once.

amoCRM's refresh tokens are single-use — a second refresh with the same token answers
401 and, in a real account, a grant spent twice is lost. So however many processes find the access
token expired at once, the sandbox must see exactly one ``grant_type=refresh_token`` request, and
every call must succeed with the new pair (the cross-process lease of
``connect/token_store.py``: one conditional UPDATE wins, the others wait and re-read).

The sandbox runs as a real server (``amobridge sandbox``); each worker is a separate Python
process building the service's ``Services`` on the same database (see ``_procs.py``).
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from _procs import WorkerResult, run_workers, service_settings
from sqlalchemy import update

from amobridge.services import Services
from amobridge.storage.crypto import generate_key
from amobridge.storage.tables import Connection
from database_support import DatabaseTemplates
from process_support import SandboxServer, run_sandbox

CALLS = 125
SLOW_REFRESH = 0.5


@pytest.fixture(scope="module")
def sandbox_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxServer]:
    with run_sandbox(tmp_path_factory.mktemp("sandbox")) as server:
        yield server


async def connect_owner(
    server: SandboxServer, database_url: str, *, stored_expiry: bool
) -> dict[str, Any]:
    """Connect an owner through the service code (code exchange on the account's domain), then
    expire its access token in the sandbox and, with ``stored_expiry``, in the database too."""
    account = server.create_account(f"mp{uuid.uuid4().hex[:10]}")
    integration = server.create_integration("http://service.test/amocrm/callback")
    config = {
        "database_url": database_url,
        "secret_keys": [generate_key()],
        "sandbox_url": server.url,
        "client_id": integration["client_id"],
        "client_secret": integration["client_secret"],
        "owner": "tenant-1",
        "account_id": account["id"],
        "calls": CALLS,
    }
    settings = service_settings(
        database_url,
        config["secret_keys"],
        sandbox_url=server.url,
        client_id=integration["client_id"],
        client_secret=integration["client_secret"],
    )
    services = Services.build(settings)
    try:
        consent = server.consent(integration["client_id"], account["id"])
        connection = await services.connect_callback.exchange_code_for(
            "tenant-1", consent["code"], consent["referer"]
        )
        assert connection.account_id == account["id"]
        if stored_expiry:
            async with services.db.transaction() as session:
                await session.execute(
                    update(Connection)
                    .where(Connection.id == connection.id)
                    .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
                )
    finally:
        await services.stop()
    assert server.expire_tokens(account["id"]) == 1
    # A token endpoint that takes its time (as amoCRM's may): without the lease, every process
    # would find the stored token stale within this window and spend the refresh token again.
    server.post(
        "/_sandbox/faults",
        {
            "kind": "slow",
            "delay": SLOW_REFRESH,
            "method": "POST",
            "path_prefix": "/oauth2/access_token",
            "account_id": account["id"],
        },
    )
    return config


def api_calls(server: SandboxServer, account_id: int) -> list[dict[str, Any]]:
    return server.requests(account_id, "/api/v4/account")


def calls_by_401s(results: list[WorkerResult]) -> dict[int, int]:
    """How many calls, over every worker, amoCRM answered with 0, 1, 2… 401s."""
    assert [len(r.unauthorized) for r in results] == [CALLS] * len(results)
    return dict(sorted(Counter(n for r in results for n in r.unauthorized).items()))


async def test_expired_token_is_refreshed_once_across_processes(
    sandbox_server: SandboxServer, database_url: str, tmp_path: Path
) -> None:
    """4 processes × 125 calls on PostgreSQL, 2 × 125 on SQLite: 1 refresh, every call a 200 and
    not a single 401 (the expiry is known, so nobody sends the dead token)."""
    processes = 2 if database_url.startswith("sqlite") else 4
    config = await connect_owner(sandbox_server, database_url, stored_expiry=True)
    account_id = config["account_id"]
    results = await run_workers(config, processes=processes)

    assert calls_by_401s(results) == {0: processes * CALLS}
    assert [r.errors for r in results] == [[]] * processes
    assert sum(r.ok for r in results) == processes * CALLS
    refreshes = sandbox_server.refreshes(account_id)
    assert [(r["status"], r["fault"]) for r in refreshes] == [(200, "slow")], refreshes
    calls = api_calls(sandbox_server, account_id)
    assert [c["status"] for c in calls].count(200) == processes * CALLS
    assert len(calls) == processes * CALLS, "no 401s, no retries: every call went out once"


async def test_refused_token_is_refreshed_once_across_processes(
    sandbox_server: SandboxServer, database_templates: DatabaseTemplates, tmp_path: Path
) -> None:
    """The same on SQLite when only amoCRM knows the token is dead (expired early or revoked):
    every process learns it from a 401, and still only one refreshes. No call sees two 401s."""
    database_url = database_templates.sqlite_copy(tmp_path / "amobridge.db")
    config = await connect_owner(sandbox_server, database_url, stored_expiry=False)
    account_id = config["account_id"]
    results = await run_workers(config, processes=2)

    # Each call is refused at most once: a second 401 after the refresh means it sent a token
    # another process had already spent (or the refresh it waited for never reached it).
    per_call = calls_by_401s(results)
    assert max(per_call) <= 1, f"calls by the number of 401s they got: {per_call}"
    assert [r.errors for r in results] == [[], []]
    assert sum(r.ok for r in results) == 2 * CALLS
    refreshes = sandbox_server.refreshes(account_id)
    assert [(r["status"], r["fault"]) for r in refreshes] == [(200, "slow")], refreshes
    statuses = [c["status"] for c in api_calls(sandbox_server, account_id)]
    assert statuses.count(200) == 2 * CALLS
    assert set(statuses) == {200, 401}
    # The sandbox's log and the workers agree on every 401 (none is lost or counted twice).
    assert statuses.count(401) == sum(n * count for n, count in per_call.items())
