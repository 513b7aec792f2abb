"""The service's one Settings class.

Every value comes from the environment (prefix ``AMOBRIDGE_``, nested groups joined with ``__``,
e.g. ``AMOBRIDGE_SANDBOX__PORT``) or from a ``.env`` file. Unknown ``AMOBRIDGE_*`` names are
refused, and so is any value that is a known placeholder: an example ``.env`` with
``AMOCRM_STAGE_LESSON_1=12345678`` that reaches production makes the integration silently move nothing.

The SDK (``amobridge.amo``) never reads this class; the CLI builds it once and passes values on.
Every setting is listed in ``docs/configuration.md`` (a test keeps the two in step).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

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
# Numbers example .env files ship as stage ids (and that reach production unchanged).
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


def _split_list(value: object) -> object:
    """Lists from the environment: a JSON array or a comma-separated string."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import json

            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


CommaList = Annotated[list[str], NoDecode, BeforeValidator(_split_list)]
SecretList = Annotated[list[SecretStr], NoDecode, BeforeValidator(_split_list)]


def _web_url(value: object) -> object:
    """A URL amobridge sends browsers or requests to: absolute http(s), with a host. The value is
    not repeated in the error (it may carry credentials)."""
    if isinstance(value, str):
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(value.strip())
            usable = parts.scheme in ("http", "https") and bool(parts.hostname)
        except ValueError:  # e.g. an unclosed [IPv6 bracket
            usable = False
        if not usable:
            raise ValueError("must be an absolute http:// or https:// URL with a host")
    return value


def _database_url(value: object) -> object:
    """A database amobridge can open: SQLite or PostgreSQL, in SQLAlchemy's URL form."""
    if isinstance(value, str):
        scheme = value.strip().split("://", 1)[0] if "://" in value else ""
        if scheme.split("+", 1)[0] not in ("sqlite", "postgresql", "postgres"):
            raise ValueError(
                "must be a SQLite or PostgreSQL URL: sqlite:///relative/path.db, "
                "sqlite:////absolute/path.db or postgresql://user:password@host/database"
            )
    return value


WebUrl = Annotated[str, BeforeValidator(_web_url)]
DatabaseUrl = Annotated[str, BeforeValidator(_database_url)]


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
    rate_rule: Literal["sliding", "fixed", "token_bucket"] = Field(
        "sliding",
        description="How N per second is counted: any 1 s interval, whole seconds, or a bucket.",
    )
    account_rps_cap: int | None = Field(
        50, ge=1, description="Requests per second per account, all integrations (None: off)."
    )
    ban_seconds: int = Field(3600, ge=1, description="How long a rate-limit ban (403) lasts.")
    code_ttl_seconds: int = Field(1200, ge=1)
    access_ttl_seconds: int = Field(86400, ge=1)
    refresh_ttl_seconds: int = Field(90 * 86400, ge=1)
    time_scale: float = Field(1.0, gt=0, description="Sandbox seconds per real second.")
    demo_subdomain: str = "demo"
    state_file: str | None = Field(
        None,
        description="JSON file the sandbox loads its state from at start and saves it to after "
        "each change (unset: in memory only; `amobridge demo` then uses "
        "<data dir>/sandbox-state.json).",
    )


