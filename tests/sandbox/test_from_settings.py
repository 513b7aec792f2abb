"""One mapping from ``settings.sandbox`` to the sandbox, for ``amobridge sandbox`` and
``amobridge demo``: every setting reaches the sandbox, and the demo's control API is closed when
a control token is set."""

from __future__ import annotations

import types
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import httpx
import pytest
from pydantic import SecretStr
from pydantic.fields import FieldInfo

from amobridge.sandbox import create_sandbox_app
from amobridge.sandbox.config import RateRule, SandboxConfig
from amobridge.sandbox.from_settings import (
    NOT_CONFIG,
    RENAMED,
    sandbox_config,
    sandbox_from_settings,
)
from amobridge.settings import SandboxSettings, load_settings

TOKEN = "k3J9-demo-control-token"


def _types(annotation: Any) -> tuple[Any, ...]:
    if get_origin(annotation) in (Union, types.UnionType):
        return tuple(a for a in get_args(annotation) if a is not type(None))
    return (annotation,)


def another_value(info: FieldInfo) -> Any:
    """A valid value that differs from the field's default."""
    default = info.default
    kind = _types(info.annotation)[0]
    if get_origin(kind) is Literal:
        return next(choice for choice in get_args(kind) if choice != default)
    if kind is SecretStr:
        return SecretStr(TOKEN)
    if kind is bool:
        return not default
    if kind is int:
        return 2 if default is None else default + 1
    if kind is float:
        return default * 2
    if kind is str:
        return f"{default}x"
    raise AssertionError(f"teach another_value about {info.annotation}")


FIELDS = sorted(SandboxSettings.model_fields)


@pytest.mark.parametrize("name", FIELDS)
def test_every_sandbox_setting_reaches_the_sandbox(name: str) -> None:
    """A field added to SandboxSettings either reaches SandboxConfig (same name or RENAMED) or
    is named in NOT_CONFIG: it cannot be dropped silently by either command."""
    value = another_value(SandboxSettings.model_fields[name])
    group = SandboxSettings(**{name: value})
    config = sandbox_config(group)
    if name == "time_scale":
        box = sandbox_from_settings(group)
        assert box.clock.scale == value
        assert box.config == config
    elif name in NOT_CONFIG:
        assert name not in {f.name for f in fields(SandboxConfig)}
    else:
        expected = value.get_secret_value() if isinstance(value, SecretStr) else value
        assert getattr(config, RENAMED.get(name, name)) == expected
        assert getattr(SandboxConfig(), RENAMED.get(name, name)) != expected


def test_the_mapping_names_only_real_settings() -> None:
    assert set(RENAMED) <= set(FIELDS)
    assert set(NOT_CONFIG) <= set(FIELDS)
    config_names = {f.name for f in fields(SandboxConfig)}
    assert set(RENAMED.values()) <= config_names


def test_settings_offer_exactly_the_sandbox_rate_rules() -> None:
    annotation = SandboxSettings.model_fields["rate_rule"].annotation
    assert get_args(annotation) == get_args(RateRule)


def test_defaults_agree() -> None:
    """With nothing set, the commands run the sandbox's own defaults (amoCRM's numbers)."""
    assert sandbox_config(SandboxSettings()) == SandboxConfig()


def test_an_unmapped_setting_stops_startup() -> None:
    class Extended(SandboxSettings):
        coffee_strength: int = 3

    with pytest.raises(TypeError, match="coffee_strength"):
        sandbox_config(Extended())


async def _health(app: Any, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8010"
    ) as client:
        return (await client.get("/_sandbox/health", headers=headers)).status_code


async def test_demo_control_api_needs_the_configured_token(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from amobridge.demo import demo_sandbox

    # The demo keeps its sandbox state beside the database: keep both out of the working tree.
    monkeypatch.setenv("AMOBRIDGE_DATABASE__URL", f"sqlite:///{tmp_path}/amobridge.db")
    monkeypatch.setenv("AMOBRIDGE_SANDBOX__CONTROL_TOKEN", TOKEN)
    monkeypatch.setenv("AMOBRIDGE_SANDBOX__RATE_RULE", "token_bucket")
    box, made = demo_sandbox(load_settings(), service_url="http://127.0.0.1:8000")
    try:
        app = create_sandbox_app(sandbox=box)
        assert await _health(app, None) == 401
        assert await _health(app, "wrong-token") == 401
        assert await _health(app, TOKEN) == 200
        assert box.config.rate_rule == "token_bucket"
        assert made.integration.redirect_uri == "http://127.0.0.1:8000/amocrm/callback"
        assert made.integration.disconnect_url == "http://127.0.0.1:8000/amocrm/uninstall"
    finally:
        await box.aclose()


async def test_demo_control_api_is_open_without_a_token(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from amobridge.demo import demo_sandbox

    monkeypatch.setenv("AMOBRIDGE_DATABASE__URL", f"sqlite:///{tmp_path}/amobridge.db")
    box, _ = demo_sandbox(load_settings(), service_url="http://127.0.0.1:8000")
    try:
        assert await _health(create_sandbox_app(sandbox=box), None) == 200
    finally:
        await box.aclose()
