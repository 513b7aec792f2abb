"""How AmoClient talks to its rate limiter: every ``acquire`` is paired with exactly one
``release`` when that attempt ends, the token is taken after admission, and 429s pause the key only
when amoCRM named a wait."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from amobridge.amo.auth import StaticTokenProvider
from amobridge.amo.client import AmoClient
from amobridge.amo.errors import (
    AmoAuthError,
    AmoConnectionError,
    AmoNotFound,
    AmoRateLimited,
    AmoServerError,
    AmoTimeout,
)
from amobridge.amo.retry import RetryPolicy
from sdk_support import TOKEN, Recorder, problem

KEY = "integration-1@acme.amocrm.ru"


class Server:
    """A scripted amoCRM: answers from a list (the last one repeats) and records requests."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers) or [httpx.Response(200, json={"ok": True})]
        self.requests: list[httpx.Request] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
        if callable(answer):
            result = answer(request)
            if asyncio.iscoroutine(result):
                result = await result
            return result  # type: ignore[no-any-return]
        return answer  # type: ignore[no-any-return]


class FakeProvider:
    """Hands out tok-0, tok-1, … and records refreshes."""

    integration_id = "integration-1"

    def __init__(self) -> None:
        self.generation = 0
        self.refreshes: list[str] = []

    async def get_token(self) -> str:
        return f"tok-{self.generation}"

    async def refresh(self, stale_token: str) -> str:
        self.refreshes.append(stale_token)
        self.generation += 1
        return f"tok-{self.generation}"


class RecordingLimiter:
    """Admits everything at once and records the calls, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.pauses: list[float] = []
        self.on_acquire: list[Any] = []

    async def acquire(self, key: str) -> None:
        self.calls.append(("acquire", key))
        for hook in self.on_acquire:
            await hook()

    async def release(self, key: str) -> None:
        self.calls.append(("release", key))

    async def pause(self, key: str, seconds: float) -> None:
        self.pauses.append(seconds)

    def assert_paired(self, attempts: int) -> None:
        """``attempts`` acquire/release pairs, each release right after its acquire."""
        assert self.calls == [("acquire", KEY), ("release", KEY)] * attempts


class OlderLimiter:
    """A third party's limiter from before ``release`` existed."""

    def __init__(self) -> None:
        self.acquired = 0

    async def acquire(self, key: str) -> None:
        self.acquired += 1

    async def pause(self, key: str, seconds: float) -> None:
        return None


def client(server: Server, limiter: Any, *, provider: Any = None, **kw: Any) -> AmoClient:
    kw.setdefault("retry", RetryPolicy(sleep=Recorder(), max_attempts=2))
    return AmoClient(
        "acme",
        token_provider=provider or FakeProvider(),
        transport=httpx.MockTransport(server),
        rate_limiter=limiter,
        **kw,
    )


async def test_2xx_acquires_and_releases_once() -> None:
    limiter = RecordingLimiter()
    async with client(Server(httpx.Response(200, json={})), limiter) as amo:
        await amo.request_json("GET", "leads")
    limiter.assert_paired(1)


async def test_4xx_releases_before_raising() -> None:
    limiter = RecordingLimiter()
    async with client(Server(problem(404, "Not found")), limiter) as amo:
        with pytest.raises(AmoNotFound):
            await amo.request_json("GET", "leads/1")
    limiter.assert_paired(1)


async def test_each_429_and_5xx_attempt_is_paired() -> None:
    limiter = RecordingLimiter()
    server = Server(problem(429, "Too many"), problem(500, "oops"), httpx.Response(200, json={}))
    policy = RetryPolicy(sleep=Recorder(), max_attempts=3)
    async with client(server, limiter, retry=policy) as amo:
        await amo.request_json("GET", "leads")
    limiter.assert_paired(3)


async def test_5xx_exhausting_retries_is_paired() -> None:
    limiter = RecordingLimiter()
    async with client(Server(problem(502, "bad gateway")), limiter) as amo:
        with pytest.raises(AmoServerError):
            await amo.request_json("GET", "leads")
    limiter.assert_paired(2)


async def test_transport_error_is_paired() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    limiter = RecordingLimiter()
    async with client(Server(refuse), limiter) as amo:
        with pytest.raises(AmoConnectionError):
            await amo.request_json("GET", "leads")
    limiter.assert_paired(2)


async def test_timeout_is_paired() -> None:
    never = asyncio.Event()

    async def hang(request: httpx.Request) -> httpx.Response:
        await never.wait()
        raise AssertionError("unreachable")

    limiter = RecordingLimiter()
    async with client(Server(hang), limiter, attempt_timeout=0.01) as amo:
        with pytest.raises(AmoTimeout):
            await amo.request_json("GET", "leads")
    limiter.assert_paired(2)


async def test_cancellation_mid_request_still_releases_once() -> None:
    arrived = asyncio.Event()
    never = asyncio.Event()

    async def hang(request: httpx.Request) -> httpx.Response:
        arrived.set()
        await never.wait()
        raise AssertionError("unreachable")

    class SlowRelease(RecordingLimiter):
        """Its release yields, so a second cancellation can land inside it."""

        async def release(self, key: str) -> None:
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            await super().release(key)

    limiter = SlowRelease()
    async with client(Server(hang), limiter) as amo:
        call = asyncio.create_task(amo.request_json("GET", "leads"))
        await arrived.wait()
        call.cancel()
        await asyncio.sleep(0)
        call.cancel()  # cancelled again while releasing: the shielded release still completes
        with pytest.raises(asyncio.CancelledError):
            await call
        for _ in range(5):
            await asyncio.sleep(0)
    limiter.assert_paired(1)


