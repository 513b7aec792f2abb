"""AmoClient's pipeline against httpx.MockTransport: headers, hosts, retries, errors, breaker."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from amobridge import __version__
from amobridge.amo.auth import StaticTokenProvider
from amobridge.amo.client import AmoClient
from amobridge.amo.errors import (
    ACCOUNT_NOT_FOUND_MESSAGE,
    AmoAccountNotFound,
    AmoAmbiguousWrite,
    AmoAuthError,
    AmoBanned,
    AmoConnectionError,
    AmoForbidden,
    AmoNotFound,
    AmoPaymentRequired,
    AmoRateLimited,
    AmoReauthRequired,
    AmoServerError,
    AmoTimeout,
    AmoValidationError,
)
from amobridge.amo.ratelimit import InMemoryRateLimiter
from amobridge.amo.retry import BanBreaker, RetryPolicy
from sdk_support import TOKEN, Recorder, problem

BAN_HTML = "<html><head><title>403 Forbidden</title></head><body>nginx</body></html>"


class Server:
    """A scripted amoCRM: answers from a list (the last one repeats) and records requests."""

    def __init__(self, *answers: httpx.Response | Callable[[httpx.Request], Any]) -> None:
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
        return answer


class FakeProvider:
    """A token provider that hands out tok-0, tok-1, … and counts refreshes."""

    integration_id = "integration-1"

    def __init__(self, *, dead: bool = False) -> None:
        self.generation = 0
        self.refreshes: list[str] = []
        self.dead = dead

    async def get_token(self) -> str:
        return f"tok-{self.generation}"

    async def refresh(self, stale_token: str) -> str:
        self.refreshes.append(stale_token)
        if self.dead:
            raise AmoReauthRequired("grant revoked: connect again", status=401)
        self.generation += 1
        return f"tok-{self.generation}"


def instant_limiter() -> InMemoryRateLimiter:
    """A limiter on a fake clock: its waits (pauses after 429s) pass instantly."""
    now = [0.0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    return InMemoryRateLimiter(clock=lambda: now[0], sleep=sleep)


def make_client(
    server: Server, *, provider: Any = None, retry: RetryPolicy | None = None, **kw: Any
) -> AmoClient:
    return AmoClient(
        "acme",
        token_provider=provider or StaticTokenProvider(TOKEN),
        transport=httpx.MockTransport(server),
        retry=retry or RetryPolicy(sleep=Recorder(), max_attempts=4),
        rate_limiter=instant_limiter(),
        **kw,
    )


async def test_request_carries_bearer_user_agent_and_account_host() -> None:
    server = Server(httpx.Response(200, json={"id": 1}))
    async with make_client(server) as amo:
        assert await amo.request_json("GET", "account", params={"with": "users"}) == {"id": 1}
    request = server.requests[0]
    assert str(request.url) == "https://acme.amocrm.ru/api/v4/account?with=users"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    agent = request.headers["user-agent"]
    assert agent.startswith(f"amobridge/{__version__}")


async def test_base_url_override_keeps_account_in_host_header() -> None:
    server = Server(httpx.Response(204))
    async with make_client(server, base_url="http://127.0.0.1:8010/") as amo:
        assert await amo.request_json("GET", "/leads") is None
    request = server.requests[0]
    assert str(request.url) == "http://127.0.0.1:8010/api/v4/leads"
    assert request.headers["host"] == "acme.amocrm.ru"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("leads", "https://acme.amocrm.ru/api/v4/leads"),
        ("/api/v4/leads/5", "https://acme.amocrm.ru/api/v4/leads/5"),
        ("leads?page=2&limit=50", "https://acme.amocrm.ru/api/v4/leads?page=2&limit=50"),
        # a _links href pointing elsewhere never takes the token off the account host
        ("https://evil.example/api/v4/leads?page=3", "https://acme.amocrm.ru/api/v4/leads?page=3"),
    ],
)
async def test_paths_and_hrefs_resolve_on_the_account_host(path: str, expected: str) -> None:
    server = Server(httpx.Response(200, json={}))
    async with make_client(server) as amo:
        await amo.request_json("GET", path)
    assert str(server.requests[0].url) == expected


async def test_bad_path_is_refused() -> None:
    async with make_client(Server()) as amo:
        with pytest.raises(ValueError, match="not an API path"):
            await amo.request_json("GET", "../oauth2/access_token")


async def test_json_body_and_bool_params() -> None:
    server = Server(httpx.Response(200, json={"_embedded": {"leads": [{"id": 7}]}}))
    async with make_client(server) as amo:
        await amo.request_json(
            "POST",
            "leads",
            json=[{"name": "Лид"}],
            params={"x": True, "skip": None},
            retry="create",
        )
    request = server.requests[0]
    assert json.loads(request.content) == [{"name": "Лид"}]
    assert request.url.query == b"x=true"


async def test_5xx_is_retried_for_reads_with_backoff() -> None:
    sleep = Recorder()
    server = Server(problem(502, "bad gateway"), problem(500, "oops"), httpx.Response(200, json={}))
    async with make_client(server, retry=RetryPolicy(sleep=sleep, base=1.0, cap=8.0)) as amo:
        assert await amo.request_json("GET", "leads") == {}
    assert len(server.requests) == 3
    assert len(sleep.waits) == 2
    assert 0 <= sleep.waits[0] <= 1.0
    assert 0 <= sleep.waits[1] <= 2.0


async def test_retries_are_bounded_by_attempts() -> None:
    server = Server(problem(503, "down"))
    async with make_client(server, retry=RetryPolicy(sleep=Recorder(), max_attempts=3)) as amo:
        with pytest.raises(AmoServerError) as caught:
            await amo.request_json("GET", "leads")
    assert len(server.requests) == 3
    assert caught.value.status == 503
    assert "try again later" in str(caught.value)


async def test_retries_are_bounded_by_total_time() -> None:
    server = Server(problem(500, "oops"))
    policy = RetryPolicy(
        sleep=Recorder(), max_attempts=50, base=10.0, cap=10.0, jitter=False, max_total_seconds=25
    )
    async with make_client(server, retry=policy) as amo:
        with pytest.raises(AmoServerError):
            await amo.request_json("GET", "leads")
    assert len(server.requests) == 3  # waits of 10 + 10 fit in 25 s, a third would not


@pytest.mark.parametrize(
    ("response", "error"),
    [
        (
            httpx.Response(
                400,
                json={
                    "validation-errors": [
                        {
                            "request_id": "0",
                            "errors": [
                                {"code": "NotSupportedChoice", "path": "price", "detail": "bad"}
                            ],
                        }
                    ],
                    "title": "Bad Request",
                    "status": 400,
                    "detail": "Request validation failed",
                },
            ),
            AmoValidationError,
        ),
        (problem(402, "Payment required"), AmoPaymentRequired),
        (problem(403, "Access denied"), AmoForbidden),
        (problem(404, "Cannot GET /api/v4/nope"), AmoNotFound),
        (problem(422, "Limit 250 per page"), AmoValidationError),
    ],
)
async def test_client_errors_are_never_retried(response: httpx.Response, error: type) -> None:
    server = Server(response)
    async with make_client(server) as amo:
        with pytest.raises(error):
            await amo.request_json("POST", "leads", json=[{}])
    assert len(server.requests) == 1


async def test_validation_error_lists_field_errors() -> None:
    body = {
        "validation-errors": [
            {
                "request_id": "3",
                "errors": [
                    {
                        "code": "NotSupportedChoice",
                        "path": "custom_fields_values.0.field_id",
                        "detail": "x",
                    }
                ],
            }
        ],
        "title": "Bad Request",
        "status": 400,
        "detail": "Request validation failed",
    }
    async with make_client(Server(httpx.Response(400, json=body))) as amo:
        with pytest.raises(AmoValidationError) as caught:
            await amo.request_json("POST", "leads", json=[{}])
    (field,) = caught.value.errors
    assert (field.request_id, field.code, field.path) == (
        "3",
        "NotSupportedChoice",
        "custom_fields_values.0.field_id",
    )
    assert "custom_fields_values.0.field_id" in str(caught.value)
    assert "send it again" in str(caught.value)


async def test_429_waits_the_body_hint_and_pauses_the_limiter() -> None:
    sleep = Recorder()
    server = Server(problem(429, "Too many", retry_after=2), httpx.Response(200, json={}))
    clock = [0.0]

    async def limiter_sleep(seconds: float) -> None:
        clock[0] += seconds

    limiter = InMemoryRateLimiter(rate=1000, clock=lambda: clock[0], sleep=limiter_sleep)
    client = AmoClient(
        "acme",
        token_provider=StaticTokenProvider(TOKEN),
        transport=httpx.MockTransport(server),
        retry=RetryPolicy(sleep=sleep),
        rate_limiter=limiter,
    )
    async with client as amo:
        await amo.request_json("GET", "leads")
    assert sleep.waits == [2.0]
    assert clock[0] >= 2.0  # the limiter held the key for the hinted time too


async def test_429_retry_after_header_is_honoured() -> None:
    sleep = Recorder()
    server = Server(
        httpx.Response(429, text="slow down", headers={"Retry-After": "3"}),
        httpx.Response(200, json={}),
    )
    async with make_client(server, retry=RetryPolicy(sleep=sleep)) as amo:
        await amo.request_json("GET", "leads")
    assert sleep.waits == [3.0]


async def test_429_hint_too_long_raises_and_refuses_further_calls() -> None:
    server = Server(problem(429, "Too many", retry_after=300))
    async with make_client(server, retry=RetryPolicy(sleep=Recorder(), max_retry_after=60)) as amo:
        with pytest.raises(AmoRateLimited) as caught:
            await amo.request_json("GET", "leads")
        assert caught.value.retry_after == 300
        with pytest.raises(AmoRateLimited, match="was not sent"):
            await amo.request_json("GET", "contacts")
    assert len(server.requests) == 1


async def test_create_is_not_resent_after_5xx() -> None:
    server = Server(problem(500, "oops"))
    async with make_client(server) as amo:
        with pytest.raises(AmoAmbiguousWrite) as caught:
            await amo.request_json(
                "POST",
                "leads",
                json=[{"name": "a", "request_id": "k1"}, {"name": "b", "request_id": "k2"}],
                retry="create",
            )
    assert len(server.requests) == 1
    error = caught.value
    assert (error.method, error.path, error.request_ids) == ("POST", "/api/v4/leads", ["k1", "k2"])
    assert isinstance(error.__cause__, AmoServerError)
    assert "k1, k2" in str(error)
    assert "not re-sent" in str(error)


async def test_create_is_not_resent_after_read_timeout() -> None:
    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("read timed out", request=request)

    server = Server(timeout)
    async with make_client(server) as amo:
        with pytest.raises(AmoAmbiguousWrite) as caught:
            await amo.request_json("POST", "leads", json=[{"request_id": "r"}], retry="create")
    assert len(server.requests) == 1
    assert isinstance(caught.value.__cause__, AmoTimeout)


async def test_create_is_not_resent_after_dropped_connection() -> None:
    def drop(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("peer closed connection", request=request)

    server = Server(drop)
    async with make_client(server) as amo:
        with pytest.raises(AmoAmbiguousWrite) as caught:
            await amo.request_json(
                "POST", "leads/complex", json=[{"request_id": "c"}], retry="create"
            )
    assert isinstance(caught.value.__cause__, AmoConnectionError)
    assert len(server.requests) == 1


async def test_create_is_retried_when_nothing_was_sent() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    server = Server(refuse, problem(429, "Too many"), httpx.Response(200, json={"ok": 1}))
    async with make_client(server) as amo:
        reply = await amo.request_json("POST", "leads", json=[{"request_id": "r"}], retry="create")
    assert reply == {"ok": 1}
    assert len(server.requests) == 3


async def test_reads_survive_timeouts_and_dropped_connections() -> None:
    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    def drop(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("dropped", request=request)

    server = Server(timeout, drop, httpx.Response(200, json={"id": 1}))
    async with make_client(server) as amo:
        assert await amo.request_json("GET", "leads/1") == {"id": 1}


async def test_attempt_deadline_applies_to_transports_without_timeouts() -> None:
    never = asyncio.Event()

    async def hang(request: httpx.Request) -> httpx.Response:
        await never.wait()
        raise AssertionError("unreachable")

    server = Server(hang)
    policy = RetryPolicy(sleep=Recorder(), max_attempts=2)
    async with make_client(server, retry=policy, attempt_timeout=0.05) as amo:
        with pytest.raises(AmoTimeout, match="in time"):
            await amo.request_json("GET", "leads")
    assert len(server.requests) == 2


async def test_401_refreshes_once_and_retries() -> None:
    provider = FakeProvider()

    def answer(request: httpx.Request) -> httpx.Response:
        if request.headers["authorization"] == "Bearer tok-0":
            return problem(401, "Invalid user name or password")
        return httpx.Response(200, json={"ok": True})

    server = Server(answer)
    async with make_client(server, provider=provider) as amo:
        assert await amo.request_json("GET", "leads") == {"ok": True}
    assert provider.refreshes == ["tok-0"]
    assert [r.headers["authorization"] for r in server.requests] == ["Bearer tok-0", "Bearer tok-1"]


async def test_401_after_refresh_is_raised_not_looped() -> None:
    provider = FakeProvider()
    server = Server(problem(401, "Invalid user name or password"))
    async with make_client(server, provider=provider) as amo:
        with pytest.raises(AmoAuthError) as caught:
            await amo.request_json("GET", "leads")
    assert len(provider.refreshes) == 1
    assert len(server.requests) == 2
    assert "connect the integration again" in str(caught.value)


async def test_dead_grant_raises_reauth_required() -> None:
    provider = FakeProvider(dead=True)
    server = Server(problem(401, "Invalid user name or password"))
    async with make_client(server, provider=provider) as amo:
        with pytest.raises(AmoReauthRequired):
            await amo.request_json("POST", "leads", json=[{}], retry="create")
    assert len(server.requests) == 1


async def test_account_not_found_is_not_a_token_problem() -> None:
    provider = FakeProvider()
    server = Server(problem(401, "Account not found", title="Unauthorized"))
    async with make_client(server, provider=provider) as amo:
        with pytest.raises(AmoAccountNotFound) as caught:
            await amo.request_json("GET", "account")
    assert provider.refreshes == []
    assert ACCOUNT_NOT_FOUND_MESSAGE in str(caught.value)


@pytest.mark.parametrize(
    "ban",
    [
        httpx.Response(403, text=BAN_HTML, headers={"content-type": "text/html"}),
        problem(403, "Account is blocked for exceeding the request limits"),
    ],
)
async def test_ban_trips_the_breaker_until_retry_at(ban: httpx.Response) -> None:
    now = [1_000_000.0]
    breaker = BanBreaker(ban_seconds=600, clock=lambda: now[0])
    server = Server(ban, httpx.Response(200, json={"ok": True}))
    async with make_client(server, ban_breaker=breaker) as amo:
        with pytest.raises(AmoBanned) as caught:
            await amo.request_json("GET", "leads")
        assert caught.value.retry_at == 1_000_600.0
        with pytest.raises(AmoBanned, match="without calling amoCRM"):
            await amo.request_json("GET", "contacts")
        assert len(server.requests) == 1  # refused without the network
        now[0] += 601
        assert await amo.request_json("GET", "contacts") == {"ok": True}


async def test_reset_ban_lifts_the_breaker() -> None:
    server = Server(httpx.Response(403, text=BAN_HTML), httpx.Response(200, json={}))
    async with make_client(server) as amo:
        with pytest.raises(AmoBanned):
            await amo.request_json("GET", "leads")
        amo.reset_ban()
        assert await amo.request_json("GET", "leads") == {}


async def test_ban_breaker_is_per_account() -> None:
    breaker = BanBreaker()
    acme_server = Server(httpx.Response(403, text=BAN_HTML))
    other_server = Server(httpx.Response(200, json={}))
    async with (
        make_client(acme_server, ban_breaker=breaker) as acme,
        AmoClient(
            "other.kommo.com",
            token_provider=StaticTokenProvider(TOKEN),
            transport=httpx.MockTransport(other_server),
            ban_breaker=breaker,
        ) as other,
    ):
        with pytest.raises(AmoBanned):
            await acme.request_json("GET", "leads")
        assert await other.request_json("GET", "leads") == {}


async def test_204_and_empty_bodies_are_none_and_non_json_is_a_server_error() -> None:
    server = Server(
        httpx.Response(204), httpx.Response(200, content=b""), httpx.Response(200, text="<html>")
    )
    async with make_client(server, retry=RetryPolicy(max_attempts=1)) as amo:
        assert await amo.request_json("GET", "leads") is None
        assert await amo.request_json("GET", "leads") is None
        with pytest.raises(AmoServerError, match="not JSON"):
            await amo.request_json("GET", "leads")


async def test_closed_client_refuses_calls() -> None:
    amo = make_client(Server())
    await amo.aclose()
    await amo.aclose()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        await amo.request_json("GET", "leads")


async def test_rate_limit_key_names_integration_and_account() -> None:
    async with make_client(Server(), provider=FakeProvider()) as amo:
        assert amo.rate_limit_key == "integration-1@acme.amocrm.ru"
    async with make_client(Server(), rate_limit_key="custom") as amo:
        assert amo.rate_limit_key == "custom"


async def test_resources_are_attached() -> None:
    async with make_client(Server()) as amo:
        for name in (
            "leads",
            "contacts",
            "companies",
            "account",
            "users",
            "pipelines",
            "tags",
            "notes",
            "custom_fields",
            "webhooks",
        ):
            assert getattr(amo, name) is not None
