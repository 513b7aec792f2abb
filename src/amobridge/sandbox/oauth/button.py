"""The website button (https://www.amocrm.ru/developers/content/oauth/button): the script, and
the metadata mode that creates an integration per install and POSTs its credentials to the
integrator's ``secrets_uri`` **before** the redirect, aborting on anything but a 200 (amoCRM
does not document the reply it expects; one report saw a 204 make the popup fail).

``POST /_sandbox/button-install`` is a browser's Allow on such a button, without the browser.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from amobridge.sandbox import control
from amobridge.sandbox.control import (
    ControlError,
    body_object,
    consent_redirect,
    get_account,
    reject_unknown,
)
from amobridge.sandbox.oauth.outbound import record_outbound, transport_failure
from amobridge.sandbox.oauth.pages import static_file
from amobridge.sandbox.oauth.urls import is_http_url
from amobridge.sandbox.state import Account, Integration

if TYPE_CHECKING:
    from amobridge.sandbox.app import Sandbox

BUTTON_SCOPES = ("crm", "notifications")
"""What a metadata button may ask for (amoCRM allows only these two scopes there)."""
DEFAULT_BUTTON_SCOPES = ["crm"]
SECRETS_TIMEOUT = 10.0
"""Real seconds an integrator's ``secrets_uri`` has to answer (unverified: amoCRM's own limit)."""


@dataclass(frozen=True)
class ButtonMetadata:
    """What a metadata button (no ``data-client-id``) describes: the integration to create."""

    name: str
    redirect_uri: str
    secrets_uri: str
    scopes: list[str]
    description: str = ""
    logo: str | None = None


def button_metadata(
    sandbox: Sandbox,
    *,
    name: str | None,
    redirect_uri: str | None,
    secrets_uri: str | None,
    scopes: list[str] | None,
    description: str | None = None,
    logo: str | None = None,
) -> ButtonMetadata:
    """Check a metadata button's fields; ValueError says which one is wrong and why."""
    if not name or not name.strip():
        raise ValueError("name (data-name) is required")
    if len(name) > 255:
        raise ValueError("name (data-name) is longer than 255 characters")
    if not redirect_uri or not is_http_url(redirect_uri):
        raise ValueError("redirect_uri (data-redirect_uri) must be an http(s) URL")
    https_only = sandbox.config.secrets_uri_require_https
    if not secrets_uri or not is_http_url(secrets_uri, https_only=https_only):
        kind = "an https" if https_only else "an http(s)"
        raise ValueError(f"secrets_uri (data-secrets_uri) must be {kind} URL")
    if logo and not is_http_url(logo):
        raise ValueError("logo (data-logo) must be an http(s) URL")
    chosen = [s.strip() for s in scopes or [] if s.strip()] or list(DEFAULT_BUTTON_SCOPES)
    wrong = [s for s in chosen if s not in BUTTON_SCOPES]
    if wrong:
        raise ValueError(
            f"scopes (data-scopes) may be {', '.join(BUTTON_SCOPES)}; not {', '.join(wrong)}"
        )
    return ButtonMetadata(
        name=name.strip(),
        redirect_uri=redirect_uri,
        secrets_uri=secrets_uri,
        scopes=list(dict.fromkeys(chosen)),
        description=(description or "").strip(),
        logo=logo or None,
    )


class ButtonInstallError(Exception):
    """The secrets POST failed: nothing was installed; the message is what the popup shows."""


async def _post_secrets(
    sandbox: Sandbox,
    integration: Integration,
    account: Account,
    secrets_uri: str,
    state: str | None,
) -> None:
    """POST ``{client_id, client_secret, state}`` (JSON) to ``secrets_uri``; only a 200 passes."""
    entry = record_outbound(
        sandbox,
        {
            "kind": "secrets",
            "method": "POST",
            "url": secrets_uri,
            "client_id": integration.client_id,
            "account_id": account.id,
            "state": state,
            "status": None,
            "error": None,
        },
    )
    payload = {
        "client_id": integration.client_id,
        "client_secret": integration.client_secret,
        "state": state,
    }
    try:
        reply = await sandbox.outbound().post(secrets_uri, json=payload, timeout=SECRETS_TIMEOUT)
    except httpx.HTTPError as exc:
        entry["error"] = transport_failure(exc)
        raise ButtonInstallError(
            f"Не удалось передать ключи интеграции на secrets_uri ({entry['error']})"
        ) from None
    entry["status"] = reply.status_code
    if reply.status_code != 200:
        raise ButtonInstallError(
            f"Не удалось передать ключи интеграции на secrets_uri (Code {reply.status_code})"
        )


@dataclass(frozen=True)
class ButtonInstall:
    integration: Integration
    code: str
    redirect_url: str


async def install_from_button(
    sandbox: Sandbox, account: Account, meta: ButtonMetadata, state: str | None
) -> ButtonInstall:
    """What Allow does for a metadata button: create the integration in ``account``, POST
    its credentials to ``secrets_uri``, and only after an exactly-200 reply issue the code. Any
    other outcome deletes the new integration and raises :class:`ButtonInstallError`."""
    integration = sandbox.state.create_integration(
        meta.name,
        meta.redirect_uri,
        scopes=meta.scopes,
        created_in_account_id=account.id,
    )
    try:
        await _post_secrets(sandbox, integration, account, meta.secrets_uri, state)
    except ButtonInstallError:
        sandbox.state.integrations.pop(integration.client_id, None)
        raise
    code, url = consent_redirect(sandbox, integration, account, state)
    return ButtonInstall(integration, code, url)


async def button_script(request: Request) -> Response:
    """amoCRM's ``button.min.js`` and Kommo's ``button.js`` are one script that handles both
    ``amocrm_oauth`` and ``kommo_oauth`` tags."""
    return Response(
        static_file("button.min.js"),
        media_type="application/javascript; charset=utf-8",
        headers={"Cache-Control": "no-cache", "Access-Control-Allow-Origin": "*"},
    )


async def button_install(request: Request, sandbox: Sandbox) -> Response:
    """A browser Allow on a metadata button, without the browser:
    ``{account_id, name, redirect_uri, secrets_uri, state?, scopes?, description?, logo?}``."""
    data = await body_object(request)
    reject_unknown(
        data,
        {
            "account_id",
            "name",
            "redirect_uri",
            "secrets_uri",
            "state",
            "scopes",
            "description",
            "logo",
        },
    )
    account = get_account(sandbox, control.field(data, "account_id", int))
    scopes = control.field(data, "scopes", list, required=False)
    if scopes is not None and not all(isinstance(s, str) for s in scopes):
        raise ControlError(422, "scopes must be a list of strings")
    try:
        meta = button_metadata(
            sandbox,
            name=control.field(data, "name", str),
            redirect_uri=control.field(data, "redirect_uri", str),
            secrets_uri=control.field(data, "secrets_uri", str),
            scopes=scopes,
            description=control.field(data, "description", str, required=False),
            logo=control.field(data, "logo", str, required=False),
        )
    except ValueError as exc:
        raise ControlError(422, str(exc)) from None
    try:
        installed = await install_from_button(
            sandbox, account, meta, control.field(data, "state", str, required=False)
        )
    except ButtonInstallError as exc:
        raise ControlError(502, str(exc)) from None
    return JSONResponse(
        {
            "client_id": installed.integration.client_id,
            "code": installed.code,
            "redirect_url": installed.redirect_url,
        },
        status_code=201,
    )
