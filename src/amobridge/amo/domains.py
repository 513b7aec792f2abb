"""Account domains: what the user types or amoCRM sends, turned into the one host to call.

amoCRM serves ``/oauth2/access_token`` and ``/api/v4/`` on the **account host** only
(``{subdomain}.amocrm.ru``, ``.amocrm.com``, ``.kommo.com``). :func:`parse_account_domain`
accepts ``acme``, ``acme.amocrm.ru``, ``https://acme.kommo.com/`` and the ``referer`` value from the
OAuth redirect, and refuses amoCRM's own hosts (``www``, ``api-b…``) with the message users need.

:func:`discover_subdomain` asks amoCRM which account a refresh token belongs to, and
:func:`token_claims` reads an access token's JWT claims (``api_domain``, ``base_domain``,
``account_id``) without verifying it: amoCRM's public key is not published, and the claims are only
used to find hosts, never to trust anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt

from amobridge.amo.errors import ACCOUNT_NOT_FOUND_MESSAGE, AmoInvalidDomain

BASE_DOMAINS: tuple[str, ...] = ("amocrm.ru", "amocrm.com", "kommo.com")
DEFAULT_BASE_DOMAIN = "amocrm.ru"

# Hosts of amoCRM itself that are never an account: the marketing/authorize site, the API
# gateways named in JWTs (api-a, api-b, api-c, ...), developer docs.
_RESERVED = re.compile(r"^(www|api|api-[a-z0-9]+|developers|help|id|auth|oauth|static)$")
_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")

# Where subdomain discovery is asked when a token carries no ``api_domain`` claim.
_FALLBACK_API_DOMAIN = {"amocrm.ru": "api-b.amocrm.ru", "amocrm.com": "api-c.amocrm.com"}


def _not_found(value: str, why: str) -> AmoInvalidDomain:
    shown = value if len(value) <= 80 else value[:80] + "…"
    return AmoInvalidDomain(f"{ACCOUNT_NOT_FOUND_MESSAGE} ({why}; got {shown!r})")


@dataclass(frozen=True)
class AccountDomain:
    """An amoCRM/Kommo account: ``subdomain`` on ``base_domain`` (amocrm.ru, amocrm.com, kommo.com)."""

    subdomain: str
    base_domain: str = DEFAULT_BASE_DOMAIN

    def __post_init__(self) -> None:
        if self.base_domain not in BASE_DOMAINS:
            raise _not_found(
                self.base_domain, f"base domain must be one of {', '.join(BASE_DOMAINS)}"
            )
        if not _LABEL.match(self.subdomain):
            raise _not_found(self.subdomain, "a subdomain is letters, digits and dashes")
        if _RESERVED.match(self.subdomain):
            raise _not_found(
                self.subdomain, f"{self.subdomain}.{self.base_domain} is amoCRM's own host"
            )

    @property
    def host(self) -> str:
        return f"{self.subdomain}.{self.base_domain}"

    @property
    def base_url(self) -> str:
        return f"https://{self.host}"

    def __str__(self) -> str:
        return self.host


def parse_account_domain(
    value: str | AccountDomain, *, default_base_domain: str = DEFAULT_BASE_DOMAIN
) -> AccountDomain:
    """Parse ``acme``, ``acme.amocrm.ru``, ``https://acme.kommo.com/``, ``ACME.amocrm.com:443``
    or a ``referer`` value into an :class:`AccountDomain`.

    A bare subdomain gets ``default_base_domain``. Raises :class:`AmoInvalidDomain` (a
    ``ConfigurationError``) for amoCRM's own hosts (``www``, ``api-b.amocrm.ru``), other domains and
    malformed values.
    """
    if isinstance(value, AccountDomain):
        return value
    if not isinstance(value, str):
        raise _not_found(repr(value), "the account domain must be a string")
    raw = value.strip()
    if not raw:
        raise _not_found(value, "the account domain is empty")
    text = raw if "://" in raw else "https://" + raw
    try:
        parts = urlsplit(text)
        host = (parts.hostname or "").rstrip(".")
    except ValueError:
        raise _not_found(value, "not a host name") from None
    if not host:
        raise _not_found(value, "not a host name")
    if "." not in host:
        return AccountDomain(host, default_base_domain)
    for base in BASE_DOMAINS:
        if host == base:
            raise _not_found(value, f"{base} alone names no account")
        if host.endswith("." + base):
            sub = host[: -len(base) - 1]
            if "." in sub:
                raise _not_found(value, "an account host has exactly one label before the domain")
            return AccountDomain(sub, base)
    raise _not_found(value, f"not an amoCRM/Kommo host ({', '.join(BASE_DOMAINS)})")


def default_user_agent() -> str:
    """``amobridge/{version} (python-httpx/{version})``: amoCRM sees who calls."""
    from amobridge import __version__

    return f"amobridge/{__version__} (python-httpx/{httpx.__version__})"


def request_target(host: str, path: str, base_url: str | None) -> tuple[str, dict[str, str]]:
    """The URL to call for ``path`` on ``host`` and any extra headers.

    Normally ``https://{host}{path}``. With ``base_url`` (a sandbox on ``http://127.0.0.1:8010``)
    the request goes there and the ``Host`` header keeps naming the account.
    """
    if base_url is None:
        return f"https://{host}{path}", {}
    return base_url.rstrip("/") + path, {"Host": host}


# --- JWT claims ----------------------------------------------------------------------------------


def token_claims(token: str) -> dict[str, Any]:
    """The claims of an amoCRM access token (a JWT), read without verifying the signature;
    ``{}`` when the token is not a JWT (some long-lived tokens, test tokens)."""
    try:
        claims = jwt.decode(
            token,
            options={
                "verify_signature": False,
                "verify_exp": False,
                "verify_aud": False,
                "verify_nbf": False,
                "verify_iat": False,
            },
        )
    except jwt.PyJWTError:
        return {}
    return claims if isinstance(claims, dict) else {}


def api_domain_of(access_token: str | None, base_domain: str = DEFAULT_BASE_DOMAIN) -> str:
    """Where subdomain discovery is asked: the token's ``api_domain`` claim, else amoCRM's gateway
    for ``base_domain``."""
    claims = token_claims(access_token) if access_token else {}
    api_domain = claims.get("api_domain")
    if isinstance(api_domain, str) and api_domain.strip():
        return api_domain.strip().lower()
    base = claims.get("base_domain")
    if isinstance(base, str) and base in BASE_DOMAINS:
        base_domain = base
    return _FALLBACK_API_DOMAIN.get(base_domain, f"api-c.{base_domain}")


# --- subdomain discovery -------------------------------------------------------------------------


async def discover_subdomain(
    http: httpx.AsyncClient,
    *,
    api_domain: str,
    refresh_token: str,
    base_url: str | None = None,
) -> AccountDomain:
    """Which account a refresh token belongs to:
    ``GET https://{api_domain}/oauth2/account/current/subdomain`` with ``X-Refresh-Token``.

    Raises :class:`AmoInvalidDomain` when amoCRM does not know the token or answers something that
    names no account; transport failures raise httpx errors for the caller to translate (wrap the
    call in ``asyncio.timeout`` for a deadline).
    """
    url, headers = request_target(api_domain, "/oauth2/account/current/subdomain", base_url)
    headers["X-Refresh-Token"] = refresh_token
    headers["Accept"] = "application/json"
    response = await http.get(url, headers=headers)
    if response.status_code != 200:
        raise AmoInvalidDomain(
            f"{ACCOUNT_NOT_FOUND_MESSAGE} (subdomain discovery at {api_domain} answered "
            f"{response.status_code}; connect the integration again from the right account)"
        )
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("subdomain"), str):
        raise AmoInvalidDomain(
            f"{ACCOUNT_NOT_FOUND_MESSAGE} (subdomain discovery at {api_domain} named no account)"
        )
    return _domain_from_discovery(data)


def _domain_from_discovery(data: dict[str, Any]) -> AccountDomain:
    subdomain = str(data["subdomain"]).strip().lower()
    domain = data.get("domain")
    if isinstance(domain, str) and domain.strip():
        domain = domain.strip().lower()
        if domain.startswith(subdomain + "."):  # "acme.amocrm.ru"
            return parse_account_domain(domain)
        if domain in BASE_DOMAINS:  # "amocrm.ru"
            return AccountDomain(subdomain, domain)
    tld = data.get("top_level_domain")
    if isinstance(tld, str):
        tld = tld.strip().lower().lstrip(".")
        for base in BASE_DOMAINS:
            if base == tld or base.endswith("." + tld):
                return AccountDomain(subdomain, base)
    return AccountDomain(subdomain, DEFAULT_BASE_DOMAIN)