class ServerSettings(_Group):
    """The service (``amobridge serve``)."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    public_url: WebUrl = Field(
        "http://127.0.0.1:8000",
        description="How browsers and amoCRM reach the service, including any proxy prefix "
        "(e.g. https://app.example.com/api). Callback and webhook URLs are built from it.",
    )
    root_path: str = Field(
        "",
        description="Path prefix a reverse proxy strips before forwarding (e.g. /api).",
    )
    run_workers: bool = Field(True, description="Run the background workers inside `serve`.")
    forwarded_allow_ips: str = Field(
        "127.0.0.1",
        description="Proxies whose X-Forwarded-* headers are trusted (comma-separated, or *).",
    )
    max_body_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        description="Largest request body accepted on any route; a larger one gets 413 before "
        "it is read.",
    )


class DatabaseSettings(_Group):
    url: DatabaseUrl = Field(
        "sqlite:///./data/amobridge.db",
        description="SQLAlchemy URL: sqlite:///path (embedded default) or postgresql://…",
    )


class SecuritySettings(_Group):
    secret_keys: SecretList = Field(
        default_factory=list,
        description="Fernet keys, comma-separated; the first encrypts, all decrypt.",
    )
    admin_api_key: SecretStr | None = Field(
        None, description="Bootstrap admin API key (stored hashed on first start)."
    )
    state_ttl_seconds: int = Field(600, ge=60, le=3600)
    jwt_algorithm: str = Field("HS256", pattern=r"^(HS256|RS256)$")
    jwt_secret: SecretStr | None = None
    jwt_public_key: str | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None


class AmoSettings(_Group):
    """The configured amoCRM integration (the website button creates per-owner ones too)."""

    client_id: str | None = None
    client_secret: SecretStr | None = None
    redirect_uri: WebUrl | None = Field(
        None, description="Defaults to {public_url}/amocrm/callback; must equal the integration's."
    )
    authorize_url: WebUrl = "https://www.amocrm.ru/oauth"
    button_script_url: WebUrl = "https://www.amocrm.ru/auth/button.min.js"
    button_name: str = "amobridge"
    button_description: str = "Connects your amoCRM account"
    button_logo: str | None = None
    button_scopes: str = "crm,notifications"
    api_base_url: WebUrl | None = Field(
        None,
        description="Send every amoCRM call here instead of https://{account host} "
        "(the sandbox: http://127.0.0.1:8010). The account host still goes in the Host header.",
    )
    rate_limit_rps: float = Field(7.0, gt=0, le=7.0)
    rate_limit_backend: str = Field(
        "database",
        pattern=r"^(database|memory)$",
        description="database: one pace for all processes sharing the database; memory: per process.",
    )
    refresh_leeway_seconds: int = Field(300, ge=0)
    keepalive_refresh_days: int = Field(30, ge=1, le=85)
    connection_check_ms: int = Field(
        500,
        ge=0,
        le=60_000,
        description="How stale a process's view of a connection's status may be: a disconnect or "
        "re-connect made by another process takes effect within this time.",
    )


_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def parse_return_url(url: str) -> tuple[str, str]:
    """``(origin, path)`` of a URL a browser may be sent back to: absolute, https (http only
    for localhost), no user name or password, no dot segments. ``ValueError`` says why not."""
    if not url or not url.isprintable() or any(c.isspace() or c == "\\" for c in url):
        raise ValueError("must be an absolute URL without spaces or backslashes")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http") or not parts.netloc or not parts.hostname:
        raise ValueError("must be an absolute https URL")
    if "@" in parts.netloc:
        raise ValueError("must not carry a user name or password")
    host = parts.hostname.lower()
    try:
        port = parts.port
    except ValueError:
        raise ValueError("has an invalid port") from None
    if scheme == "http" and host not in _LOOPBACK_HOSTS:
        raise ValueError("must be https (http is accepted for localhost only)")
    path = parts.path or "/"
    if any(unquote(segment) in (".", "..") for segment in path.split("/")):
        raise ValueError("must not hold . or .. path segments")
    shown = f"[{host}]" if ":" in host else host
    default_port = 443 if scheme == "https" else 80
    origin = f"{scheme}://{shown}" + (f":{port}" if port not in (None, default_port) else "")
    return origin, path


def return_url_allowed(url: str, prefixes: list[str]) -> bool:
    """Does ``url`` start with one of ``prefixes`` (:attr:`ConnectSettings.return_urls`): the
    same origin exactly, and the prefix's path as whole segments (``/app`` takes ``/app`` and
    ``/app/x``, never ``/apple``)?"""
    try:
        origin, path = parse_return_url(url)
    except ValueError:
        return False
    for prefix in prefixes:
        prefix_origin, prefix_path = parse_return_url(prefix)
        if origin != prefix_origin:
            continue
        if prefix_path == "/" or path == prefix_path:
            return True
        if path.startswith(prefix_path if prefix_path.endswith("/") else prefix_path + "/"):
            return True
    return False


def _return_url_prefix(value: str) -> str:
    try:
        parse_return_url(value)
    except ValueError as exc:
        raise ValueError(f"{value!r} {exc}") from None
    parts = urlsplit(value)
    if parts.query or parts.fragment or value.endswith(("?", "#")):
        raise ValueError(f"{value!r}: a return URL prefix has no query or fragment")
    return value


class ConnectSettings(_Group):
    """The connect flows' pages in the browser."""

    return_urls: Annotated[
        list[Annotated[str, AfterValidator(_return_url_prefix)]],
        NoDecode,
        BeforeValidator(_split_list),
    ] = Field(
        default_factory=list,
        description="Where the success page may send the browser back to (return_url): the "
        "host app's URL prefixes, an origin with an optional path, https (http for localhost "
        "only), e.g. https://app.example.com/settings. Empty: no return_url is accepted.",
    )


