"""Read a hand-built integration's single-account ``.env`` (``AMOCRM_*``, ``AMO_*``) for
``amobridge connections import-env``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dotenv import dotenv_values

from amobridge.settings import placeholder_problem

# Each value and the names hand-built integrations use for it, first match wins.
NAMES = {
    "domain": (
        "AMOCRM_DOMAIN",
        "AMO_DOMAIN",
        "AMOCRM_SUBDOMAIN",
        "AMO_SUBDOMAIN",
        "AMOCRM_BASE_URL",
    ),
    "access_token": ("AMOCRM_ACCESS_TOKEN", "AMO_ACCESS_TOKEN", "AMOCRM_LONG_LIVED_TOKEN"),
    "refresh_token": ("AMOCRM_REFRESH_TOKEN", "AMO_REFRESH_TOKEN"),
    "client_id": ("AMOCRM_CLIENT_ID", "AMO_CLIENT_ID", "AMOCRM_INTEGRATION_ID"),
    "client_secret": ("AMOCRM_CLIENT_SECRET", "AMO_CLIENT_SECRET", "AMOCRM_SECRET_KEY"),
    "redirect_uri": ("AMOCRM_REDIRECT_URI", "AMO_REDIRECT_URI"),
}


@dataclass
class LegacyEnv:
    domain: str
    access_token: str
    refresh_token: str | None
    client_id: str | None
    client_secret: str | None
    redirect_uri: str | None
    warnings: list[str] = field(default_factory=list)


def read_legacy_env(path: Path) -> LegacyEnv:
    raw = {k.upper(): (v or "").strip() for k, v in dotenv_values(path).items()}
    found: dict[str, str | None] = {}
    problems: list[str] = []
    for what, names in NAMES.items():
        value = next((raw[n] for n in names if raw.get(n)), None)
        name = next((n for n in names if raw.get(n)), None)
        if value is not None and name is not None:
            why = placeholder_problem(value)
            if why:
                problems.append(f"{name} {why}: put the real value there")
        found[what] = value
    if not found["domain"]:
        problems.append(f"no account domain: set one of {', '.join(NAMES['domain'])}")
    if not found["access_token"]:
        problems.append(
            "no access token (AMOCRM_ACCESS_TOKEN): get one through the OAuth flow "
            "(amobridge serve, then /amocrm/auth) instead of importing"
        )
    if found["refresh_token"] and not (found["client_id"] and found["client_secret"]):
        problems.append(
            "a refresh token needs AMOCRM_CLIENT_ID and AMOCRM_CLIENT_SECRET to be refreshed"
        )
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))
    warnings = []
    for name, value in raw.items():
        if name.startswith(("AMOCRM_STAGE", "AMO_STAGE", "AMOCRM_PIPELINE")):
            digits = value.split("#")[0].strip()
            if digits.isdigit() and placeholder_problem(int(digits)):
                warnings.append(
                    f"{name}={digits} is a placeholder id from an example: "
                    "choose stages by name in amobridge's rules instead"
                )
    domain = found["domain"] or ""
    if domain.startswith(("http://", "https://")):
        domain = domain.split("://", 1)[1]
    return LegacyEnv(
        domain=domain.strip("/"),
        access_token=found["access_token"] or "",
        refresh_token=found["refresh_token"],
        client_id=found["client_id"],
        client_secret=found["client_secret"],
        redirect_uri=found["redirect_uri"],
        warnings=warnings,
    )
