"""The sandbox ASGI app: ``create_sandbox_app()`` builds a complete fake amoCRM.

All state is built here, in the factory (httpx's ``ASGITransport`` sends no lifespan events), and
hangs off ``app.state.sandbox``: one :class:`Sandbox` holding the config, the clock, the accounts,
the grants, the limiter, the fault rules and the webhook dispatcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from amobridge import __version__
from amobridge.sandbox.clock import Clock
from amobridge.sandbox.config import SandboxConfig
from amobridge.sandbox.events import EntityChange
from amobridge.sandbox.faults import FaultInjector
from amobridge.sandbox.http import internal_error, problem
from amobridge.sandbox.ratelimit import RateLimiter
from amobridge.sandbox.routing import RouteIndex
from amobridge.sandbox.state import Account, SandboxState
from amobridge.sandbox.tokens import TokenAuthority
from amobridge.sandbox.webhooks import WebhookDispatcher

log = logging.getLogger("amobridge.sandbox")

USER_AGENT = f"amobridge-sandbox/{__version__}"


class Sandbox:
    """One fake amoCRM: many accounts and integrations, one clock, in memory."""

    def __init__(
        self,
        config: SandboxConfig | None = None,
        *,
        clock: Clock | None = None,
        signing_key: rsa.RSAPrivateKey | None = None,
        outbound_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config or SandboxConfig()
        self.clock = clock or Clock()
        self._signing_key = signing_key
        self._outbound_transport = outbound_transport
        self._outbound: httpx.AsyncClient | None = None
        self._outbound_loop: asyncio.AbstractEventLoop | None = None
        self._build()

    def _build(self) -> None:
        self.state = SandboxState(self.clock, self.config.request_log_size)
        self.tokens = TokenAuthority(self.state, lambda: self.config, self._signing_key)
        if self._signing_key is None:  # keep one key for the sandbox's life, across resets
            self._signing_key = self.tokens._key
        self.limiter = RateLimiter(self.clock)
        self.faults = FaultInjector()
        self.hooks = WebhookDispatcher(self)

    def reset(self) -> None:
        """Forget every account, integration, grant, fault and delivery (config stays)."""
        self.hooks.reset()
        self._build()

    def emit(self, account: Account, changes: list[EntityChange]) -> None:
        """Report data changes (API or UI) so subscribed webhooks fire."""
        if changes:
            self.hooks.emit(account, changes)

    def outbound(self) -> httpx.AsyncClient:
        """The client for what the sandbox sends out (webhooks, secrets POSTs, disconnect GETs)."""
        loop = asyncio.get_running_loop()
        if self._outbound is None or self._outbound_loop is not loop:
            self._outbound = httpx.AsyncClient(
                transport=self._outbound_transport,
                headers={"User-Agent": USER_AGENT},
                follow_redirects=False,
            )
            self._outbound_loop = loop
        return self._outbound

    async def aclose(self) -> None:
        await self.hooks.aclose()
        if self._outbound is not None:
            await self._outbound.aclose()
            self._outbound = None


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return _not_found(request)
    return problem(exc.status_code, str(exc.detail))


async def _server_error(request: Request, exc: Exception) -> Response:
    log.error("sandbox error on %s %s", request.method, request.url.path, exc_info=exc)
    return internal_error()


def _not_found(request: Request) -> Response:
    path = request.url.path
    if path.startswith(("/api/", "/oauth2/", "/_sandbox/")):
        return problem(404, f"Cannot {request.method} {path}", title="Not Found")
    return HTMLResponse("<!doctype html><title>404</title><h1>404 Not Found</h1>", status_code=404)


async def _catch_all(request: Request) -> Response:
    return _not_found(request)


_INDEX = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>amobridge sandbox</title>
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem}
code{background:#f3f3f3;padding:0 .2em}</style></head>
<body><h1>amobridge sandbox</h1>
<p>A local amoCRM for tests and demos: OAuth, API v4, webhooks, rate limits, faults.</p>
<ul>
<li><a href="/_sandbox/health">/_sandbox/health</a> &mdash; is it up, how many accounts</li>
<li><a href="/_sandbox/accounts">/_sandbox/accounts</a> &mdash; accounts, users, pipelines
(control API; may need the control token)</li>
<li><a href="/_sandbox/integrations">/_sandbox/integrations</a> &mdash; integrations and their
redirect URIs</li>
<li><code>/oauth?client_id=&hellip;&amp;state=&hellip;</code> &mdash; the consent page</li>
<li><code>/api/v4/&hellip;</code> with <code>Host: {subdomain}.amocrm.ru</code> &mdash; the API</li>
</ul>
<p>Every route is described in <code>docs/sandbox.md</code>.</p>
</body></html>
"""


async def _index(request: Request) -> Response:
    return HTMLResponse(_INDEX)


def _routes() -> list[BaseRoute]:
    from amobridge.sandbox import api, control, oauth, subscriptions

    routes: list[BaseRoute] = []
    for module in (oauth, api, subscriptions):
        routes.extend(module.routes())
        routes.extend(module.control_routes())
    routes.extend(control.routes())
    routes.append(Route("/", _index, methods=["GET"]))
    routes.append(
        Route(
            "/{path:path}",
            _catch_all,
            methods=["GET", "POST", "PATCH", "PUT", "DELETE", "HEAD", "OPTIONS"],
        )
    )
    return routes


def create_sandbox_app(
    config: SandboxConfig | None = None,
    *,
    clock: Clock | None = None,
    signing_key: rsa.RSAPrivateKey | None = None,
    outbound_transport: httpx.AsyncBaseTransport | None = None,
    sandbox: Sandbox | None = None,
) -> Starlette:
    """Build the sandbox app. Tests pass a frozen ``clock`` and an ``outbound_transport`` that
    routes webhooks to an in-process app; ``amobridge sandbox`` passes nothing."""
    sandbox = sandbox or Sandbox(
        config, clock=clock, signing_key=signing_key, outbound_transport=outbound_transport
    )
    handlers: dict[Any, Any] = {HTTPException: _http_exception, Exception: _server_error}
    box = sandbox

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        # Only real servers send lifespan events; in-process tests close the sandbox themselves.
        yield
        await box.aclose()

    app = Starlette(routes=[RouteIndex(_routes())], exception_handlers=handlers, lifespan=lifespan)
    app.state.sandbox = sandbox
    return app