class MobileSettings(_Group):
    allowed_schemes: CommaList = Field(
        default_factory=list, description="Deep-link schemes the callback may open, e.g. foryoure."
    )


class HooksSettings(_Group):
    """The reauth callback of earlier versions: an endpoint of the events outbox that gets
    ``connection.reauth_required`` only, in its old body and with its old signature header."""

    reauth_callback_url: WebUrl | None = Field(
        None, description="POSTed (signed) when a connection needs re-authorization."
    )
    reauth_callback_secret: SecretStr | None = None


def _event_secret(value: object) -> object:
    """A Standard Webhooks secret: ``whsec_`` and base64 of 24 to 64 random bytes. The value is
    not repeated in the error."""
    if isinstance(value, SecretStr | str):
        import base64
        import binascii

        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        text = raw.strip().removeprefix("whsec_")
        try:
            size = len(base64.b64decode(text + "=" * (-len(text) % 4), validate=True))
        except (binascii.Error, ValueError):
            size = 0
        if not 24 <= size <= 64:
            raise ValueError(
                "must be whsec_ followed by base64 of 24 to 64 random bytes, e.g. the output "
                'of: echo "whsec_$(openssl rand -base64 32)"'
            )
    return value


class EventsSettings(_Group):
    """Events to the host app (docs/sync.md, "Events to the host app"): the endpoint named here,
    besides those added through ``POST /event-subscriptions``."""

    url: WebUrl | None = Field(
        None, description="The host app's endpoint every event (or those of TYPES) is POSTed to."
    )
    secret: Annotated[SecretStr | None, AfterValidator(_event_secret)] = Field(
        None, description="Its Standard Webhooks signing secret, whsec_…; required with URL."
    )
    types: CommaList = Field(
        default_factory=list,
        description="The event types URL gets (lead.created, lead.* …); empty: all.",
    )
    max_attempts: int = Field(
        8, ge=1, le=50, description="Attempts of a delivery before it is failed."
    )
    timeout_seconds: float = Field(
        10.0, gt=0, le=120, description="How long one POST may take before it counts as failed."
    )
    retention_days: int = Field(
        30, ge=1, le=3650, description="How long events whose deliveries are done are kept."
    )

    @model_validator(mode="after")
    def _secret_with_url(self) -> EventsSettings:
        if self.url is not None and self.secret is None:
            raise ValueError(
                "AMOBRIDGE_EVENTS__SECRET is required with AMOBRIDGE_EVENTS__URL: every "
                'event is signed (make one with: echo "whsec_$(openssl rand -base64 32)")'
            )
        return self


