"""``AMOBRIDGE_CONNECT__RETURN_URLS``: where a connect flow may send the browser back to. The same
origin exactly and the prefix's path as whole segments; https only, except localhost."""

from __future__ import annotations

import pytest

from amobridge.errors import ConfigurationError
from amobridge.settings import load_settings, return_url_allowed

PREFIXES = ["https://app.example.com/settings", "http://localhost:3000", "https://b.example/"]


@pytest.mark.parametrize(
    "url",
    [
        "https://app.example.com/settings",
        "https://app.example.com/settings/amocrm?tab=crm#top",
        "https://APP.example.com:443/settings/",
        "http://localhost:3000/anywhere",
        "https://b.example/x",
    ],
)
def test_urls_under_a_prefix_are_allowed(url: str) -> None:
    assert return_url_allowed(url, PREFIXES)


@pytest.mark.parametrize(
    "url",
    [
        "https://app.example.com/settingsX",  # not a whole segment
        "https://app.example.com/",  # above the prefix
        "https://app.example.com/settings/../admin",
        "https://app.example.com/settings/%2e%2e/admin",
        "https://app.example.com:8443/settings",  # another port is another origin
        "http://app.example.com/settings",  # http only for localhost
        "https://app.example.com.evil.example/settings",
        "https://evil.example/settings",
        "https://app.example.com@evil.example/settings",
        "https://evil.example\\@app.example.com/settings",
        "//app.example.com/settings",
        "/settings",
        "javascript:alert(1)//https://app.example.com/settings",
        "https://app.example.com/settings\n",
        "http://localhost:3001/",
        "",
    ],
)
def test_anything_else_is_refused(url: str) -> None:
    assert not return_url_allowed(url, PREFIXES)


def test_nothing_is_allowed_without_prefixes() -> None:
    assert not return_url_allowed("https://app.example.com/settings", [])


def test_the_setting_takes_a_comma_list_and_refuses_bad_prefixes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        "AMOBRIDGE_CONNECT__RETURN_URLS", "https://app.example.com/settings, http://127.0.0.1:8080"
    )
    assert load_settings().connect.return_urls == [
        "https://app.example.com/settings",
        "http://127.0.0.1:8080",
    ]
    for bad in ("http://app.example.com", "https://app.example.com/x?y=1", "app.example.com"):
        monkeypatch.setenv("AMOBRIDGE_CONNECT__RETURN_URLS", bad)
        with pytest.raises(ConfigurationError, match="AMOBRIDGE_CONNECT__RETURN_URLS"):
            load_settings()
