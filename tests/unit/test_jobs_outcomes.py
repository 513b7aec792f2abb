"""What an error raised by a job handler makes of its jobs, and the backoff between attempts."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from amobridge.amo.errors import (
    AmoAmbiguousWrite,
    AmoAuthError,
    AmoBanned,
    AmoConnectionError,
    AmoForbidden,
    AmoRateLimited,
    AmoReauthRequired,
    AmoServerError,
    AmoValidationError,
)
from amobridge.connect.clients import ConnectionDisconnected
from amobridge.jobs import JobHandlers, outcome_for
from amobridge.jobs.handlers import describe_error
from amobridge.jobs.worker import Backoff
from amobridge.storage.guard import StorageUnavailable


@pytest.mark.parametrize(
    ("error", "kind", "reason"),
    [
        (AmoReauthRequired("revoked", status=400), "paused", "reauth_required"),
        (ConnectionDisconnected("c1"), "paused", "disconnected"),
        (AmoBanned("blocked", status=403, retry_at=1_900_000_000), "paused", "banned"),
        (AmoRateLimited("429", status=429, retry_after=3), "defer", None),
        (AmoServerError("502", status=502), "retry", None),
        (AmoConnectionError("reset"), "retry", None),
        (
            AmoAmbiguousWrite(method="POST", path="/leads", request_ids=["a"], reason="timeout"),
            "retry",
            None,
        ),
        (StorageUnavailable("read-only"), "retry", None),
        (TimeoutError(), "retry", None),
        (AmoAuthError("401 after a refresh", status=401), "retry", None),
        (AmoValidationError("bad", status=400), "failed", None),
        (AmoForbidden("no rights", status=403), "failed", None),
        (KeyError("lead_id"), "failed", None),
    ],
)
def test_each_error_has_its_outcome(error: BaseException, kind: str, reason: str | None) -> None:
    outcome = outcome_for(error)
    assert (outcome.kind, outcome.reason) == (kind, reason)
    assert outcome.error is not None


def test_a_ban_pauses_until_it_ends_and_a_429_waits_as_told() -> None:
    banned = outcome_for(AmoBanned("blocked", status=403, retry_at=1_900_000_000))
    assert banned.until == datetime.fromtimestamp(1_900_000_000, UTC)
    assert outcome_for(AmoRateLimited("429", status=429, retry_after=3)).delay == 3


def test_errors_are_masked_and_cut() -> None:
    token = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlc2lnbmF0dXJl"
    text = describe_error(RuntimeError(f"Bearer {token} refused " + "x" * 5000))
    assert token not in text
    assert text.startswith("RuntimeError: ")
    assert len(text) <= 2001


def test_backoff_is_capped_exponential_with_jitter() -> None:
    low, high = Backoff(5, 60, rng=lambda: 0.0), Backoff(5, 60, rng=lambda: 1.0)
    assert [low.delay(n) for n in (1, 2, 3, 4, 5, 6)] == [2.5, 5, 10, 20, 30, 30]
    assert [high.delay(n) for n in (1, 2, 3, 4, 5, 6)] == [5, 10, 20, 40, 60, 60]
    assert high.delay(10_000) == 60


def test_a_kind_has_one_handler() -> None:
    handlers = JobHandlers()

    async def handle(context: object, jobs: object) -> None: ...

    handlers.register("sync.push_lead", handle, batch_size=50)  # type: ignore[arg-type]
    assert handlers.batch_sizes() == {"sync.push_lead": 50}
    with pytest.raises(ValueError, match="already has a handler"):
        handlers.register("sync.push_lead", handle)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size"):
        handlers.register("other", handle, batch_size=0)  # type: ignore[arg-type]