class JobsSettings(_Group):
    """The job queue's workers (``amobridge worker``, and ``serve`` with RUN_WORKERS)."""

    concurrency: int = Field(
        4, ge=1, le=256, description="Handlers one worker process runs at the same time."
    )
    connection_concurrency: int = Field(
        1,
        ge=1,
        le=64,
        description="Jobs of one connection running at the same time, across all workers.",
    )
    max_attempts: int = Field(
        8, ge=1, le=1000, description="Attempts of a job before it is failed (enqueue may say)."
    )
    backoff_base_seconds: float = Field(
        5.0, gt=0, description="Wait before the second attempt; doubled after each failure."
    )
    backoff_cap_seconds: float = Field(
        3600.0, gt=0, description="Longest wait between two attempts."
    )
    lease_seconds: float = Field(
        60.0,
        ge=1,
        description="A claimed job's lease, renewed every third of it while its handler runs; "
        "a lease that ran out (the worker died) lets another worker take the job over.",
    )
    poll_seconds: float = Field(
        5.0,
        gt=0,
        le=300,
        description="How often an idle worker looks for due jobs when nothing woke it.",
    )
    handler_timeout_seconds: float = Field(
        300.0, gt=0, description="A handler running longer is cancelled and its jobs retried."
    )
    resume_seconds: float = Field(
        5.0,
        gt=0,
        le=300,
        description="How often paused jobs are checked: a re-connected connection's or an "
        "ended ban's jobs go back to pending.",
    )
    shutdown_grace_seconds: float = Field(
        10.0,
        ge=0,
        description="How long a stopping worker lets running handlers finish before it hands "
        "their jobs back.",
    )


class ProxySettings(_Group):
    """The amoCRM proxy, ``/proxy/{owner}/api/v4/...``."""

    audit_reads: bool = Field(
        False,
        description="Write an audit entry for every proxied GET too (writes always get one).",
    )


class SyncSettings(_Group):
    """The lead API and its push to amoCRM."""

    catalogue_ttl_seconds: int = Field(
        300,
        ge=0,
        le=86_400,
        description="How old a connection's cached pipelines, stages and custom fields may be "
        "before a lead request reads them from amoCRM again (0: every request).",
    )
    mirror_authoritative: bool = Field(
        False,
        description="Deduplicate contacts against amobridge's own contacts only: no contact "
        "search in amoCRM before one is created (for accounts whose contacts all come "
        "through amobridge).",
    )
    in_flight_seconds: float = Field(
        75.0,
        ge=0,
        le=3600,
        description="How long after a create request left amobridge waits before it looks in "
        "amoCRM for what that request made, when the attempt ended without an answer (a crash, "
        "a lost lease): a worker that lost its lease may still be sending it. At least the "
        "amoCRM client's 60 s attempt deadline plus its wait for the pace.",
    )
    phone_region: str = Field(
        "RU",
        pattern=r"^[A-Z]{2}$",
        description="Where a phone written without + was dialled (8 900 … is +7 900 … in RU).",
    )
    idempotency_ttl_hours: int = Field(
        24,
        ge=1,
        le=24 * 30,
        description="How long an Idempotency-Key of POST /leads and /contacts is remembered.",
    )
    catchup_minutes: int = Field(
        10,
        ge=0,
        le=1440,
        description="How often each active connection's leads and contacts changed in amoCRM "
        "are read again and written into the mirror, repairing what webhooks missed (0: never).",
    )
    catchup_overlap_seconds: int = Field(
        300,
        ge=0,
        le=86_400,
        description="How far before the last catch-up's start the next one reads from (clock "
        "differences, changes saved while it ran).",
    )


class WebhooksSettings(_Group):
    """amoCRM's webhooks into the mirror (``POST /webhooks/amocrm/{secret}``)."""

    auto_subscribe: bool = Field(
        True,
        description="Subscribe a connection's webhook through amoCRM's API when it becomes "
        "active (and unsubscribe it when it is disconnected); false: add it by hand.",
    )
    check_interval_seconds: int = Field(
        3600,
        ge=60,
        le=7 * 86_400,
        description="How often each active connection's subscription is checked in amoCRM, and "
        "restored when amoCRM disabled or removed it.",
    )
    dedup_window_seconds: int = Field(
        86_400,
        ge=0,
        le=30 * 86_400,
        description="A body received again for the same connection within this time is a "
        "redelivery: stored as a duplicate, applied once (0: no deduplication).",
    )
    retention_days: int = Field(
        30,
        ge=1,
        le=3650,
        description="How long processed and duplicate deliveries are kept (failed ones stay "
        "until replayed or this much older).",
    )


