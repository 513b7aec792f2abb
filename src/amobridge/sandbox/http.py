"""The request pipeline every sandbox API and OAuth route goes through, and amoCRM's response shapes.

An API request passes, in order: the account host check (a subdomain that does not exist answers as
amoCRM does for a wrong account domain), fault injection (phase "before"), Bearer authentication,
the ban check, the rate limiter, the handler, fault injection (phase "after"), and the request log.
Handlers raise :class:`ApiProblem` for amoCRM-shaped errors; nothing malformed becomes a 500.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.types import Receive, Scope, Send

from amobridge.sandbox.faults import FaultRule
from amobridge.sandbox.state import BASE_DOMAINS, AccessToken, Account, RequestRecord

if TYPE_CHECKING:
    from amobridge.sandbox.app import Sandbox

log = logging.getLogger("amobridge.sandbox")

HAL_JSON = "application/hal+json"
PROBLEM_JSON = "application/problem+json"

BAN_HTML = (
    "<html>\r\n<head><title>403 Forbidden</title></head>\r\n<body>\r\n"
    "<center><h1>403 Forbidden</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)
GATEWAY_HTML = (
    "<html>\r\n<head><title>{code} {reason}</title></head>\r\n<body>\r\n"
    "<center><h1>{code} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)
_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Request Entity Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Time-out",
}


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def dumps(data: Any) -> bytes:
    return _ENCODER.encode(data).encode()


def hal(data: Any, status: int = 200) -> Response:
    """A success body as amoCRM sends it (``application/hal+json``)."""
    return Response(dumps(data), status_code=status, media_type=HAL_JSON)


def no_content() -> Response:
    """amoCRM's answer to an empty list or a missing entity (never a 404)."""
    return Response(status_code=204)


def problem_body(
    status: int, detail: str, *, title: str | None = None, **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "title": title or _REASONS.get(status, "Error"),
        "type": f"https://httpstatus.es/{status}",
        "status": status,
        "detail": detail,
    }
    body.update(extra)
    return body


def problem(status: int, detail: str, *, title: str | None = None, **extra: Any) -> Response:
    """amoCRM's error body: ``{"title", "type": "https://httpstatus.es/{code}", "status", "detail"}``."""
    return Response(
        dumps(problem_body(status, detail, title=title, **extra)),
        status_code=status,
        media_type=PROBLEM_JSON,
    )


def validation_problem(errors: list[dict[str, Any]]) -> Response:
    """amoCRM's 400 with ``validation-errors``: ``[{"request_id", "errors": [{code, path, detail}]}]``."""
    body = {"validation-errors": errors}
    body.update(problem_body(400, "Request validation failed", title="Bad Request"))
    return Response(dumps(body), status_code=400, media_type=PROBLEM_JSON)


def internal_error() -> Response:
    return problem(
        500,
        "Internal server error",
        title="ErrInternalServer",
        trace_id=uuid.uuid4().hex,
    )


class ApiProblem(Exception):
    """Raised by handlers: carries the amoCRM-shaped response to send."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response

    @classmethod
    def of(cls, status: int, detail: str, **extra: Any) -> ApiProblem:
        return cls(problem(status, detail, **extra))

    @classmethod
    def validation(cls, errors: list[dict[str, Any]]) -> ApiProblem:
        return cls(validation_problem(errors))


async def read_json(request: Request) -> Any:
    """The parsed JSON body, or an amoCRM-shaped 400 (empty body, bad JSON, wrong encoding)."""
    raw = await request.body()
    if not raw.strip():
        raise ApiProblem.of(400, "Request data can not be empty")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiProblem.of(400, "Request body is not valid JSON") from None


class DropConnection:
    """Start a response, send part of it and break off: the client sees a dropped connection.

    Under a real server the connection is closed mid-body; in-process (httpx ``ASGITransport``) the
    same httpx transport error the client would see reaches it directly.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", HAL_JSON.encode()), (b"content-length", b"4096")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"_embedded":', "more_body": True})
        raise httpx.RemoteProtocolError("sandbox fault: connection dropped mid-response")


# --- host → account -------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostInfo:
    named: bool  # the Host header names an account (sub.amocrm.ru, sub.localhost, …)
    account: Account | None  # that account, when it exists on that base domain
    host: str


def resolve_host(sandbox: Sandbox, request: Request) -> HostInfo:
    """Which account the Host header names. Bare hosts (127.0.0.1, localhost) name none."""
    host = request.headers.get("host", "").rsplit(":", 1)[0].strip().lower().rstrip(".")
    if host.startswith("["):  # IPv6 literal
        return HostInfo(False, None, host)
    for base in (*BASE_DOMAINS, "localhost"):
        suffix = "." + base
        if host.endswith(suffix):
            sub = host[: -len(suffix)]
            account = sandbox.state.accounts_by_subdomain.get(sub)
            if account is not None and base != "localhost" and account.base_domain != base:
                account = None
            return HostInfo(True, account, host)
    return HostInfo(False, None, host)


def account_not_found() -> Response:
    """What a wrong account domain (``www``, ``api-b``, a typo, the wrong base domain) answers."""
    return problem(401, "Account not found", title="Unauthorized")


def unauthorized() -> Response:
    return problem(401, "Invalid user name or password", title="Unauthorized")


# --- faults ------------------------------------------------------------------------------------


