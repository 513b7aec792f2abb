"""The service's one Settings class.

Every value comes from the environment (prefix ``AMOBRIDGE_``, nested groups joined with ``__``,
e.g. ``AMOBRIDGE_SANDBOX__PORT``) or from a ``.env`` file. Unknown ``AMOBRIDGE_*`` names are
refused, and so is any value that is a known placeholder: seed 002 shipped
``AMOCRM_STAGE_LESSON_1=12345678`` to production, and the integration silently moved nothing.

The SDK (``amobridge.amo``) never reads this class; the CLI builds it once and passes values on.
Every setting is listed in ``docs/configuration.md`` (a test keeps the two in step).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from amobridge.errors import ConfigurationError

# Values people copy from examples and forget to replace. Compared case-insensitively, stripped.
PLACEHOLDER_STRINGS = frozenset(
    {
        "your_client_id",
        "your-client-id",
        "your_client_secret",
        "your-client-secret",
        "your_secret",
        "your-secret",
        "your_subdomain",
        "your-subdomain",
        "yoursubdomain",
        "your-subdomain.amocrm.ru",
        "your_access_token",
        "your_refresh_token",
        "your-account-id",
        "your_account_id",
        "xxx",
        "xxxx",
        "xxxxx",
        "changeme",
        "change-me",
        "change_me",
        "changethis",
        "secret",
        "todo",
        "placeholder",
        "example",
        "supersecret...",
        "supersecretkey123456789",
        "abc123-def456...",
        "abc123-def456-ghi789",
        "def50200a1b2c3...",
    }
)
# Numbers from seed 002's example .env, shipped as stage ids to production.
PLACEHOLDER_NUMBERS = frozenset(
    {0, 123, 1234, 12345, 123456, 1234567, 12345678, 23456789, 34567890}
)


def placeholder_problem(value: object) -> str | None:
    """Why ``value`` looks like a placeholder, or None when it looks real."""
    if isinstance(value, SecretStr):
        raw = value.get_secret_value()
        if not raw.strip():
            return "is empty"
        return placeholder_problem(raw)
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return "is a placeholder number from an example" if value in PLACEHOLDER_NUMBERS else None
    if isinstance(value, str):
        stripped = value.strip().lower()
        if stripped in PLACEHOLDER_STRINGS:
            return f"is the placeholder {value.strip()!r}"
        if stripped.startswith(("your_", "your-", "<", "${")) or stripped.endswith("..."):
            return "looks like a placeholder from an example"
    return None


class Environment(StrEnum):
    development = "development"
    production = "production"
    test = "test"


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SandboxSettings(_Group):
    """The local fake amoCRM started by ``amobridge sandbox`` and ``make run``."""

    host: str = "127.0.0.1"
    port: int = Field(8010, ge=1, le=65535)
    control_token: SecretStr | None = Field(
        None, description="When set, /_sandbox/* requires 'Authorization: Bearer <token>'."
    )
    rate_limit_enabled: bool = True
    rate_limit_rps: int = Field(7, ge=1, description="Requests per second per integration+account.")
    account_rps_cap: int | None = Field(
        50, ge=1, description="Requests per second per account, all integrations (None: off)."
    )
    ban_seconds: int = Field(3600, ge=1, description="How long a rate-limit ban (403) lasts.")
    code_ttl_seconds: int = Field(1200, ge=1)
    access_ttl_seconds: int = Field(86400, ge=1)
    refresh_ttl_seconds: int = Field(90 * 86400, ge=1)
    time_scale: float = Field(1.0, gt=0, description="Sandbox seconds per real second.")
    demo_subdomain: str = "demo"


class Settings(BaseSettings):
    """All of amobridge's settings. Build with :func:`load_settings` to get a readable error."""

    model_config = SettingsConfigDict(
        env_prefix="AMOBRIDGE_",
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="forbid",
        frozen=True,
    )

    environment: Environment = Environment.development
    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$")
    sandbox: SandboxSettings = SandboxSettings()

    @model_validator(mode="after")
    def _refuse_placeholders(self) -> Settings:
        problems = list(_find_placeholders(self, "AMOBRIDGE_"))
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _find_placeholders(model: BaseModel, prefix: str) -> list[str]:
    problems: list[str] = []
    for name in type(model).model_fields:
        value = getattr(model, name)
        env_name = f"{prefix}{name.upper()}"
        if isinstance(value, BaseModel):
            problems.extend(_find_placeholders(value, env_name + "__"))
            continue
        if name in _NUMERIC_LIMITS:
            continue  # ports, limits and lifetimes are measurements, not identifiers
        why = placeholder_problem(value)
        if why:
            problems.append(f"{env_name} {why}: put the real value there")
    return problems


# Numeric settings that are quantities (a port of 1234 or a ttl of 12345 s is legitimate); only
# identifiers (ids of pipelines, stages, accounts) are checked against placeholder numbers.
_NUMERIC_LIMITS = frozenset(
    {
        "port",
        "rate_limit_rps",
        "account_rps_cap",
        "ban_seconds",
        "code_ttl_seconds",
        "access_ttl_seconds",
        "refresh_ttl_seconds",
        "time_scale",
    }
)


def load_settings(**overrides: Any) -> Settings:
    """Build Settings, turning pydantic's error dump into one readable ConfigurationError."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = "AMOBRIDGE_" + "__".join(str(p).upper() for p in err["loc"] if p != "__root__")
            msg = str(err["msg"]).removeprefix("Value error, ")
            lines.append(msg if where == "AMOBRIDGE_" else f"{where}: {msg}")
        raise ConfigurationError("invalid configuration:\n  " + "\n  ".join(lines)) from None
