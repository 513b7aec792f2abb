"""Settings: AMOBRIDGE_ prefix, nested groups, placeholders refused, docs complete."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from amobridge.errors import ConfigurationError
from amobridge.settings import load_settings, placeholder_problem, setting_names

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_defaults_load() -> None:
    settings = load_settings()
    assert settings.sandbox.port == 8010
    assert settings.sandbox.rate_limit_rps == 7


def test_nested_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMOBRIDGE_SANDBOX__PORT", "9011")
    assert load_settings().sandbox.port == 9011


def test_unknown_setting_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMOBRIDGE_SANDBOX__PROT", "1")
    with pytest.raises(ConfigurationError, match="PROT"):
        load_settings()


@pytest.mark.parametrize(
    "value", ["changeme", "your_client_id", "xxx", "  ", "YOUR-SECRET", "<token>", "abc..."]
)
def test_placeholder_secret_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("AMOBRIDGE_SANDBOX__CONTROL_TOKEN", value)
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    message = str(info.value)
    assert "AMOBRIDGE_SANDBOX__CONTROL_TOKEN" in message
    assert "real value" in message or "empty" in message
    assert value.strip() == "" or value not in message.replace(repr(value.strip()), "")


def test_placeholder_numbers() -> None:
    assert placeholder_problem(12345678) is not None  # a guide's placeholder stage id
    assert placeholder_problem(123456) is not None
    assert placeholder_problem(65432100) is None
    assert placeholder_problem("a9f3c2d1-real") is None


def test_real_token_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMOBRIDGE_SANDBOX__CONTROL_TOKEN", "k3J9-real-looking-token")
    assert load_settings().sandbox.control_token is not None


def test_every_setting_is_documented() -> None:
    documented = set(re.findall(r"AMOBRIDGE_[A-Z0-9_]+", DOCS.read_text()))
    missing = [n for n in setting_names() if n not in documented]
    assert not missing, f"add these to docs/configuration.md: {missing}"


def test_unknown_top_level_setting_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMOBRIDGE_ENVIRONMNT", "production")
    with pytest.raises(ConfigurationError, match="AMOBRIDGE_ENVIRONMNT: unknown setting"):
        load_settings()


def test_env_file_with_other_apps_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seeds keep AMOCRM_* in the same .env: ignored, while ours are read."""
    (tmp_path / ".env").write_text(
        "AMOCRM_CLIENT_ID=abc\nAMO_DOMAIN=x.amocrm.ru\n"
        "AMOBRIDGE_MOBILE__ALLOWED_SCHEMES=foryoure, myapp\n"
    )
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.mobile.allowed_schemes == ["foryoure", "myapp"]


def test_secret_keys_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMOBRIDGE_SECURITY__SECRET_KEYS", "k1-real-key,k2-real-key")
    keys = load_settings().security.secret_keys
    assert [k.get_secret_value() for k in keys] == ["k1-real-key", "k2-real-key"]
    assert "k1-real-key" not in repr(keys)


def test_placeholder_in_list_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMOBRIDGE_SECURITY__SECRET_KEYS", "k1-real-key,changeme")
    with pytest.raises(ConfigurationError, match=r"SECRET_KEYS \(item 2\)"):
        load_settings()


def test_placeholder_client_id_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMOBRIDGE_AMO__CLIENT_ID", "your_client_id")
    with pytest.raises(ConfigurationError, match="AMOBRIDGE_AMO__CLIENT_ID"):
        load_settings()
