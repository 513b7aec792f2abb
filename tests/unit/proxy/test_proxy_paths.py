"""The proxy's path check: an amoCRM API v4 path and nothing more, read from the raw target."""

from __future__ import annotations

from urllib.parse import unquote

import pytest

from amobridge.errors import ServiceError
from amobridge.proxy.paths import api_path


def check(raw: str, *, root: str = "") -> str:
    """What the router would match for ``raw`` (decoded as ASGI servers do), then the check."""
    decoded = unquote(raw)
    rest = decoded.removeprefix(root).removeprefix("/proxy/")
    owner, _, path = rest.partition("/api/v4/")
    return api_path(owner=owner, path=path, raw_path=raw.encode(), root_path=root)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/proxy/user-42/api/v4/account", "account"),
        ("/proxy/user-42/api/v4/leads/123/notes", "leads/123/notes"),
        ("/proxy/user-42/api/v4/leads/", "leads/"),
        ("/proxy/user%2042/api/v4/contacts/chats", "contacts/chats"),
        ("/proxy/u/api/v4/catalogs/5/elements:x", "catalogs/5/elements:x"),
        (
            "/proxy/u/api/v4/%D0%B7%D0%B0%D0%B4%D0%B0%D1%87%D0%B8",
            "%D0%B7%D0%B0%D0%B4%D0%B0%D1%87%D0%B8",
        ),
    ],
)
def test_api_paths_pass_encoded_segment_by_segment(raw: str, expected: str) -> None:
    assert check(raw) == expected


def test_a_root_path_prefix_is_allowed_for() -> None:
    assert check("/api/proxy/u/api/v4/leads", root="/api") == "leads"


@pytest.mark.parametrize(
    "raw",
    [
        "/proxy/u/api/v4/../../amocrm/status",
        "/proxy/u/api/v4/leads/..",
        "/proxy/u/api/v4/./account",
        "/proxy/u/api/v4/%2e%2e/oauth2/access_token",
        "/proxy/u/api/v4/%2E./x",
        "/proxy/u/api/v4/leads%2F..%2F..%2Foauth2",
        "/proxy/u/api/v4/leads%5C..%5Cx",
        "/proxy/u/api/v4/leads%3Fpage=2",
        "/proxy/u/api/v4/leads%23x",
        "/proxy/u/api/v4//evil.example/api/v4/account",
        "/proxy/u/api/v4/https://evil.example/api/v4/account",
        "/proxy/u/api/v4/leads%00",
        "/proxy/u/api/v4/leads%FF",
        "/proxy/u/api/v4/lead%zz",
        "/proxy/u/api/v4/lead s",
        "/proxy/u/api/v4/lead\\s",
        "/proxy/u/%61pi/v4/account",
        "/proxy/u%2Fapi%2Fv4/api/v4/account",
        "/proxy/u/api/v4/" + "a/" * 1100,
    ],
)
def test_tricks_are_refused_with_400(raw: str) -> None:
    with pytest.raises(ServiceError) as refused:
        check(raw)
    assert (refused.value.status_code, refused.value.code) == (400, "invalid_proxy_path")


def test_an_empty_path_is_not_an_api_call() -> None:
    with pytest.raises(ServiceError) as refused:
        check("/proxy/u/api/v4/")
    assert (refused.value.status_code, refused.value.code) == (404, "not_an_api_path")


def test_without_a_raw_target_the_matched_path_is_encoded_again() -> None:
    assert api_path(owner="u", path="leads/5", raw_path=None) == "leads/5"
    with pytest.raises(ServiceError):
        api_path(owner="u", path="leads/../x", raw_path=None)