class Settings(BaseSettings):
    """All of amobridge's settings. Build with :func:`load_settings` to get a readable error."""

    model_config = SettingsConfigDict(
        env_prefix="AMOBRIDGE_",
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        # .env files also hold other apps' variables (e.g. AMOCRM_*): ignored here, while
        # unknown AMOBRIDGE_* names are refused by load_settings() and the groups' extra="forbid".
        extra="ignore",
        frozen=True,
    )

    environment: Environment = Environment.development
    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$")
    server: ServerSettings = ServerSettings()
    database: DatabaseSettings = DatabaseSettings()
    security: SecuritySettings = SecuritySettings()
    amo: AmoSettings = AmoSettings()
    connect: ConnectSettings = ConnectSettings()
    mobile: MobileSettings = MobileSettings()
    hooks: HooksSettings = HooksSettings()
    events: EventsSettings = EventsSettings()
    jobs: JobsSettings = JobsSettings()
    webhooks: WebhooksSettings = WebhooksSettings()
    sync: SyncSettings = SyncSettings()
    proxy: ProxySettings = ProxySettings()
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
        for index, item in enumerate(value if isinstance(value, list) else [value]):
            why = placeholder_problem(item)
            if why:
                where = f"{env_name} (item {index + 1})" if isinstance(value, list) else env_name
                problems.append(f"{where} {why}: put the real value there")
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
        "state_ttl_seconds",
        "refresh_leeway_seconds",
        "keepalive_refresh_days",
        "connection_check_ms",
        "max_body_bytes",
        "catalogue_ttl_seconds",
        "idempotency_ttl_hours",
        "catchup_minutes",
        "catchup_overlap_seconds",
        "concurrency",
        "connection_concurrency",
        "max_attempts",
        "backoff_base_seconds",
        "backoff_cap_seconds",
        "lease_seconds",
        "poll_seconds",
        "handler_timeout_seconds",
        "resume_seconds",
        "shutdown_grace_seconds",
        "timeout_seconds",
    }
)


def setting_names(model: type[BaseModel] = Settings, prefix: str = "AMOBRIDGE_") -> list[str]:
    """Every environment variable name Settings understands."""
    names: list[str] = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names.extend(setting_names(annotation, f"{prefix}{name.upper()}__"))
        else:
            names.append(f"{prefix}{name.upper()}")
    return names


def _unknown_names(env_file: str | None) -> list[str]:
    import os

    given = {n.upper() for n in os.environ if n.upper().startswith("AMOBRIDGE_")}
    if env_file and os.path.exists(env_file):
        from dotenv import dotenv_values

        given |= {n.upper() for n in dotenv_values(env_file) if n.upper().startswith("AMOBRIDGE_")}
    known = set(setting_names())
    groups = {n.split("__", 1)[0] for n in known if "__" in n}
    # Names inside a known group are checked by the group's own extra="forbid".
    return sorted(n for n in given - known if n.split("__", 1)[0] not in groups)


def load_settings(**overrides: Any) -> Settings:
    """Build Settings, turning pydantic's error dump into one readable ConfigurationError."""
    unknown = _unknown_names(".env")
    if unknown:
        raise ConfigurationError(
            "invalid configuration:\n  "
            + "\n  ".join(f"{n}: unknown setting (see docs/configuration.md)" for n in unknown)
        )
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = "AMOBRIDGE_" + "__".join(str(p).upper() for p in err["loc"] if p != "__root__")
            msg = str(err["msg"]).removeprefix("Value error, ")
            lines.append(msg if where == "AMOBRIDGE_" else f"{where}: {msg}")
        raise ConfigurationError("invalid configuration:\n  " + "\n  ".join(lines)) from None
