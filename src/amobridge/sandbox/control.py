"""The control API under ``/_sandbox/``: what tests, the demo and acceptance probes use to set the
sandbox up and look inside it. Stable: documented in ``docs/sandbox.md``.

Every body is JSON; errors are ``{"detail": "..."}`` with a 4xx status. When the config has a
``control_token``, every call needs ``Authorization: Bearer <control_token>``.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from amobridge.sandbox.faults import FaultSpecError
from amobridge.sandbox.state import BASE_DOMAINS, Account, Integration, platform_of

if TYPE_CHECKING:
    from amobridge.sandbox.app import Sandbox


class ControlError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


ControlHandler = Callable[[Request, "Sandbox"], Awaitable[Response]]


def control_endpoint(handler: ControlHandler) -> Callable[[Request], Awaitable[Response]]:
    """Check the control token, hand the handler the sandbox, render ControlError as JSON."""

    async def endpoint(request: Request) -> Response:
        sandbox: Sandbox = request.app.state.sandbox
        expected = sandbox.config.control_token
        if expected:
            given = request.headers.get("authorization", "").partition(" ")[2].strip()
            if not secrets.compare_digest(given.encode(), expected.encode()):
                return JSONResponse({"detail": "control API token required"}, status_code=401)
        try:
            return await handler(request, sandbox)
        except ControlError as exc:
            return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    endpoint.__name__ = handler.__name__
    return endpoint


async def body_object(request: Request, *, allow_empty: bool = False) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        if allow_empty:
            return {}
        raise ControlError(400, "request body must be a JSON object")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ControlError(400, "request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ControlError(400, "request body must be a JSON object")
    return data


def field(
    data: dict[str, Any], name: str, kind: type | tuple[type, ...], *, required: bool = True
) -> Any:
    value = data.get(name)
    if value is None:
        if required:
            raise ControlError(422, f"{name} is required")
        return None
    if isinstance(value, bool) and kind is not bool:
        raise ControlError(422, f"{name} has the wrong type")
    if not isinstance(value, kind):
        raise ControlError(422, f"{name} has the wrong type")
    return value


def reject_unknown(data: dict[str, Any], allowed: set[str]) -> None:
    unknown = set(data) - allowed
    if unknown:
        raise ControlError(422, f"unknown fields: {', '.join(sorted(unknown))}")


def get_account(sandbox: Sandbox, account_id: int | str) -> Account:
    try:
        account = sandbox.state.accounts.get(int(account_id))
    except (TypeError, ValueError):
        account = None
    if account is None:
        raise ControlError(404, f"no account {account_id}")
    return account


def get_integration(sandbox: Sandbox, client_id: str) -> Integration:
    integration = sandbox.state.integrations.get(client_id)
    if integration is None:
        raise ControlError(404, f"no integration {client_id}")
    return integration


def account_json(sandbox: Sandbox, account: Account) -> dict[str, Any]:
    return {
        "id": account.id,
        "subdomain": account.subdomain,
        "base_domain": account.base_domain,
        "host": account.host,
        "name": account.name,
        "admin_user_id": account.admin_user_id,
        "users": [
            {"id": u.id, "name": u.name, "email": u.email, "is_admin": u.is_admin}
            for u in account.users.values()
        ],
        "pipelines": [pipeline_json(p) for p in account.pipelines.values()],
        "banned_until": sandbox.limiter.banned_until(account.id),
    }


def pipeline_json(pipeline: Any) -> dict[str, Any]:
    return {
        "id": pipeline.id,
        "name": pipeline.name,
        "is_main": pipeline.is_main,
        "statuses": [
            {"id": s.id, "name": s.name, "sort": s.sort, "type": s.type} for s in pipeline.statuses
        ],
    }


def integration_json(integration: Integration, *, with_secret: bool) -> dict[str, Any]:
    data: dict[str, Any] = {
        "client_id": integration.client_id,
        "name": integration.name,
        "redirect_uri": integration.redirect_uri,
        "disconnect_url": integration.disconnect_url,
        "scopes": integration.scopes,
        "installed_in": [a for a, on in integration.installs.items() if on],
    }
    if with_secret:
        data["client_secret"] = integration.client_secret
    return data


def redirect_url(integration: Integration, params: dict[str, Any]) -> str:
    sep = "&" if "?" in integration.redirect_uri else "?"
    clean = {k: v for k, v in params.items() if v is not None}
    return integration.redirect_uri + sep + urlencode(clean)


def consent_redirect(
    sandbox: Sandbox,
    integration: Integration,
    account: Account,
    state: str | None,
    user_id: int | None = None,
) -> tuple[str, str]:
    """Grant consent as ``user_id`` (the admin by default): (code, the redirect_uri to land on)."""
    code = sandbox.tokens.issue_code(integration, account, user_id or account.admin_user_id)
    url = redirect_url(
        integration,
        {
            "code": code.code,
            "referer": account.host,
            "state": state,
            "platform": platform_of(account.base_domain),
            "client_id": integration.client_id,
        },
    )
    return code.code, url


# --- handlers ------------------------------------------------------------------------------------


async def create_account(request: Request, sandbox: Sandbox) -> Response:
    data = await body_object(request)
    reject_unknown(data, {"subdomain", "base_domain", "name", "admin_name", "admin_email"})
    subdomain = field(data, "subdomain", str)
    base_domain = field(data, "base_domain", str, required=False) or "amocrm.ru"
    if not subdomain.replace("-", "").isalnum() or not subdomain.isascii() or len(subdomain) > 63:
        raise ControlError(422, "subdomain must be letters, digits and dashes")
    if base_domain not in BASE_DOMAINS:
        raise ControlError(422, f"base_domain must be one of {', '.join(BASE_DOMAINS)}")
    if subdomain.lower() in sandbox.state.accounts_by_subdomain:
        raise ControlError(409, f"account {subdomain!r} already exists")
    account = sandbox.state.create_account(
        subdomain,
        base_domain,
        name=field(data, "name", str, required=False),
        admin_name=field(data, "admin_name", str, required=False) or "Администратор",
        admin_email=field(data, "admin_email", str, required=False),
    )
    return JSONResponse(account_json(sandbox, account), status_code=201)


async def list_accounts(request: Request, sandbox: Sandbox) -> Response:
    return JSONResponse([account_json(sandbox, a) for a in sandbox.state.accounts.values()])


async def show_account(request: Request, sandbox: Sandbox) -> Response:
    account = get_account(sandbox, request.path_params["account_id"])
    return JSONResponse(account_json(sandbox, account))


async def create_pipeline(request: Request, sandbox: Sandbox) -> Response:
    account = get_account(sandbox, request.path_params["account_id"])
    data = await body_object(request)
    reject_unknown(data, {"name", "statuses", "is_main"})
    name = field(data, "name", str)
    statuses = field(data, "statuses", list)
    if not statuses or not all(isinstance(s, str) and s.strip() for s in statuses):
        raise ControlError(422, "statuses must be a non-empty list of names")
    if len(account.pipelines) >= 50:
        raise ControlError(422, "an account has at most 50 pipelines")
    if len(statuses) > 97:
        raise ControlError(422, "a pipeline has at most 100 statuses")
    is_main = bool(field(data, "is_main", bool, required=False))
    if is_main:
        for pipeline in account.pipelines.values():
            pipeline.is_main = False
    pipeline = sandbox.state.add_pipeline(account, name, statuses, is_main=is_main)
    return JSONResponse(pipeline_json(pipeline), status_code=201)


async def create_user(request: Request, sandbox: Sandbox) -> Response:
    account = get_account(sandbox, request.path_params["account_id"])
    data = await body_object(request)
    reject_unknown(data, {"name", "email", "is_admin"})
    user = sandbox.state.add_user(
        account,
        field(data, "name", str),
        field(data, "email", str, required=False) or f"user{len(account.users)}@example.com",
        is_admin=bool(field(data, "is_admin", bool, required=False)),
    )
    return JSONResponse({"id": user.id, "name": user.name, "email": user.email}, status_code=201)


async def create_integration(request: Request, sandbox: Sandbox) -> Response:
    data = await body_object(request)
    reject_unknown(data, {"name", "redirect_uri", "disconnect_url", "scopes"})
    redirect_uri = field(data, "redirect_uri", str)
    if not redirect_uri.startswith(("http://", "https://")):
        raise ControlError(422, "redirect_uri must be an http(s) URL")
    scopes = field(data, "scopes", list, required=False)
    if scopes is not None and not all(isinstance(s, str) for s in scopes):
        raise ControlError(422, "scopes must be a list of strings")
    integration = sandbox.state.create_integration(
        field(data, "name", str),
        redirect_uri,
        disconnect_url=field(data, "disconnect_url", str, required=False),
        scopes=scopes,
    )
    return JSONResponse(integration_json(integration, with_secret=True), status_code=201)


async def list_integrations(request: Request, sandbox: Sandbox) -> Response:
    return JSONResponse(
        [integration_json(i, with_secret=True) for i in sandbox.state.integrations.values()]
    )


async def authorize(request: Request, sandbox: Sandbox) -> Response:
    """Consent without a browser: ``{client_id, account_id, state?, user_id?}`` → code + redirect."""
    data = await body_object(request)
    reject_unknown(data, {"client_id", "account_id", "state", "user_id"})
    integration = get_integration(sandbox, field(data, "client_id", str))
    account = get_account(sandbox, field(data, "account_id", int))
    user_id = field(data, "user_id", int, required=False)
    if user_id is not None and user_id not in account.users:
        raise ControlError(422, f"no user {user_id} in account {account.id}")
    code, url = consent_redirect(
        sandbox, integration, account, field(data, "state", str, required=False), user_id
    )
    return JSONResponse({"code": code, "redirect_url": url, "referer": account.host})


async def long_lived_token(request: Request, sandbox: Sandbox) -> Response:
    data = await body_object(request)
    reject_unknown(data, {"client_id", "account_id", "ttl_seconds"})
    integration = get_integration(sandbox, field(data, "client_id", str))
    account = get_account(sandbox, field(data, "account_id", int))
    ttl = field(data, "ttl_seconds", int, required=False) or 365 * 86400
    if not 86400 <= ttl <= 5 * 365 * 86400:
        raise ControlError(422, "ttl_seconds must be between 1 day and 5 years")
    access = sandbox.tokens.issue_long_lived(integration, account, ttl)
    return JSONResponse(
        {
            "access_token": access.token,
            "expires_at": int(access.expires_at),
            "token_type": "Bearer",
        },
        status_code=201,
    )


async def expire_tokens(request: Request, sandbox: Sandbox) -> Response:
    """Make access tokens expire now: ``{account_id?, client_id?}``."""
    data = await body_object(request, allow_empty=True)
    reject_unknown(data, {"account_id", "client_id"})
    count = sandbox.tokens.expire_tokens(
        account_id=field(data, "account_id", int, required=False),
        client_id=field(data, "client_id", str, required=False),
    )
    return JSONResponse({"expired": count})


async def clock(request: Request, sandbox: Sandbox) -> Response:
    if request.method == "GET":
        return JSONResponse({"now": sandbox.clock.now(), "frozen": sandbox.clock.frozen})
    data = await body_object(request)
    reject_unknown(data, {"advance_seconds", "freeze"})
    advance = data.get("advance_seconds", 0)
    if isinstance(advance, bool) or not isinstance(advance, int | float) or advance < 0:
        raise ControlError(422, "advance_seconds must be a non-negative number")
    freeze = field(data, "freeze", bool, required=False)
    if freeze is True:
        sandbox.clock.freeze()
    elif freeze is False:
        sandbox.clock.unfreeze()
    sandbox.clock.advance(float(advance))
    await sandbox.hooks.run_due()
    return JSONResponse({"now": sandbox.clock.now(), "frozen": sandbox.clock.frozen})


async def faults(request: Request, sandbox: Sandbox) -> Response:
    if request.method == "GET":
        return JSONResponse([r.public() for r in sandbox.faults.rules()])
    if request.method == "DELETE":
        sandbox.faults.reset()
        return Response(status_code=204)
    raw = await request.body()
    try:
        data = json.loads(raw) if raw.strip() else None
    except (ValueError, UnicodeDecodeError):
        raise ControlError(400, "request body is not valid JSON") from None
    specs: list[Any] = data if isinstance(data, list) else [data]
    try:
        rules = [sandbox.faults.add(spec) for spec in specs]
    except FaultSpecError as exc:
        raise ControlError(422, str(exc)) from None
    return JSONResponse([r.public() for r in rules], status_code=201)


async def delete_fault(request: Request, sandbox: Sandbox) -> Response:
    try:
        rule_id = int(request.path_params["rule_id"])
    except ValueError:
        raise ControlError(404, "no such fault") from None
    if not sandbox.faults.remove(rule_id):
        raise ControlError(404, "no such fault")
    return Response(status_code=204)


async def requests_log(request: Request, sandbox: Sandbox) -> Response:
    """Every API/OAuth request: ``?account_id&path_prefix&client_id&method&since&limit``."""
    query = request.query_params
    try:
        account_id = int(query["account_id"]) if "account_id" in query else None
        since = float(query["since"]) if "since" in query else None
        limit = int(query["limit"]) if "limit" in query else None
    except ValueError:
        raise ControlError(400, "account_id, since and limit must be numbers") from None
    prefix = query.get("path_prefix")
    client_id = query.get("client_id")
    method = query.get("method", "").upper() or None
    items = [
        r.public()
        for r in sandbox.state.requests
        if (account_id is None or r.account_id == account_id)
        and (prefix is None or r.path.startswith(prefix))
        and (client_id is None or r.client_id == client_id)
        and (method is None or r.method == method)
        and (since is None or r.time >= since)
    ]
    if limit is not None:
        items = items[-limit:] if limit > 0 else []
    return JSONResponse(items)


async def clear_requests(request: Request, sandbox: Sandbox) -> Response:
    sandbox.state.requests.clear()
    return Response(status_code=204)


async def reset(request: Request, sandbox: Sandbox) -> Response:
    sandbox.reset()
    return Response(status_code=204)


async def config(request: Request, sandbox: Sandbox) -> Response:
    if request.method == "PATCH":
        data = await body_object(request)
        try:
            sandbox.config = sandbox.config.updated(data)
        except ValueError as exc:
            raise ControlError(422, str(exc)) from None
    return JSONResponse(sandbox.config.public())


async def unban(request: Request, sandbox: Sandbox) -> Response:
    data = await body_object(request, allow_empty=True)
    reject_unknown(data, {"account_id"})
    sandbox.limiter.unban(field(data, "account_id", int, required=False))
    return Response(status_code=204)


async def ban(request: Request, sandbox: Sandbox) -> Response:
    data = await body_object(request)
    reject_unknown(data, {"account_id", "seconds"})
    account = get_account(sandbox, field(data, "account_id", int))
    seconds = field(data, "seconds", (int, float), required=False) or sandbox.config.ban_seconds
    until = sandbox.limiter.ban(account.id, float(seconds))
    return JSONResponse({"banned_until": until})


async def health(request: Request, sandbox: Sandbox) -> Response:
    return JSONResponse(
        {
            "status": "ok",
            "accounts": len(sandbox.state.accounts),
            "integrations": len(sandbox.state.integrations),
            "now": sandbox.clock.now(),
        }
    )


async def public_key(request: Request, sandbox: Sandbox) -> Response:
    """The PEM public key that verifies the sandbox's RS256 access tokens."""
    return Response(sandbox.tokens.public_key_pem(), media_type="application/x-pem-file")