async def fault_response(
    sandbox: Sandbox,
    rule: FaultRule,
    *,
    account_id: int | None,
    client_id: str | None,
    served: Response | None = None,
) -> Response | DropConnection:
    if rule.kind == "slow":
        await asyncio.sleep(rule.delay)
        return served if served is not None else Response(status_code=204)
    if rule.kind == "timeout":
        await asyncio.sleep(rule.delay)
        return HTMLResponse(GATEWAY_HTML.format(code=504, reason=_REASONS[504]), status_code=504)
    if rule.kind == "drop":
        return DropConnection()
    if rule.kind == "rate_limit":
        if account_id is not None:
            decision = sandbox.limiter.force_violation(sandbox.config, account_id)
            if decision.reason == "banned":
                return banned_response(sandbox)
        return rate_limited_response(sandbox)
    if rule.kind == "revoke":
        if client_id is not None and account_id is not None:
            sandbox.tokens.revoke_integration(client_id, account_id)
        return unauthorized()
    # error
    if rule.status in (502, 504):
        return HTMLResponse(
            GATEWAY_HTML.format(code=rule.status, reason=_REASONS[rule.status]),
            status_code=rule.status,
        )
    if rule.status == 500:
        return internal_error()
    return problem(rule.status, "Injected fault")


def rate_limited_response(sandbox: Sandbox) -> Response:
    extra: dict[str, Any] = {}
    if sandbox.config.retry_after_in_429_body is not None:
        extra["retry_after"] = sandbox.config.retry_after_in_429_body
    return problem(429, "Too many requests", **extra)


def banned_response(sandbox: Sandbox) -> Response:
    if sandbox.config.ban_body == "html":
        return HTMLResponse(BAN_HTML, status_code=403)
    return problem(403, "Account is blocked for exceeding the request limits")


# --- the pipeline ------------------------------------------------------------------------------


@dataclass
class ApiContext:
    sandbox: Sandbox
    account: Account
    token: AccessToken
    request: Request

    @property
    def user_id(self) -> int:
        return self.token.user_id


ApiHandler = Callable[[Request, ApiContext], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


RecordedHandler = Callable[
    ["Sandbox", Request, RequestRecord], Awaitable["Response | DropConnection"]
]


def recorded_endpoint(handler: RecordedHandler) -> Endpoint:
    """Put every request in the sandbox's request log (time, method, path, query, status); the
    handler fills in what it learns (account, client, grant type, fault)."""

    async def endpoint(request: Request) -> Response:
        sandbox: Sandbox = request.app.state.sandbox
        record = RequestRecord(
            time=sandbox.clock.now(),
            method=request.method,
            # From the scope: building request.url costs more than a whole cheap handler.
            path=request.scope["path"],
            query=request.scope.get("query_string", b"").decode("latin-1"),
            status=0,
        )
        try:
            response = await handler(sandbox, request, record)
            record.status = response.status_code if isinstance(response, Response) else 0
        finally:
            sandbox.state.requests.append(record)
        return response  # type: ignore[return-value]  # DropConnection is an ASGI app too

    endpoint.__name__ = handler.__name__
    endpoint.__doc__ = handler.__doc__
    return endpoint


def api_endpoint(handler: ApiHandler) -> Endpoint:
    """Wrap an ``/api/v4`` handler in the host check, auth, ban, rate limit, faults and log."""

    async def run(
        sandbox: Sandbox, request: Request, record: RequestRecord
    ) -> Response | DropConnection:
        return await _run_api(sandbox, request, handler, record)

    run.__name__ = handler.__name__
    run.__doc__ = handler.__doc__
    return recorded_endpoint(run)


async def _run_api(
    sandbox: Sandbox, request: Request, handler: ApiHandler, record: RequestRecord
) -> Response | DropConnection:
    def done(response: Response | DropConnection) -> Response | DropConnection:
        record.status = response.status_code if isinstance(response, Response) else 0
        return response

    host = resolve_host(sandbox, request)
    if host.named and host.account is None:
        return done(account_not_found())
    token_value = bearer(request)
    token = sandbox.tokens.authenticate(token_value) if token_value else None
    account_id = token.account_id if token else (host.account.id if host.account else None)
    client_id = token.client_id if token else None
    record.account_id = account_id
    record.client_id = client_id

    rule = sandbox.faults.match(
        "before",
        method=request.method,
        path=record.path,
        account_id=account_id,
        client_id=client_id,
        query=request.query_params,
    )
    if rule is not None and rule.kind != "slow":
        record.fault = rule.kind
        return done(await fault_response(sandbox, rule, account_id=account_id, client_id=client_id))
    if rule is not None:
        record.fault = "slow"
        await asyncio.sleep(rule.delay)

    if token is None:
        return done(unauthorized())
    if host.account is not None and host.account.id != token.account_id:
        return done(account_not_found())
    if sandbox.config.require_user_agent and not request.headers.get("user-agent"):
        return done(problem(400, "User-Agent header is required"))
    account = sandbox.state.accounts[token.account_id]
    client_ip = request.client.host if request.client else ""
    decision = sandbox.limiter.check(
        sandbox.config, account_id=account.id, client_id=token.client_id, client_ip=client_ip
    )
    if not decision.allowed:
        if decision.reason == "banned":
            return done(banned_response(sandbox))
        return done(rate_limited_response(sandbox))

    context = ApiContext(sandbox, account, token, request)
    try:
        response: Response | DropConnection = await handler(request, context)
    except ApiProblem as exc:
        response = exc.response
    except Exception:
        log.exception("sandbox handler %s failed", record.path)
        response = internal_error()

    after = sandbox.faults.match(
        "after",
        method=request.method,
        path=record.path,
        account_id=account.id,
        client_id=token.client_id,
        query=request.query_params,
    )
    if after is not None:
        record.fault = f"{after.kind}-after"
        response = await fault_response(
            sandbox,
            after,
            account_id=account.id,
            client_id=token.client_id,
            served=response if isinstance(response, Response) else None,
        )
    return done(response)


def log_request(sandbox: Sandbox, request: Request, record: RequestRecord) -> None:
    sandbox.state.requests.append(record)
