"""Account domains (the account host only, never ``www`` or ``api-b``),
JWT claims read without verification, subdomain discovery."""

from __future__ import annotations

import httpx
import jwt
import pytest

from amobridge.amo.domains import (
    AccountDomain,
    api_domain_of,
    default_user_agent,
    discover_subdomain,
    parse_account_domain,
    request_target,
    token_claims,
)
from amobridge.amo.errors import ACCOUNT_NOT_FOUND_MESSAGE, AmoInvalidDomain
from amobridge.errors import ConfigurationError


@pytest.mark.parametrize(
    ("value", "subdomain", "base"),
    [
        ("acme", "acme", "amocrm.ru"),
        ("acme.amocrm.ru", "acme", "amocrm.ru"),
        ("https://acme.kommo.com/", "acme", "kommo.com"),
        ("acme.amocrm.com", "acme", "amocrm.com"),
        ("  ACME.AmoCRM.ru.  ", "acme", "amocrm.ru"),
        ("https://acme.amocrm.ru:443/api/v4/leads?x=1", "acme", "amocrm.ru"),
        ("my-shop-2", "my-shop-2", "amocrm.ru"),
    ],
)
def test_parses_every_form(value: str, subdomain: str, base: str) -> None:
    domain = parse_account_domain(value)
    assert domain == AccountDomain(subdomain, base)
    assert domain.host == f"{subdomain}.{base}"
    assert domain.base_url == f"https://{subdomain}.{base}"
    assert parse_account_domain(domain) is domain


@pytest.mark.parametrize(
    "value",
    [
        "www",
        "www.amocrm.ru",
        "https://www.kommo.com/",
        "api-b.amocrm.ru",
        "api-c.amocrm.com",
        "amocrm.ru",
        "acme.example.com",
        "a.b.amocrm.ru",
        "",
        "   ",
        "acme_shop",
        "-acme",
    ],
)
def test_rejects_what_is_not_an_account(value: str) -> None:
    with pytest.raises(AmoInvalidDomain) as caught:
        parse_account_domain(value)
    assert str(caught.value).startswith(ACCOUNT_NOT_FOUND_MESSAGE)
    assert isinstance(caught.value, ConfigurationError)


def test_default_base_domain_and_direct_construction() -> None:
    assert parse_account_domain("acme", default_base_domain="kommo.com").host == "acme.kommo.com"
    with pytest.raises(AmoInvalidDomain):
        AccountDomain("acme", "example.com")


def test_request_target_with_and_without_base_url() -> None:
    assert request_target("acme.amocrm.ru", "/api/v4/leads", None) == (
        "https://acme.amocrm.ru/api/v4/leads",
        {},
    )
    assert request_target("acme.amocrm.ru", "/api/v4/leads", "http://127.0.0.1:8010/") == (
        "http://127.0.0.1:8010/api/v4/leads",
        {"Host": "acme.amocrm.ru"},
    )


def test_user_agent_names_amobridge() -> None:
    from amobridge import __version__

    assert default_user_agent().startswith(f"amobridge/{__version__} ")


def test_claims_are_read_without_verification() -> None:
    token = jwt.encode(
        {"api_domain": "api-c.amocrm.com", "base_domain": "kommo.com", "account_id": 5},
        "some-other-key-of-sufficient-length-xx",
        algorithm="HS256",
    )
    assert token_claims(token)["account_id"] == 5
    assert api_domain_of(token) == "api-c.amocrm.com"
    assert token_claims("not-a-jwt") == {}
    assert api_domain_of("not-a-jwt", "amocrm.ru") == "api-b.amocrm.ru"
    only_base = jwt.encode({"base_domain": "amocrm.com"}, "k" * 32, algorithm="HS256")
    assert api_domain_of(only_base) == "api-c.amocrm.com"


async def test_discover_subdomain_asks_the_api_domain() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200,
            json={
                "id": 1,
                "subdomain": "acme",
                "domain": "acme.kommo.com",
                "top_level_domain": "com",
            },
        )

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        found = await discover_subdomain(
            http, api_domain="api-c.amocrm.com", refresh_token="def50200abc"
        )
    assert found == AccountDomain("acme", "kommo.com")
    assert str(seen[0].url) == "https://api-c.amocrm.com/oauth2/account/current/subdomain"
    assert seen[0].headers["x-refresh-token"] == "def50200abc"


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ({"subdomain": "acme", "domain": "amocrm.com"}, "acme.amocrm.com"),
        ({"subdomain": "acme", "top_level_domain": "ru"}, "acme.amocrm.ru"),
        ({"subdomain": "acme"}, "acme.amocrm.ru"),
    ],
)
async def test_discovery_reply_variants(reply: dict, expected: str) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=reply))
    async with httpx.AsyncClient(transport=transport) as http:
        found = await discover_subdomain(http, api_domain="api-b.amocrm.ru", refresh_token="r")
    assert found.host == expected


@pytest.mark.parametrize(
    "response",
    [httpx.Response(401, json={"detail": "revoked"}), httpx.Response(200, json={"id": 1})],
)
async def test_discovery_failure_is_account_not_found(response: httpx.Response) -> None:
    async with httpx.AsyncClient(transport=httpx.MockTransport(lambda r: response)) as http:
        with pytest.raises(AmoInvalidDomain, match="account not found"):
            await discover_subdomain(http, api_domain="api-b.amocrm.ru", refresh_token="r")
