"""The sandbox ASGI app: ``create_sandbox_app()`` builds a complete fake amoCRM.

All state is built here, in the factory (httpx's ``ASGITransport`` sends no lifespan events), and
hangs off ``app.state.sandbox``: one :class:`Sandbox` holding the config, the clock, the accounts,
the grants, the limiter, the fault rules and the webhook dispatcher. With a state file, the
world is loaded from it here and saved back as each response starts (see ``persist.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from amobridge import __version__
from amobridge.sandbox.clock import Clock
from amobridge.sandbox.config import SandboxConfig
from amobridge.sandbox.events import EntityChange
from amobridge.sandbox.faults import FaultInjector
from amobridge.sandbox.http import internal_error, problem
from amobridge.sandbox.persist import dumps, load, write_atomic
from amobridge.sandbox.ratelimit import RateLimiter
from amobridge.sandbox.routing import RouteIndex
from amobridge.sandbox.state import Account, SandboxState
from amobridge.sandbox.tokens import TokenAuthority
from amobridge.sandbox.webhooks import WebhookDispatcher

log = logging.getLogger("amobridge.sandbox")

USER_AGENT = f"amobridge-sandbox/{__version__}"


class Sandbox:
    """One fake amoCRM: many accounts and integrations, one clock, in memory — and, when
    ``state_file`` is given, loaded from that file and saved back to it by :meth:`save`."""

    def __init__(
        self,
        config: SandboxConfig | None = None,
        *,
        clock: Clock | None = None,
        signing_key: rsa.RSAPrivateKey | None = None,
        outbound_transport: httpx.AsyncBaseTransport | None = None,
        state_file: str | Path | None = None,
    ) -> None:
        self.config = config or SandboxConfig()
        self.clock = clock or Clock()
        self._signing_key = signing_key
        self._outbound_transport = outbound_transport
        self._outbound: httpx.AsyncClient | None = None
        self._outbound_loop: asyncio.AbstractEventLoop | None = None
        self.state_file = Path(state_file) if state_file is not None else None
        self._saved: bytes | None = None
        loaded = None
        if self.state_file is not None:
            loaded = load(self.state_file, self.clock, self.config.request_log_size)
        if loaded is not None:
            # The file's key wins: the tokens saved in it were signed with that one.
            self._signing_key = loaded.signing_key
        self._build(loaded.state if loaded is not None else None)
        if loaded is not None:
            self._saved = dumps(self.state, self.tokens._key)

    def _build(self, state: SandboxState | None = None) -> None:
        self.state = state or SandboxState(self.clock, self.config.request_log_size)
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

    def save(self) -> None:
        """Write the state file if the world changed since the last write (no file: nothing).
        Synchronous on purpose: the snapshot is taken and written with no await in between, so
        no request can change the world halfway through, and writes never overtake each other."""
        if self.state_file is None:
            return
        data = dumps(self.state, self.tokens._key)
        if data != self._saved:
            write_atomic(self.state_file, data)
            self._saved = data

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
        # Webhook deliveries change state outside requests (a subscription disabled by failures).
        self.save()
        if self._outbound is not None:
            await self._outbound.aclose()
            self._outbound = None


class _SaveState:
    """Saves the sandbox's state file as each response starts: the handler has changed the
    world by then, and a client never holds a code or token the file lacks."""

    def __init__(self, app: ASGIApp, sandbox: Sandbox) -> None:
        self.app = app
        self.sandbox = sandbox

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_after_saving(message: Message) -> None:
            if message["type"] == "http.response.start":
                try:
                    self.sandbox.save()
                except OSError:
                    # A full or read-only disk must not take the sandbox down; say so each time.
                    log.exception("cannot write the sandbox state file %s", self.sandbox.state_file)
            await send(message)

        await self.app(scope, receive, send_after_saving)


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


async def _index(request: Request) -> Response:
    """Where things are, in the page's language (``?lang=``, ``Accept-Language``)."""
    from amobridge.sandbox.oauth.pages import page, page_language

    return page("index.html", lang=page_language(request))


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

    middleware = [Middleware(_SaveState, sandbox=box)] if box.state_file is not None else []
    app = Starlette(
        routes=[RouteIndex(_routes())],
        exception_handlers=handlers,
        lifespan=lifespan,
        middleware=middleware,
    )
    app.state.sandbox = sandbox
    return app
