"""The token endpoint: ``POST /oauth2/access_token`` exchanges codes and refresh
tokens through :class:`~amobridge.sandbox.tokens.TokenAuthority`, JSON or form bodies, with
amoCRM's ``OAuthProblemJson`` errors; every call passes fault injection and lands in the request
log (the refresh-storm proofs count token calls there). amoCRM documents the endpoint at
https://www.amocrm.ru/developers/content/oauth/step-by-step."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response

from amobridge.sandbox.http import DropConnection, dumps, recorded_endpoint, resolve_host
from amobridge.sandbox.oauth.faults import oauth_problem, with_faults
from amobridge.sandbox.state import Account, RequestRecord
from amobridge.sandbox.tokens import OAuthError, TokenPair, fingerprint

if TYPE_CHECKING:
    from amobridge.sandbox.app import Sandbox

MAX_LOGGED_FIELD = 128
"""Longest ``client_id`` / ``grant_type`` kept in the request log (bodies are untrusted)."""


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


async def _access_token(
    sandbox: Sandbox, request: Request, record: RequestRecord
) -> Response | DropConnection:
    """``POST /oauth2/access_token``."""
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
        return oauth_problem(OAuthError.bad_request("Invalid account"))

    async def serve() -> Response:
        try:
            if parse_error is not None:
                raise parse_error
            pair = _grant(sandbox, fields, host.account)
        except OAuthError as exc:
            return oauth_problem(exc)
        record.account_id = pair.access.account_id
        body = pair.response(sandbox.config, sandbox.clock.now_int())
        return Response(
            dumps(body),
            media_type="application/json",
            headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
        )

    return await with_faults(sandbox, request, record, serve)


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


access_token = recorded_endpoint(_access_token)
