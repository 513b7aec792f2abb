"""The consent page: ``GET /oauth`` and ``/oauth/`` show it (on ``www``/bare hosts; the
account-host form by setting); Allow/Deny post back with a single-use nonce and land on the
integration's ``redirect_uri``: plain navigation, ``mode=popup`` through the opener,
``mode=post_message`` as a message to the opener. A metadata button (no ``client_id``) creates
its integration on Allow (:mod:`amobridge.sandbox.oauth.button`). The page, and what answers
its form, speak the language the page was shown in (``?lang=``, else ``Accept-Language``).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from amobridge.i18n import Lang, Texts
from amobridge.sandbox.control import consent_redirect
from amobridge.sandbox.http import resolve_host
from amobridge.sandbox.oauth.button import (
    ButtonInstallError,
    ButtonMetadata,
    button_metadata,
    install_from_button,
)
from amobridge.sandbox.oauth.pages import error_page, not_found_page, page, page_language
from amobridge.sandbox.oauth.urls import origin_of, with_query
from amobridge.sandbox.state import Account, Integration, platform_of

if TYPE_CHECKING:
    from amobridge.sandbox.app import Sandbox

MODES = ("popup", "post_message")
SCOPES = ("crm", "files", "files_delete", "notifications", "push_notifications")
"""Scopes the consent page names in words (``sandbox.scope.<scope>`` in the catalogue)."""
CONSENT_TTL = 3600
"""Sandbox seconds a consent page stays answerable (its nonce expires after that)."""
MAX_PENDING_CONSENTS = 10_000


@dataclass
class PendingConsent:
    """A consent page waiting for Allow or Deny (kept server-side, found by its nonce)."""

    created_at: float
    client_id: str | None
    meta: ButtonMetadata | None
    state: str | None
    mode: str | None
    origin: str | None
    error_callback: bool
    account_ids: list[int] = field(default_factory=list)
    lang: Lang = "ru"


def _authorize_host(sandbox: Sandbox, request: Request) -> tuple[bool, Account | None]:
    """(whether this host serves the consent page, the account it is fixed to).

    ``www.amocrm.ru``-style and bare hosts serve it for every account; the account-host form
    ``{sub}.amocrm.ru/oauth`` only with ``account_host_authorize`` (then for that account only).
    """
    host = resolve_host(sandbox, request)
    if not host.named:
        return True, None
    if host.host.split(".", 1)[0] == "www":
        return True, None
    if host.account is not None and sandbox.config.account_host_authorize:
        return True, host.account
    return False, None


def _store_consent(sandbox: Sandbox, pending: PendingConsent) -> str:
    consents = sandbox.state.consents
    horizon = sandbox.clock.now() - CONSENT_TTL
    for nonce in [n for n, p in consents.items() if p.created_at < horizon]:
        del consents[nonce]
    while len(consents) >= MAX_PENDING_CONSENTS:
        del consents[next(iter(consents))]
    nonce = secrets.token_urlsafe(24)
    consents[nonce] = pending
    return nonce


def _take_consent(sandbox: Sandbox, nonce: str) -> PendingConsent | None:
    pending = sandbox.state.consents.pop(nonce, None)
    if not isinstance(pending, PendingConsent):
        return None
    if sandbox.clock.now() - pending.created_at > CONSENT_TTL:
        return None
    return pending


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:  # not a number, or longer than Python parses
        return None


def _preselect(request: Request, accounts: list[Account]) -> int | None:
    query = request.query_params
    wanted_id = _int(query.get("account_id"))
    for account in accounts:
        if account.id == wanted_id:
            return account.id
    wanted_sub = query.get("subdomain", "").strip().lower()
    if wanted_sub:
        for account in accounts:
            if wanted_sub in (account.subdomain, account.host):
                return account.id
    return accounts[0].id if accounts else None


def _scopes_param(request: Request) -> list[str]:
    values = request.query_params.getlist("scopes") + request.query_params.getlist("scopes[]")
    return [s for value in values for s in value.split(",")]


async def consent(request: Request) -> Response:
    sandbox: Sandbox = request.app.state.sandbox
    served, host_account = _authorize_host(sandbox, request)
    if not served:
        return not_found_page(page_language(request))
    if request.method == "POST":
        return await _consent_answer(request, sandbox)
    return _consent_page(request, sandbox, host_account)


def _consent_page(request: Request, sandbox: Sandbox, host_account: Account | None) -> Response:
    query = request.query_params
    lang = page_language(request)
    t = Texts(lang)
    client_id = query.get("client_id", "").strip() or None
    integration: Integration | None = None
    meta: ButtonMetadata | None = None
    if client_id is not None:
        integration = sandbox.state.integrations.get(client_id)
        if integration is None:
            return error_page(
                400,
                t.plain("sandbox.error.no_integration"),
                t.plain("sandbox.error.no_integration_why"),
                lang=lang,
            )
    elif any(query.get(k) for k in ("name", "redirect_uri", "secrets_uri")):
        try:
            meta = button_metadata(
                sandbox,
                name=query.get("name"),
                redirect_uri=query.get("redirect_uri"),
                secrets_uri=query.get("secrets_uri"),
                scopes=_scopes_param(request),
                description=query.get("description"),
                logo=query.get("logo"),
            )
        except ValueError as exc:
            return error_page(400, t.plain("sandbox.error.bad_button"), str(exc), lang=lang)
    else:
        return error_page(
            400,
            t.plain("sandbox.error.bad_request"),
            t.plain("sandbox.error.no_client_id"),
            lang=lang,
        )

    accounts = sorted(sandbox.state.accounts.values(), key=lambda a: a.id)
    if host_account is not None:
        accounts = [host_account]
    if integration is not None and integration.created_in_account_id is not None:
        # A button-made integration belongs to the account it was installed in.
        accounts = [a for a in accounts if a.id == integration.created_in_account_id]
    mode = query.get("mode")
    pending = PendingConsent(
        created_at=sandbox.clock.now(),
        client_id=client_id,
        meta=meta,
        state=query.get("state"),
        mode=mode if mode in MODES else None,
        origin=origin_of(query.get("origin", "")),
        error_callback=query.get("error_callback") == "1",
        account_ids=[a.id for a in accounts],
        lang=lang,
    )
    nonce = _store_consent(sandbox, pending)
    selected = _preselect(request, accounts)
    scopes = integration.scopes if integration is not None else (meta.scopes if meta else [])
    return page(
        "consent.html",
        lang=lang,
        nonce=nonce,
        action=request.url.path,
        create=meta is not None,
        name=integration.name if integration is not None else (meta.name if meta else ""),
        description=meta.description if meta else "",
        logo=meta.logo if meta else None,
        scopes=[
            {"code": s, "label": t.plain(f"sandbox.scope.{s}") if s in SCOPES else s}
            for s in scopes
        ],
        accounts=[
            {"id": a.id, "name": a.name, "host": a.host, "selected": a.id == selected}
            for a in accounts
        ],
    )


async def _form(request: Request) -> dict[str, str]:
    raw = await request.body()
    try:
        return dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True, max_num_fields=20))
    except (UnicodeDecodeError, ValueError):
        return {}


async def _consent_answer(request: Request, sandbox: Sandbox) -> Response:
    form = await _form(request)
    pending = _take_consent(sandbox, form.get("nonce", ""))
    if pending is None:
        lang = page_language(request)
        t = Texts(lang)
        return error_page(
            400, t.plain("sandbox.error.stale"), t.plain("sandbox.error.stale_why"), lang=lang
        )
    lang, t = pending.lang, Texts(pending.lang)
    integration = sandbox.state.integrations.get(pending.client_id) if pending.client_id else None
    if pending.client_id is not None and integration is None:
        return error_page(
            400,
            t.plain("sandbox.error.no_integration"),
            t.plain("sandbox.error.integration_deleted"),
            lang=lang,
        )
    redirect_uri = (
        integration.redirect_uri
        if integration
        else (pending.meta.redirect_uri if pending.meta else "")
    )
    target_origin = pending.origin or origin_of(redirect_uri) or "*"

    if form.get("decision") != "allow":
        url = with_query(redirect_uri, {"error": "access_denied", "state": pending.state})
        message: dict[str, Any] = {"error": "access_denied", "client_id": pending.client_id}
        if pending.state is not None:
            message["state"] = pending.state
        return _finish(pending, url, message, target_origin, denied=True)

    account_id = _int(form.get("account_id"))
    account = sandbox.state.accounts.get(account_id) if account_id is not None else None
    if account is None or account.id not in pending.account_ids:
        return error_page(
            400,
            t.plain("sandbox.error.no_account"),
            t.plain("sandbox.error.no_account_why"),
            lang=lang,
        )

    if integration is not None:
        code, url = consent_redirect(sandbox, integration, account, pending.state)
        client_id = integration.client_id
    else:
        assert pending.meta is not None
        try:
            installed = await install_from_button(sandbox, account, pending.meta, pending.state)
        except ButtonInstallError as exc:
            return error_page(502, t.plain("sandbox.error.install_failed"), str(exc), lang=lang)
        code, url, client_id = (
            installed.code,
            installed.redirect_url,
            installed.integration.client_id,
        )
    message = {
        "code": code,
        "referer": account.host,
        "platform": str(platform_of(account.base_domain)),
        "client_id": client_id,
    }
    if pending.state is not None:
        message["state"] = pending.state
    return _finish(pending, url, message, target_origin, denied=False)


def _finish(
    pending: PendingConsent,
    url: str,
    message: dict[str, Any],
    target_origin: str,
    *,
    denied: bool,
) -> Response:
    """Plain navigation answers 303; the popup modes answer a page whose script talks to the
    opener (navigates it, or posts ``message`` to it) and closes the popup."""
    if pending.mode is None:
        return RedirectResponse(url, status_code=303, headers={"Cache-Control": "no-store"})
    notify = pending.mode == "post_message" or (denied and pending.error_callback)
    data = {
        "mode": pending.mode,
        "notify": notify,
        "url": url,
        "message": message,
        "target_origin": target_origin,
    }
    return page("finish.html", lang=pending.lang, data=data, url=url, denied=denied)
