"""amoCRM's OAuth side (§1–§4): the consent page, the token endpoint, subdomain discovery, the
website button with auto-created integrations, and the uninstall (disconnect) hook.

- ``GET /oauth`` and ``/oauth/`` (on ``www``/bare hosts; the account-host form by setting) show a
  consent page; Allow/Deny post back with a single-use nonce and land on the integration's
  ``redirect_uri`` (plain navigation, ``mode=popup`` through the opener, ``mode=post_message`` as a
  message to the opener).
- ``POST /oauth2/access_token`` exchanges codes and refresh tokens through
  :class:`~amobridge.sandbox.tokens.TokenAuthority`, JSON or form bodies, with amoCRM's
  ``OAuthProblemJson`` errors; every call passes fault injection and lands in the request log.
- ``GET /oauth2/account/current/subdomain`` answers which account a refresh token belongs to.
- ``/auth/button.min.js`` (amoCRM) and ``/auth/button.js`` (Kommo) render the website button; its
  metadata mode creates an integration per install and POSTs the new credentials to
  ``secrets_uri`` **before** the redirect, aborting on anything but a 200.
- Control: ``POST /_sandbox/button-install``, ``POST /_sandbox/integrations/{id}/uninstall``,
  ``GET /_sandbox/outbound``; ``GET /_sandbox/demo/callback`` is the demo integration's landing page.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from amobridge.sandbox import control
from amobridge.sandbox.control import (
    ControlError,
    body_object,
    consent_redirect,
    control_endpoint,
    get_account,
    get_integration,
    reject_unknown,
)
from amobridge.sandbox.http import (
    PROBLEM_JSON,
    DropConnection,
    dumps,
    fault_response,
    problem,
    recorded_endpoint,
    resolve_host,
)
from amobridge.sandbox.state import Account, Integration, RequestRecord, platform_of
from amobridge.sandbox.tokens import OAuthError, TokenPair, fingerprint

if TYPE_CHECKING:
    from amobridge.sandbox.app import Sandbox

MODES = ("popup", "post_message")
BUTTON_SCOPES = ("crm", "notifications")
"""What a metadata button may ask for (§3)."""
DEFAULT_BUTTON_SCOPES = ["crm"]
SCOPE_LABELS = {
    "crm": "Доступ к данным аккаунта: сделки, контакты, компании, задачи",
    "files": "Доступ к файлам",
    "files_delete": "Удаление файлов",
    "notifications": "Уведомления в аккаунте",
    "push_notifications": "Push-уведомления",
}
SECRETS_TIMEOUT = 10.0
"""Real seconds an integrator's ``secrets_uri`` has to answer (unverified: amoCRM's own limit)."""
DISCONNECT_TIMEOUT = 5.0
"""Real seconds the disconnect hook gets; the reply is ignored either way (§4)."""
CONSENT_TTL = 3600
"""Sandbox seconds a consent page stays answerable (its nonce expires after that)."""
MAX_PENDING_CONSENTS = 10_000
MAX_LOGGED_FIELD = 128
"""Longest ``client_id`` / ``grant_type`` kept in the request log (bodies are untrusted)."""


# --- pages ---------------------------------------------------------------------------------------


@functools.cache
def _templates() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("amobridge.sandbox", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
    )


def _page(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    html = _templates().get_template(template).render(**context)
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})


def _error_page(status: int, title: str, message: str) -> HTMLResponse:
    return _page("error.html", status, title=title, message=message, http_status=status)


def _not_found_page() -> HTMLResponse:
    return _error_page(404, "404 Not Found", "Страница не найдена.")


@functools.cache
def _static(name: str) -> bytes:
    return resources.files("amobridge.sandbox").joinpath("static", name).read_bytes()


# --- URLs ----------------------------------------------------------------------------------------


def _is_http_url(value: str, *, https_only: bool = False) -> bool:
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    schemes = ("https",) if https_only else ("http", "https")
    return parts.scheme in schemes and bool(parts.hostname)


def _origin_of(url: str) -> str | None:
    """``scheme://host[:port]`` of an http(s) URL, or None."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}"


def _with_query(uri: str, params: dict[str, Any]) -> str:
    clean = {k: v for k, v in params.items() if v is not None}
    return uri + ("&" if "?" in uri else "?") + urlencode(clean)