async def test_cancellation_while_queued_releases_nothing() -> None:
    gate = asyncio.Event()
    limiter = RecordingLimiter()

    async def queue() -> None:
        await gate.wait()

    limiter.on_acquire.append(queue)
    async with client(Server(), limiter) as amo:
        call = asyncio.create_task(amo.request_json("GET", "leads"))
        await asyncio.sleep(0)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    assert limiter.calls == [("acquire", KEY)]  # never admitted: no slot to give back


async def test_failing_token_provider_releases_the_slot() -> None:
    class Broken(FakeProvider):
        async def get_token(self) -> str:
            raise AmoConnectionError("token store unreachable")

    limiter = RecordingLimiter()
    async with client(Server(), limiter, provider=Broken()) as amo:
        with pytest.raises(AmoConnectionError):
            await amo.request_json("GET", "leads")
    limiter.assert_paired(1)


async def test_401_refresh_retry_is_a_second_pair() -> None:
    provider = FakeProvider()

    def answer(request: httpx.Request) -> httpx.Response:
        if request.headers["authorization"] == "Bearer tok-0":
            return problem(401, "Invalid user name or password")
        return httpx.Response(200, json={})

    limiter = RecordingLimiter()
    async with client(Server(answer), limiter, provider=provider) as amo:
        await amo.request_json("GET", "leads")
    limiter.assert_paired(2)
    assert provider.refreshes == ["tok-0"]


async def test_401_twice_is_paired_and_raised() -> None:
    limiter = RecordingLimiter()
    server = Server(problem(401, "Invalid user name or password"))
    async with client(server, limiter) as amo:
        with pytest.raises(AmoAuthError):
            await amo.request_json("GET", "leads")
    limiter.assert_paired(2)


async def test_a_failing_release_does_not_fail_the_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Flaky(RecordingLimiter):
        async def release(self, key: str) -> None:
            await super().release(key)
            raise ConnectionError("limiter database gone")

    limiter = Flaky()
    async with client(Server(httpx.Response(200, json={"ok": 1})), limiter) as amo:
        assert await amo.request_json("GET", "leads") == {"ok": 1}
    limiter.assert_paired(1)
    assert "failed to release" in caplog.text


async def test_limiter_without_release_is_still_used() -> None:
    limiter = OlderLimiter()
    server = Server(problem(500, "oops"), httpx.Response(200, json={}))
    async with client(server, limiter) as amo:
        await amo.request_json("GET", "leads")
    assert limiter.acquired == 2


async def test_token_is_taken_after_admission() -> None:
    """A request queued at the limiter while the token changed goes out with the new token."""
    provider = FakeProvider()
    limiter = RecordingLimiter()

    async def token_changes_while_queued() -> None:
        provider.generation = 7

    limiter.on_acquire.append(token_changes_while_queued)
    server = Server(httpx.Response(200, json={}))
    async with client(server, limiter, provider=provider) as amo:
        await amo.request_json("GET", "leads")
    assert server.requests[0].headers["authorization"] == "Bearer tok-7"


# --- 429: pause the key only when amoCRM named a wait ---------------------------------------------


async def test_429_with_body_hint_pauses_the_key_for_the_hint() -> None:
    limiter = RecordingLimiter()
    sleep = Recorder()
    server = Server(problem(429, "Too many", retry_after=2), httpx.Response(200, json={}))
    async with client(server, limiter, retry=RetryPolicy(sleep=sleep)) as amo:
        await amo.request_json("GET", "leads")
    assert limiter.pauses == [2.0]
    assert sleep.waits == [2.0]


async def test_429_with_retry_after_header_pauses_the_key() -> None:
    limiter = RecordingLimiter()
    sleep = Recorder()
    server = Server(
        httpx.Response(429, text="slow down", headers={"Retry-After": "3"}),
        httpx.Response(200, json={}),
    )
    async with client(server, limiter, retry=RetryPolicy(sleep=sleep)) as amo:
        await amo.request_json("GET", "leads")
    assert limiter.pauses == [3.0]
    assert sleep.waits == [3.0]


async def test_429_without_hint_backs_off_only_that_request() -> None:
    limiter = RecordingLimiter()
    sleep = Recorder()
    policy = RetryPolicy(sleep=sleep, base=0.5, jitter=False)
    server = Server(problem(429, "Too many"), httpx.Response(200, json={}))
    async with client(server, limiter, retry=policy) as amo:
        await amo.request_json("GET", "leads")
    assert limiter.pauses == []  # other callers of the connection are not stalled
    assert sleep.waits == [0.5]  # this request waits the policy's backoff


async def test_429_hint_above_the_cap_raises_without_pausing() -> None:
    limiter = RecordingLimiter()
    server = Server(problem(429, "Too many", retry_after=300))
    policy = RetryPolicy(sleep=Recorder(), max_retry_after=60)
    async with client(server, limiter, retry=policy) as amo:
        with pytest.raises(AmoRateLimited):
            await amo.request_json("GET", "leads")
        with pytest.raises(AmoRateLimited, match="was not sent"):
            await amo.request_json("GET", "contacts")
    assert len(server.requests) == 1
    limiter.assert_paired(1)


async def test_static_token_provider_works_with_the_recording_limiter() -> None:
    limiter = RecordingLimiter()
    server = Server(httpx.Response(200, json={}))
    async with client(server, limiter, provider=StaticTokenProvider(TOKEN)) as amo:
        await amo.request_json("GET", "leads")
    assert server.requests[0].headers["authorization"] == f"Bearer {TOKEN}"
