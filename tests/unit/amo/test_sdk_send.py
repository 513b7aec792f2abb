"""``AmoClient.send``: one raw request through the usual pipeline, amoCRM's reply returned whatever
its status; reads retried as the policy says, writes only when nothing can have reached amoCRM."""

from __future__ import annotations

import httpx
import pytest

from amobridge.amo.auth import StaticTokenProvider
from amobridge.amo.client import AmoClient
from amobridge.amo.errors import (
    AmoBanned,
    AmoConnectionError,
    AmoRateLimited,
    AmoReauthRequired,
    AmoTimeout,
)
from amobridge.amo.ratelimit import InMemoryRateLimiter
from amobridge.amo.retry import RetryPolicy
from sdk_support import TOKEN, Recorder, problem

BAN_HTML = "<html><head><title>403 Forbidden</title></head><body>nginx</body></html>"


class Script:
    """Answers from a list (the last repeats); an exception in it is raised instead."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer


class Provider:
    def __init__(self, *, dead: bool = False) -> None:
        self.generation = 0
        self.dead = dead

    async def get_token(self) -> str:
        return f"tok-{self.generation}"

    async def refresh(self, stale_token: str) -> str:
        if self.dead:
            raise AmoReauthRequired("grant revoked: connect again", status=401)
        self.generation += 1
        return f"tok-{self.generation}"


def instant_limiter() -> InMemoryRateLimiter:
    now = [0.0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    return InMemoryRateLimiter(clock=lambda: now[0], sleep=sleep)


def client(script: Script, provider: object = None, **options: object) -> AmoClient:
    return AmoClient(
        "acme",
        token_provider=provider or StaticTokenProvider(TOKEN),  # type: ignore[arg-type]
        transport=httpx.MockTransport(script),
        retry=RetryPolicy(sleep=Recorder(), max_attempts=3),
        rate_limiter=instant_limiter(),
        **options,  # type: ignore[arg-type]
    )


async def test_bytes_headers_and_query_go_out_and_the_reply_comes_back_as_is() -> None:
    script = Script(httpx.Response(400, json={"title": "Bad Request"}, headers={"x-a": "1"}))
    async with client(script) as amo:
        reply = await amo.send(
            "POST",
            "leads",
            params=[("with", "contacts")],
            content=b'[{"name": "x"}]',
            headers={
                "Content-Type": "application/json",
                "Authorization": "Bearer caller-token",
                "Cookie": "session=caller",
                "Host": "evil.example",
            },
        )
    assert reply.response.status_code == 400
    assert reply.response.json() == {"title": "Bad Request"}
    assert reply.attempts == 1
    sent = script.requests[0]
    assert str(sent.url) == "https://acme.amocrm.ru/api/v4/leads?with=contacts"
    assert sent.content == b'[{"name": "x"}]'
    assert sent.headers["content-type"] == "application/json"
    assert sent.headers["authorization"] == f"Bearer {TOKEN}"
    assert sent.headers["host"] == "acme.amocrm.ru"
    assert "cookie" not in sent.headers


async def test_a_read_is_retried_through_5xx_and_returns_the_last_reply() -> None:
    script = Script(problem(500, "boom"), httpx.Response(200, json={"id": 1}))
    async with client(script) as amo:
        reply = await amo.send("GET", "account")
    assert (reply.response.status_code, reply.attempts) == (200, 2)

    script = Script(problem(503, "down"))
    async with client(script) as amo:
        reply = await amo.send("GET", "account")
    assert (reply.response.status_code, reply.attempts) == (503, 3)  # the policy's 3 attempts


@pytest.mark.parametrize("method", ["POST", "PATCH", "PUT", "DELETE"])
async def test_a_write_is_never_repeated_after_a_5xx_a_429_or_a_lost_reply(method: str) -> None:
    for answer in (problem(500, "boom"), problem(429, "slow down")):
        script = Script(answer, httpx.Response(200, json={}))
        async with client(script) as amo:
            reply = await amo.send(method, "leads", content=b"[]")
        assert reply.response.status_code == answer.status_code
        assert len(script.requests) == 1
    script = Script(httpx.ReadTimeout("lost"), httpx.Response(200, json={}))
    async with client(script) as amo:
        with pytest.raises(AmoTimeout) as raised:
            await amo.send(method, "leads", content=b"[]")
    assert raised.value.attempts == 1
    assert len(script.requests) == 1


async def test_a_write_that_never_connected_is_sent_again() -> None:
    script = Script(httpx.ConnectError("refused"), httpx.Response(200, json={"ok": 1}))
    async with client(script) as amo:
        reply = await amo.send("POST", "leads", content=b"[]")
    assert (reply.response.status_code, reply.attempts) == (200, 2)


async def test_a_read_whose_connection_keeps_failing_raises_with_its_attempts() -> None:
    script = Script(httpx.ConnectError("refused"))
    async with client(script) as amo:
        with pytest.raises(AmoConnectionError) as raised:
            await amo.send("GET", "account")
    assert raised.value.attempts == 3


async def test_a_401_refreshes_once_and_sends_again_even_a_write() -> None:
    provider = Provider()
    script = Script(problem(401, "expired"), httpx.Response(200, json={"ok": 1}))
    async with client(script, provider) as amo:
        reply = await amo.send("POST", "leads", content=b"[]")
    assert (reply.response.status_code, reply.attempts) == (200, 2)
    assert [r.headers["authorization"] for r in script.requests] == [
        "Bearer tok-0",
        "Bearer tok-1",
    ]
    script = Script(problem(401, "expired"))
    async with client(script, Provider(dead=True)) as amo:
        with pytest.raises(AmoReauthRequired):
            await amo.send("GET", "account")
    assert len(script.requests) == 1


async def test_a_ban_reply_is_returned_and_opens_the_breaker() -> None:
    script = Script(httpx.Response(403, text=BAN_HTML, headers={"content-type": "text/html"}))
    async with client(script) as amo:
        reply = await amo.send("GET", "account")
        assert reply.response.status_code == 403
        with pytest.raises(AmoBanned):
            await amo.send("GET", "account")
        with pytest.raises(AmoBanned):
            await amo.request_json("GET", "account")  # the SDK's own calls share the breaker
    assert len(script.requests) == 1


async def test_a_long_wait_asked_by_a_429_blocks_the_next_call_without_sending_it() -> None:
    script = Script(problem(429, "slow down", retry_after=3600))
    async with client(script) as amo:
        reply = await amo.send("GET", "account")
        assert reply.response.status_code == 429
        with pytest.raises(AmoRateLimited) as raised:
            await amo.send("POST", "leads", content=b"[]")
    assert raised.value.retry_after is not None
    assert raised.value.retry_after > 3000
    assert len(script.requests) == 1


async def test_an_unknown_retry_mode_is_refused() -> None:
    async with client(Script(httpx.Response(200))) as amo:
        with pytest.raises(ValueError, match="retry"):
            await amo.send("GET", "account", retry="always")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="not an API path"):
            await amo.send("GET", "../oauth2/access_token")