# --- button metadata -----------------------------------------------------------------------------


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
    if not redirect_uri or not _is_http_url(redirect_uri):
        raise ValueError("redirect_uri (data-redirect_uri) must be an http(s) URL")
    https_only = sandbox.config.secrets_uri_require_https
    if not secrets_uri or not _is_http_url(secrets_uri, https_only=https_only):
        kind = "an https" if https_only else "an http(s)"
        raise ValueError(f"secrets_uri (data-secrets_uri) must be {kind} URL")
    if logo and not _is_http_url(logo):
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


# --- outbound calls: secrets POST and disconnect GET ---------------------------------------------


class ButtonInstallError(Exception):
    """The secrets POST failed: nothing was installed; the message is what the popup shows."""


def _record_outbound(sandbox: Sandbox, entry: dict[str, Any]) -> dict[str, Any]:
    entry["seq"] = len(sandbox.state.outbound_log) + 1
    entry["time"] = sandbox.clock.now()
    sandbox.state.outbound_log.append(entry)
    return entry


def _failure(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.ConnectError):
        return "connection refused"
    return f"transport error ({type(exc).__name__})"


async def _post_secrets(
    sandbox: Sandbox,
    integration: Integration,
    account: Account,
    secrets_uri: str,
    state: str | None,
) -> None:
    """POST ``{client_id, client_secret, state}`` (JSON) to ``secrets_uri``; only a 200 passes."""
    entry = _record_outbound(
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
        entry["error"] = _failure(exc)
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
    """What Allow does for a metadata button (§3): create the integration in ``account``, POST
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


def disconnect_signature(client_secret: str, client_uuid: str, account_id: int) -> str:
    """§4: lowercase hex HMAC-SHA256 of ``"{client_uuid}|{account_id}"`` keyed with the secret."""
    message = f"{client_uuid}|{int(account_id)}".encode()
    return hmac.new(client_secret.encode(), message, hashlib.sha256).hexdigest()


async def send_disconnect(
    sandbox: Sandbox, integration: Integration, account: Account
) -> dict[str, Any]:
    """The signed GET to the integration's disconnect URL: sent once, the reply ignored."""
    assert integration.disconnect_url is not None
    params = {
        "account_id": str(account.id),
        "client_uuid": integration.client_id,
        "signature": disconnect_signature(
            integration.client_secret, integration.client_id, account.id
        ),
    }
    url = _with_query(integration.disconnect_url, params)
    entry = _record_outbound(
        sandbox,
        {
            "kind": "disconnect",
            "method": "GET",
            "url": url,
            "client_id": integration.client_id,
            "account_id": account.id,
            "status": None,
            "error": None,
        },
    )
    try:
        reply = await sandbox.outbound().get(url, timeout=DISCONNECT_TIMEOUT)
    except httpx.HTTPError as exc:
        entry["error"] = _failure(exc)
        return {"error": entry["error"]}
    entry["status"] = reply.status_code
    return {"status": reply.status_code}


# --- the consent page ----------------------------------------------------------------------------


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
        return _not_found_page()
    if request.method == "POST":
        return await _consent_answer(request, sandbox)
    return _consent_page(request, sandbox, host_account)


def _consent_page(request: Request, sandbox: Sandbox, host_account: Account | None) -> Response:
    query = request.query_params
    client_id = query.get("client_id", "").strip() or None
    integration: Integration | None = None
    meta: ButtonMetadata | None = None
    if client_id is not None:
        integration = sandbox.state.integrations.get(client_id)
        if integration is None:
            return _error_page(
                400,
                "Интеграция не найдена",
                "Интеграция с таким client_id не существует. Проверьте параметр client_id.",
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
            return _error_page(400, "Некорректная кнопка", str(exc))
    else:
        return _error_page(400, "Некорректный запрос", "Не передан параметр client_id.")

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
        origin=_origin_of(query.get("origin", "")),
        error_callback=query.get("error_callback") == "1",
        account_ids=[a.id for a in accounts],
    )
    nonce = _store_consent(sandbox, pending)
    selected = _preselect(request, accounts)
    scopes = integration.scopes if integration is not None else (meta.scopes if meta else [])
    return _page(
        "consent.html",
        nonce=nonce,
        action=request.url.path,
        create=meta is not None,
        name=integration.name if integration is not None else (meta.name if meta else ""),
        description=meta.description if meta else "",
        logo=meta.logo if meta else None,
        scopes=[{"code": s, "label": SCOPE_LABELS.get(s, s)} for s in scopes],
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
        return _error_page(
            400,
            "Страница устарела",
            "Эта страница согласия уже использована или устарела. Откройте её заново.",
        )
    integration = sandbox.state.integrations.get(pending.client_id) if pending.client_id else None
    if pending.client_id is not None and integration is None:
        return _error_page(400, "Интеграция не найдена", "Интеграция была удалена.")
    redirect_uri = (
        integration.redirect_uri
        if integration
        else (pending.meta.redirect_uri if pending.meta else "")
    )
    target_origin = pending.origin or _origin_of(redirect_uri) or "*"

    if form.get("decision") != "allow":
        url = _with_query(redirect_uri, {"error": "access_denied", "state": pending.state})
        message: dict[str, Any] = {"error": "access_denied", "client_id": pending.client_id}
        if pending.state is not None:
            message["state"] = pending.state
        return _finish(pending, url, message, target_origin, denied=True)

    account_id = _int(form.get("account_id"))
    account = sandbox.state.accounts.get(account_id) if account_id is not None else None
    if account is None or account.id not in pending.account_ids:
        return _error_page(400, "Аккаунт не выбран", "Выберите аккаунт из списка.")

    if integration is not None:
        code, url = consent_redirect(sandbox, integration, account, pending.state)
        client_id = integration.client_id
    else:
        assert pending.meta is not None
        try:
            installed = await install_from_button(sandbox, account, pending.meta, pending.state)
        except ButtonInstallError as exc:
            return _error_page(502, "Не удалось установить интеграцию", str(exc))
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
    return _page("finish.html", data=data, url=url, denied=denied)


# --- the token endpoint --------------------------------------------------------------------------


def _oauth_problem(error: OAuthError) -> Response:
    return Response(dumps(error.body()), status_code=error.status, media_type=PROBLEM_JSON)


def _json_fields(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise OAuthError.bad_request("Request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise OAuthError.bad_request("Request body must be a JSON object")
    return data


def _form_fields(raw: bytes) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
        return dict(parse_qsl(text, keep_blank_values=True, max_num_fields=50))
    except (UnicodeDecodeError, ValueError):
        raise OAuthError.bad_request("Request body is not valid form data") from None


async def _token_fields(request: Request) -> dict[str, Any]:
    """The body as a dict: JSON (the docs) or form-urlencoded (the PHP SDK), sniffed when the
    content type says neither."""
    raw = await request.body()
    if not raw.strip():
        raise OAuthError.bad_request("Check that all required parameters have been provided")
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type == "application/json" or content_type.endswith("+json"):
        return _json_fields(raw)
    if content_type == "application/x-www-form-urlencoded":
        return _form_fields(raw)
    if content_type in ("", "text/plain", "application/octet-stream"):
        if raw.lstrip()[:1] == b"{":
            return _json_fields(raw)
        return _form_fields(raw)
    raise OAuthError.bad_request(
        "Unsupported content type: send application/json or application/x-www-form-urlencoded"
    )


def _optional(fields: dict[str, Any], name: str) -> str | None:
    value = fields.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise OAuthError.bad_request(f"Check the `{name}` parameter")
    return value


def _required(fields: dict[str, Any], name: str) -> str:
    value = _optional(fields, name)
    if value is None:
        raise OAuthError.bad_request(f"Check the `{name}` parameter")
    return value


def _clip(value: Any) -> str | None:
    return value[:MAX_LOGGED_FIELD] if isinstance(value, str) and value else None


async def _with_faults(
    sandbox: Sandbox,
    request: Request,
    record: RequestRecord,
    serve: Any,
) -> Response | DropConnection:
    """Run fault injection around ``serve`` (phase "before", then "after") as the API does."""
    account_id, client_id = record.account_id, record.client_id
    rule = sandbox.faults.match(
        "before",
        method=request.method,
        path=request.url.path,
        account_id=account_id,
        client_id=client_id,
    )
    if rule is not None and rule.kind == "slow":
        record.fault = "slow"
        await asyncio.sleep(rule.delay)
    elif rule is not None:
        record.fault = rule.kind
        if rule.kind == "revoke":
            # On the token endpoint a revoked grant reads as OAuth's "Token has been revoked".
            if client_id is not None and account_id is not None:
                sandbox.tokens.revoke_integration(client_id, account_id)
            return _oauth_problem(OAuthError.revoked())
        return await fault_response(sandbox, rule, account_id=account_id, client_id=client_id)

    response: Response = await serve()

    after = sandbox.faults.match(
        "after",
        method=request.method,
        path=request.url.path,
        account_id=record.account_id,
        client_id=record.client_id,
    )
    if after is None:
        return response
    record.fault = f"{after.kind}-after"
    return await fault_response(
        sandbox, after, account_id=record.account_id, client_id=record.client_id, served=response
    )


async def _access_token(
    sandbox: Sandbox, request: Request, record: RequestRecord
) -> Response | DropConnection:
    """``POST /oauth2/access_token`` (§2.2, §2.3)."""
    host = resolve_host(sandbox, request)
    fields: dict[str, Any] = {}
    parse_error: OAuthError | None = None
    try:
        fields = await _token_fields(request)
    except OAuthError as exc:
        parse_error = exc
    grant_type = fields.get("grant_type")
    code = fields.get("code") if grant_type == "authorization_code" else None
    refresh = fields.get("refresh_token") if grant_type == "refresh_token" else None
    record.grant_type = _clip(grant_type)
    record.client_id = _clip(fields.get("client_id"))
    if isinstance(refresh, str) and refresh:
        record.refresh_token_fingerprint = fingerprint(refresh)
    if host.account is not None:
        record.account_id = host.account.id
    elif isinstance(code, str) and code in sandbox.state.codes:
        record.account_id = sandbox.state.codes[code].account_id
    elif isinstance(refresh, str) and refresh in sandbox.state.refresh_tokens:
        record.account_id = sandbox.state.refresh_tokens[refresh].account_id

    if host.named and host.account is None:  # www, api-b, a typo, the wrong base domain
        return _oauth_problem(OAuthError.bad_request("Invalid account"))

    async def serve() -> Response:
        try:
            if parse_error is not None:
                raise parse_error
            pair = _grant(sandbox, fields, host.account)
        except OAuthError as exc:
            return _oauth_problem(exc)
        record.account_id = pair.access.account_id
        body = pair.response(sandbox.config, sandbox.clock.now_int())
        return Response(
            dumps(body),
            media_type="application/json",
            headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
        )

    return await _with_faults(sandbox, request, record, serve)


def _grant(sandbox: Sandbox, fields: dict[str, Any], host_account: Account | None) -> TokenPair:
    grant_type = _required(fields, "grant_type")
    if grant_type not in ("authorization_code", "refresh_token"):
        raise OAuthError.bad_request(
            "The authorization grant type is not supported by the authorization server"
        )
    client_id = _required(fields, "client_id")
    client_secret = _required(fields, "client_secret")
    redirect_uri = _optional(fields, "redirect_uri")
    if grant_type == "authorization_code":
        return sandbox.tokens.exchange_code(
            client_id=client_id,
            client_secret=client_secret,
            code=_required(fields, "code"),
            redirect_uri=redirect_uri,
            host_account=host_account,
        )
    return sandbox.tokens.refresh(
        client_id=client_id,
        client_secret=client_secret,
        refresh_token=_required(fields, "refresh_token"),
        redirect_uri=redirect_uri,
        host_account=host_account,
    )


# --- subdomain discovery -------------------------------------------------------------------------


async def _current_subdomain(
    sandbox: Sandbox, request: Request, record: RequestRecord
) -> Response | DropConnection:
    """``GET /oauth2/account/current/subdomain`` with ``X-Refresh-Token`` (§1), on ``api-*``
    hosts (and bare ones): the account a live refresh token belongs to."""
    host = resolve_host(sandbox, request)
    if host.named and not host.host.startswith("api-"):
        return problem(404, f"Cannot GET {request.url.path}", title="Not Found")
    token = request.headers.get("x-refresh-token", "").strip()
    found = sandbox.state.refresh_tokens.get(token) if token else None
    if token:
        record.refresh_token_fingerprint = fingerprint(token)
    if found is not None:
        record.account_id, record.client_id = found.account_id, found.client_id

    async def serve() -> Response:
        if found is None or found.revoked or found.spent_at is not None:
            return problem(401, "Refresh token is invalid or has been revoked")
        if sandbox.clock.now() >= found.expires_at:
            return problem(401, "Refresh token has expired")
        integration = sandbox.state.integrations.get(found.client_id)
        if integration is None or not integration.installs.get(found.account_id, False):
            return problem(401, "Refresh token is invalid or has been revoked")
        account = sandbox.state.accounts[found.account_id]
        return JSONResponse(
            {
                "id": account.id,
                "subdomain": account.subdomain,
                "domain": account.host,
                "top_level_domain": account.base_domain.rsplit(".", 1)[-1],
            }
        )

    return await _with_faults(sandbox, request, record, serve)


# --- button script and demo page -----------------------------------------------------------------


async def button_script(request: Request) -> Response:
    """The website button (§3): amoCRM's ``button.min.js`` and Kommo's ``button.js`` are one
    script that handles both ``amocrm_oauth`` and ``kommo_oauth`` tags."""
    return Response(
        _static("button.min.js"),
        media_type="application/javascript; charset=utf-8",
        headers={"Cache-Control": "no-cache", "Access-Control-Allow-Origin": "*"},
    )


async def demo_callback(request: Request) -> Response:
    """Where the demo integration lands: shows what arrived (never a client secret)."""
    sandbox: Sandbox = request.app.state.sandbox
    query = request.query_params
    params: dict[str, str] = {}
    for key in ("code", "referer", "state", "platform", "client_id", "error"):
        value = query.get(key)
        if value is not None:
            params[key] = value
    base = f"{request.url.scheme}://{request.url.netloc}"
    referer = params.get("referer", "")
    account = sandbox.state.account_by_host(referer) if referer else None
    integration = sandbox.state.integrations.get(params.get("client_id", ""))
    return _page(
        "demo_callback.html",
        params=params,
        base=base,
        referer=referer,
        account_known=account is not None,
        redirect_uri=integration.redirect_uri if integration is not None else "",
    )


# --- control routes ------------------------------------------------------------------------------


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


async def uninstall(request: Request, sandbox: Sandbox) -> Response:
    """Disable an integration in an account (§2.2, §4): ``{account_id}``."""
    integration = get_integration(sandbox, request.path_params["client_id"])
    data = await body_object(request)
    reject_unknown(data, {"account_id"})
    account = get_account(sandbox, control.field(data, "account_id", int))
    if not integration.installs.get(account.id, False):
        raise ControlError(409, f"integration is not installed in account {account.id}")
    integration.installs[account.id] = False
    revoked = sandbox.tokens.revoke_integration(integration.client_id, account.id)
    disconnect = None
    if integration.disconnect_url:
        disconnect = await send_disconnect(sandbox, integration, account)
    return JSONResponse({"revoked": revoked, "disconnect": disconnect})


async def outbound(request: Request, sandbox: Sandbox) -> Response:
    """What the sandbox sent to integrations: ``?kind=secrets|disconnect``."""
    kind = request.query_params.get("kind")
    if kind is not None and kind not in ("secrets", "disconnect"):
        raise ControlError(400, "kind must be secrets or disconnect")
    return JSONResponse(
        [dict(e) for e in sandbox.state.outbound_log if kind is None or e["kind"] == kind]
    )


def routes() -> list[BaseRoute]:
    return [
        Route("/oauth", consent, methods=["GET", "POST"]),
        Route("/oauth/", consent, methods=["GET", "POST"]),
        Route("/oauth2/access_token", access_token, methods=["POST"]),
        Route("/oauth2/account/current/subdomain", current_subdomain, methods=["GET"]),
        Route("/auth/button.min.js", button_script, methods=["GET"]),
        Route("/auth/button.js", button_script, methods=["GET"]),
        Route("/_sandbox/demo/callback", demo_callback, methods=["GET"]),
    ]


def control_routes() -> list[BaseRoute]:
    c = control_endpoint
    return [
        Route("/_sandbox/button-install", c(button_install), methods=["POST"]),
        Route("/_sandbox/integrations/{client_id}/uninstall", c(uninstall), methods=["POST"]),
        Route("/_sandbox/outbound", c(outbound), methods=["GET"]),
    ]


# Both go into the request log like API calls (the refresh-storm proofs count them there).
access_token = recorded_endpoint(_access_token)
current_subdomain = recorded_endpoint(_current_subdomain)
