"""The pipeline under injected faults: every read succeeds, no create is duplicated.

Injected faults: 5xx, 504, timeouts, 429 bursts; the danger is a duplicate, a retried create
whose reply got lost. A create whose outcome is unknown raises
AmoAmbiguousWrite with its request_ids instead of being sent again.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import httpx
import pytest

from amobridge.amo import (
    AmoAmbiguousWrite,
    AmoClient,
    InMemoryRateLimiter,
    RetryPolicy,
    StaticTokenProvider,
)
from amobridge.sandbox import SandboxConfig
from sandbox_support import Connected

READ_FAULTS: list[dict[str, Any]] = [
    {"kind": "rate_limit", "count": 5, "path_prefix": "/api/v4"},  # a burst of 429s first
    {"kind": "error", "status": 503, "probability": 0.1, "path_prefix": "/api/v4"},
    {"kind": "error", "status": 502, "probability": 0.05, "path_prefix": "/api/v4"},
    {"kind": "timeout", "delay": 5, "probability": 0.05, "path_prefix": "/api/v4"},
    {"kind": "rate_limit", "probability": 0.05, "path_prefix": "/api/v4"},
    {"kind": "drop", "probability": 0.03, "path_prefix": "/api/v4"},
]
WRITE_FAULTS: list[dict[str, Any]] = [
    # the request is served, then the reply fails: the lead exists, the client cannot know
    {"kind": "error", "status": 500, "phase": "after", "method": "POST", "count": 3},
    {"kind": "error", "status": 500, "phase": "after", "method": "POST", "probability": 0.1},
    {"kind": "timeout", "delay": 5, "phase": "after", "method": "POST", "probability": 0.05},
    {"kind": "drop", "phase": "after", "method": "POST", "probability": 0.03},
]


@pytest.fixture
def sandbox_config() -> SandboxConfig:
    # Injected 429s count as violations; a real ban is tested elsewhere, here it would only end
    # the run. The sandbox's limiter is off: the faults are the only 429s.
    return SandboxConfig(rate_limit_enabled=False, ban_after_violations=100_000)


async def no_sleep(seconds: float) -> None:
    return None


def instant_limiter() -> InMemoryRateLimiter:
    """Pauses after a 429 pass on a fake clock: the test is about retries, not pacing."""
    now = [0.0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    return InMemoryRateLimiter(rate=100_000, clock=lambda: now[0], sleep=sleep)


@pytest.fixture
async def amo(acme: Connected, sandbox_app: Any) -> Any:
    client = AmoClient(
        acme.host,
        token_provider=StaticTokenProvider(acme.tokens["access_token"]),
        transport=httpx.ASGITransport(app=sandbox_app),
        rate_limiter=instant_limiter(),
        retry=RetryPolicy(max_attempts=12, max_total_seconds=120, sleep=no_sleep),
        attempt_timeout=0.2,  # the injected timeouts hold a request 5 s
    )
    async with client:
        yield client


async def test_every_read_succeeds_under_faults(amo: AmoClient, control: httpx.AsyncClient) -> None:
    created = await amo.request_json(
        "POST", "leads", json=[{"name": f"read {i}"} for i in range(20)], retry="create"
    )
    ids = [lead["id"] for lead in created["_embedded"]["leads"]]
    reply = await control.post("/_sandbox/faults", json=READ_FAULTS)
    assert reply.status_code == 201
    await control.delete("/_sandbox/requests")

    reads = [amo.leads.get(lead_id) for lead_id in ids * 4]
    reads += [amo.leads.list(limit=5, page=page) for page in (1, 2, 3, 4)] * 5
    results = await asyncio.gather(*reads)

    assert all(result is not None for result in results)
    assert sorted(lead.id for lead in results[:80]) == sorted(ids * 4)  # type: ignore[union-attr]
    log = (await control.get("/_sandbox/requests", params={"path_prefix": "/api/v4"})).json()
    faults = Counter(r["fault"] for r in log if r["fault"])
    assert faults["rate_limit"] >= 5  # the burst happened …
    assert faults["error"] > 0  # … and 5xx did: the reads survived them
    assert len(log) > len(reads)


async def test_creates_are_never_duplicated_under_faults(
    amo: AmoClient, control: httpx.AsyncClient
) -> None:
    await control.post("/_sandbox/faults", json=READ_FAULTS + WRITE_FAULTS)
    await control.delete("/_sandbox/requests")

    ambiguous_ids: dict[str, list[str]] = {}

    async def create(i: int) -> tuple[str, str]:
        name = f"fault lead {i}"
        try:
            await amo.request_json(
                "POST", "leads", json=[{"name": name, "request_id": f"rid-{i}"}], retry="create"
            )
        except AmoAmbiguousWrite as exc:
            ambiguous_ids[f"rid-{i}"] = exc.request_ids
            return name, "ambiguous"
        return name, "created"

    outcomes = dict(await asyncio.gather(*(create(i) for i in range(60))))
    assert all(ids == [rid] for rid, ids in ambiguous_ids.items())  # what to reconcile by

    await control.delete("/_sandbox/faults")
    names = Counter([lead.name async for lead in amo.leads.iterate()])
    assert max(names.values()) == 1  # no lead was created twice
    for name, outcome in outcomes.items():
        if outcome == "created":
            assert names[name] == 1
        else:
            assert names[name] in (0, 1)  # to reconcile by request_id / marker
    assert "ambiguous" in outcomes.values()  # the count-3 rule guarantees some
    log = (await control.get("/_sandbox/requests", params={"method": "POST"})).json()
    posts = [r for r in log if r["path"] == "/api/v4/leads"]
    # each create reached amoCRM's handler at most once: only 429s (never processed) were re-sent
    assert sum(1 for r in posts if r["status"] != 429) == 60
