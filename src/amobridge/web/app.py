"""``create_app(settings)``: the amobridge service as one FastAPI app, assembled from the
feature routers over the :class:`~amobridge.services.Services` graph (built in
``amobridge.services``, usable without FastAPI)."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from amobridge import __version__
from amobridge.connect.pages import index_page, prefers_html
from amobridge.services import Services
from amobridge.settings import Settings
from amobridge.web.docs import install_docs
from amobridge.web.errors import install_error_handlers
from amobridge.web.headers import SecurityHeadersMiddleware
from amobridge.web.limits import BodySizeLimitMiddleware
from amobridge.web.openapi import API_DESCRIPTION, install_openapi
from amobridge.web.schemas import (
    HEALTH_EXAMPLE,
    INDEX_EXAMPLE,
    NOT_READY_EXAMPLE,
    READY_EXAMPLE,
    Health,
    NotReady,
    Ready,
    ServiceIndex,
)

__all__ = ["Services", "create_app"]


class RootPathMiddleware:
    """Serve under a proxy prefix (e.g. ``/api``) as ASGI servers do for ``--root-path``:
    ``scope["root_path"]`` is the prefix and ``scope["path"]`` carries it too, whether or not the
    proxy stripped it. (FastAPI's own ``root_path`` argument is deprecated and set only the
    former, so trailing-slash redirects and ``request.url`` lost the prefix: a 307 to
    ``/amocrm/status`` that nginx answers with 404.)"""

    def __init__(self, app: ASGIApp, root_path: str) -> None:
        self.app = app
        self.root_path = root_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            root, path = self.root_path, scope["path"]
            scope = dict(scope, root_path=root)
            if path != root and not path.startswith(root + "/"):
                scope["path"] = root + path
                if scope.get("raw_path") is not None:
                    scope["raw_path"] = root.encode() + scope["raw_path"]
        await self.app(scope, receive, send)


def create_app(settings: Settings, *, services: Services | None = None) -> FastAPI:
    services = services or Services.build(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await services.start()
        # What start-up made (modules, routes, models) lives as long as the process: out of
        # the collector's sight, a full collection under load took 100 ms instead of a few.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await services.stop()

    app = FastAPI(
        title="amobridge",
        version=__version__,
        lifespan=lifespan,
        description=API_DESCRIPTION,
        docs_url=None,  # served by install_docs from the app's own files (no CDN)
        redoc_url=None,  # ReDoc would load from a CDN
    )
    app.state.services = services
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=settings.server.max_body_bytes)
    # Added before RootPathMiddleware, so inside it: it sees the path with the prefix resolved.
    app.add_middleware(SecurityHeadersMiddleware, button_script_url=settings.amo.button_script_url)
    root_path = settings.server.root_path.strip().rstrip("/")
    if root_path:
        app.add_middleware(RootPathMiddleware, root_path="/" + root_path.lstrip("/"))
    install_error_handlers(app)

    from amobridge.connect.router import router as connect_router
    from amobridge.jobs.router import router as jobs_router
    from amobridge.notify.router import router as notify_router
    from amobridge.proxy.router import router as proxy_router
    from amobridge.sync.router import router as sync_router
    from amobridge.webhooks.router import receiver as webhook_receiver
    from amobridge.webhooks.router import router as webhooks_router

    app.include_router(webhook_receiver)  # first: amoCRM's deliveries are the hot path
    app.include_router(connect_router)
    app.include_router(sync_router)
    app.include_router(jobs_router)
    app.include_router(proxy_router)
    app.include_router(notify_router)
    app.include_router(webhooks_router)
    install_docs(app)
    install_openapi(app)

    @app.get(
        "/",
        tags=["ops"],
        summary="Where things are",
        response_model=ServiceIndex,
        responses={200: {"content": {"application/json": {"example": INDEX_EXAMPLE}}}},
    )
    async def index(request: Request) -> Response:
        """JSON for programs; a browser (HTML ranked above JSON in ``Accept``) gets the
        same as a page in its language (``?lang=``, ``Accept-Language``)."""
        root = request.scope.get("root_path", "")
        links = {
            "service": "amobridge",
            "version": __version__,
            "docs": f"{root}/docs",
            "openapi": f"{root}/openapi.json",
            "health": f"{root}/healthz",
            "ready": f"{root}/readyz",
            "connect": f"{root}/amocrm/auth?owner=…",
            "status": f"{root}/amocrm/status?owner=…",
        }
        if prefers_html(request.headers.get("accept")):
            return index_page(request, links)
        return JSONResponse(links)

    @app.get(
        "/healthz",
        tags=["ops"],
        summary="Liveness: the process is up",
        response_model=Health,
        responses={200: {"content": {"application/json": {"example": HEALTH_EXAMPLE}}}},
    )
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.get(
        "/readyz",
        tags=["ops"],
        summary="Readiness: the database answers",
        response_model=Ready,
        responses={
            200: {"content": {"application/json": {"example": READY_EXAMPLE}}},
            503: {
                "model": NotReady,
                "description": "Not ready: take it out of rotation until it answers 200",
                "content": {"application/json": {"example": NOT_READY_EXAMPLE}},
            },
        },
    )
    async def readyz() -> JSONResponse:
        """Ready when the database is the file opened and takes a write (probed at most once
        a second); 503 with the reason otherwise."""
        problem = await services.db.readiness()
        if problem is not None:
            return JSONResponse(
                {"status": "unavailable", "error": "storage_unavailable", "detail": problem},
                status_code=503,
            )
        return JSONResponse({"status": "ready"})

    return app
