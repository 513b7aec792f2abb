"""The one mapping from the service's settings (``AMOBRIDGE_SANDBOX__*``) to a sandbox, used by
``amobridge sandbox`` and ``amobridge demo`` alike, so a setting (the control token, the rate
rule…) cannot reach one command and miss the other.

Every field of ``SandboxSettings`` is a :class:`SandboxConfig` field of the same name (or of the
name :data:`RENAMED` gives it) unless :data:`NOT_CONFIG` says what else reads it; a new field that
is neither stops both commands at startup (and fails the tests) instead of being silently dropped.
The settings class is only a type here: the sandbox never reads the environment itself.
"""

from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from amobridge.sandbox.app import Sandbox
from amobridge.sandbox.clock import Clock
from amobridge.sandbox.config import SandboxConfig

if TYPE_CHECKING:
    from amobridge.settings import SandboxSettings

RENAMED = {
    "code_ttl_seconds": "code_ttl",
    "access_ttl_seconds": "access_ttl",
    "refresh_ttl_seconds": "refresh_ttl",
}
"""Settings whose config field has another name (settings spell out the unit)."""
NOT_CONFIG = {
    "host": "the interface `amobridge sandbox` listens on",
    "port": "the port `amobridge sandbox` listens on",
    "time_scale": "the sandbox's Clock (sandbox_from_settings)",
    "demo_subdomain": "the demo account's subdomain (seed_demo)",
    "state_file": "the Sandbox's state file (sandbox_from_settings, or demo_sandbox's default)",
}
"""Settings that are not sandbox config, and what reads them instead."""


def sandbox_config(group: SandboxSettings) -> SandboxConfig:
    """The :class:`SandboxConfig` that ``group`` (``settings.sandbox``) describes."""
    known = {f.name for f in fields(SandboxConfig)}
    values: dict[str, Any] = {}
    for name in type(group).model_fields:
        if name in NOT_CONFIG:
            continue
        target = RENAMED.get(name, name)
        if target not in known:
            raise TypeError(
                f"SandboxSettings.{name} reaches no SandboxConfig field: "
                "name it in RENAMED or NOT_CONFIG (amobridge/sandbox/from_settings.py)"
            )
        value = getattr(group, name)
        values[target] = value.get_secret_value() if isinstance(value, SecretStr) else value
    return SandboxConfig(**values)


def sandbox_from_settings(group: SandboxSettings, *, state_file: str | None = None) -> Sandbox:
    """A sandbox with ``group``'s config, clock speed and state file (``state_file`` is the one
    to use when the settings name none: ``amobridge demo`` keeps its state beside its database)."""
    return Sandbox(
        sandbox_config(group),
        clock=Clock(scale=group.time_scale),
        state_file=group.state_file or state_file,
    )