def routes() -> list[BaseRoute]:
    c = control_endpoint
    return [
        Route("/_sandbox/health", c(health), methods=["GET"]),
        Route("/_sandbox/accounts", c(create_account), methods=["POST"]),
        Route("/_sandbox/accounts", c(list_accounts), methods=["GET"]),
        Route("/_sandbox/accounts/{account_id}", c(show_account), methods=["GET"]),
        Route("/_sandbox/accounts/{account_id}/pipelines", c(create_pipeline), methods=["POST"]),
        Route("/_sandbox/accounts/{account_id}/users", c(create_user), methods=["POST"]),
        Route("/_sandbox/integrations", c(create_integration), methods=["POST"]),
        Route("/_sandbox/integrations", c(list_integrations), methods=["GET"]),
        Route("/_sandbox/authorize", c(authorize), methods=["POST"]),
        Route("/_sandbox/long-lived-tokens", c(long_lived_token), methods=["POST"]),
        Route("/_sandbox/tokens/expire", c(expire_tokens), methods=["POST"]),
        Route("/_sandbox/clock", c(clock), methods=["GET", "POST"]),
        Route("/_sandbox/faults", c(faults), methods=["GET", "POST", "DELETE"]),
        Route("/_sandbox/faults/{rule_id}", c(delete_fault), methods=["DELETE"]),
        Route("/_sandbox/requests", c(requests_log), methods=["GET"]),
        Route("/_sandbox/requests", c(clear_requests), methods=["DELETE"]),
        Route("/_sandbox/reset", c(reset), methods=["POST"]),
        Route("/_sandbox/config", c(config), methods=["GET", "PATCH"]),
        Route("/_sandbox/ban", c(ban), methods=["POST"]),
        Route("/_sandbox/unban", c(unban), methods=["POST"]),
        Route("/_sandbox/public-key", c(public_key), methods=["GET"]),
    ]
