"""What the sandbox does where amoCRM's behaviour is a number or is unverified.

Defaults are amoCRM's documented values; where amoCRM's behaviour is unverified, it is a switch
here. The control API can change a running sandbox's config
(``PATCH /_sandbox/config``), so tests shorten lifetimes or switch rate limiting off per test.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal, get_args, get_origin, get_type_hints

BanBody = Literal["html", "json"]
RateScope = Literal["integration_account", "ip"]
RateRule = Literal["sliding", "fixed", "token_bucket"]


@dataclass(frozen=True)
class SandboxConfig:
    # --- OAuth -----------------------------------------------------------------------------------
    code_ttl: int = 20 * 60
    """Authorization code lifetime, seconds (amoCRM: 20 minutes, single use)."""
    access_ttl: int = 86400
    """Access token lifetime, seconds (amoCRM: 24 h; ``expires_in`` reports it)."""
    refresh_ttl: int = 90 * 86400
    """Refresh token lifetime, seconds (amoCRM: 3 months, restarted by every refresh)."""
    revoke_old_access_on_refresh: bool = True
    """(unverified) Whether the previous access token stops working once its refresh token is spent."""
    include_server_time: bool = False
    """(unverified on amocrm.ru) Add Kommo's ``server_time`` to token replies."""
    account_host_authorize: bool = False
    """(unverified) Also serve the consent page on the account-host form ``{sub}.amocrm.ru/oauth``."""
    require_user_agent: bool = False
    """(unverified) Refuse API calls without a User-Agent header (400)."""
    secrets_uri_require_https: bool = False
    """amoCRM requires https for ``data-secrets_uri``; off by default so local http works."""

    # --- Rate limit ------------------------------------------------------------------------------
    rate_limit_enabled: bool = True
    rate_limit_rps: int = 7
    """Requests per second per integration and account (or per client IP: ``rate_scope``)."""
    rate_scope: RateScope = "integration_account"
    rate_rule: RateRule = "sliding"
    """How "N per second" is counted (amoCRM does not say): ``sliding`` (any one-second interval,
    the strictest), ``fixed`` (whole seconds) or ``token_bucket`` (N tokens, N per second)."""
    account_rps_cap: int | None = 50
    """(unverified community claim) Requests per second per account over all integrations."""
    ban_after_violations: int = 20
    """429s within ``ban_window`` that turn into an account-wide 403 ban."""
    ban_window: int = 60
    ban_seconds: int = 3600
    """How long a ban lasts (amoCRM: until support lifts it; the control API can clear it)."""
    ban_body: BanBody = "html"
    """403 ban body: nginx-style HTML page (as amoCRM sends) or a JSON problem."""
    retry_after_in_429_body: int | None = None
    """(Kommo) ``retry_after`` field in the 429 JSON body; None omits it (amoCRM sends none)."""

    # --- API v4 ----------------------------------------------------------------------------------
    batch_limit: int = 250
    complex_limit: int = 50
    page_limit_max: int = 250
    page_limit_default: int = 50
    name_max_length: int | None = None
    """(unverified) Longest entity name accepted; None: unlimited."""
    max_webhooks_per_account: int = 100

    # --- Webhooks out ----------------------------------------------------------------------------
    webhook_timeout: float = 2.0
    """Real seconds a destination has to answer with 100-299."""
    webhook_retry_delays: tuple[int, ...] = (300, 900, 900, 3600)
    """Sandbox seconds before attempts 2, 3, 4, 5."""
    webhook_retry_any_failure_attempts: int = 3
    """Attempts 2..N follow any failure; later ones only a 499 or 5xx."""
    webhook_disable_after: int = 100
    """More than this many failures within ``webhook_disable_window`` disables a subscription."""
    webhook_disable_window: int = 7200
    webhook_multi_per_post: bool = False
    """(unverified) Send several changes of one request in one POST instead of one POST each."""

    # --- Request log ----------------------------------------------------------------------------
    request_log_size: int = 200_000

    # --- Control API --------------------------------------------------------------------------
    control_token: str | None = field(default=None, repr=False)

    def updated(self, changes: dict[str, Any]) -> SandboxConfig:
        """A copy with ``changes`` applied; unknown names or wrong types raise ValueError."""
        known = {f.name: f for f in fields(self)}
        clean: dict[str, Any] = {}
        for name, value in changes.items():
            if name not in known or name == "control_token":
                raise ValueError(f"unknown sandbox setting {name!r}")
            current = getattr(self, name)
            choices = _choices(name)
            if choices is not None:
                if value not in choices:
                    raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}")
            elif isinstance(current, tuple):
                if not isinstance(value, list | tuple) or not all(
                    isinstance(v, int) and not isinstance(v, bool) for v in value
                ):
                    raise ValueError(f"{name} must be a list of integers")
                value = tuple(value)
            elif isinstance(current, bool):
                if not isinstance(value, bool):
                    raise ValueError(f"{name} must be true or false")
            elif isinstance(current, int | float) or current is None:
                if value is not None and (
                    isinstance(value, bool) or not isinstance(value, int | float)
                ):
                    raise ValueError(f"{name} must be a number")
            elif isinstance(current, str) and not isinstance(value, str):
                raise ValueError(f"{name} must be a string")
            clean[name] = value
        return replace(self, **clean)

    def public(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("control_token", None)
        return data


def _choices(name: str) -> tuple[Any, ...] | None:
    """The values a ``Literal`` setting allows, or None for any other setting."""
    hint = get_type_hints(SandboxConfig)[name]
    return get_args(hint) if get_origin(hint) is Literal else None
