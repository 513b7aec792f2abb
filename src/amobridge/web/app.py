"""``create_app(settings)``: the amobridge service as one FastAPI app.

Everything stateful hangs off :class:`Services`, built here from Settings (never at import time).
``Services.start()`` migrates the database and stores the bootstrap admin key; the app's lifespan
calls it, and so do in-process tests (httpx's ``ASGITransport`` sends no lifespan events).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import httpx
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.engine import make_url
from starlette.types import ASGIApp, Receive, Scope, Send

from amobridge import __version__
from amobridge.connect.clients import ConnectionClients
from amobridge.connect.ratelimit import DatabaseRateLimiter
from amobridge.connect.repository import AuditLog, ConnectionRepository, IntegrationRepository
from amobridge.connect.service import ConnectService
from amobridge.connect.stores import ButtonSecretStore, StateSigner, StateStore
from amobridge.connect.token_store import DatabaseTokenStore
from amobridge.errors import ConfigurationError
from amobridge.settings import Environment, Settings
from amobridge.storage.crypto import Keyring, load_or_create_dev_key
from amobridge.storage.db import Database
from amobridge.storage.migrate import upgrade_async
from amobridge.web.auth import ensure_api_key
from amobridge.web.errors import install_error_handlers

log = logging.getLogger("amobridge.web")

HOUSEKEEPING_INTERVAL = 60.0


def data_dir(settings: Settings) -> Path:
    url = make_url(settings.database.url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return Path(url.database).resolve().parent
    return Path("data").resolve()


def build_keyring(settings: Settings) -> Keyring:
    keys = [k.get_secret_value() for k in settings.security.secret_keys]
    if keys:
        return Keyring(keys)
    if settings.environment == Environment.production:
        raise ConfigurationError(
            "AMOBRIDGE_SECURITY__SECRET_KEYS is required in production: tokens are encrypted "
            "with it (make one with `amobridge keys generate`)"
        )
    return Keyring([load_or_create_dev_key(data_dir(settings))])


@dataclass
class Services:
    settings: Settings
    db: Database
    keyring: Keyring
    connect: ConnectService
    clients: ConnectionClients
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    started: bool = False

    @classmethod
    def build(
        cls, settings: Settings, *, amo_transport: httpx.AsyncBaseTransport | None = None
    ) -> Services:
        db = Database(settings.database.url)
        keyring = build_keyring(settings)
        connections = ConnectionRepository(keyring)
        integrations = IntegrationRepository(keyring)
        store = DatabaseTokenStore(db, connections)
        ttl = timedelta(seconds=settings.security.state_ttl_seconds)
        signer = StateSigner(*keyring.derived_keys("oauth-state"))
        holder: dict[str, ConnectService] = {}

        async def on_reauth(connection_id: str, error: Exception) -> None:
            from amobridge.amo.errors import AmoReauthRequired

            if isinstance(error, AmoReauthRequired):
                await holder["connect"].on_reauth_required(connection_id, error)

        clients = ConnectionClients(
            db,
            connections,
            integrations,
            store,
            on_reauth=on_reauth,
            transport=amo_transport,
            base_url=settings.amo.api_base_url,
            rate_limit_rps=settings.amo.rate_limit_rps,
            rate_limiter=(
                DatabaseRateLimiter(db, max(1, int(settings.amo.rate_limit_rps)))
                if settings.amo.rate_limit_backend == "database"
                else None
            ),
            leeway=float(settings.amo.refresh_leeway_seconds),
        )
        connect = ConnectService(
            settings,
            db,
            states=StateStore(signer, ttl),
            button_secrets=ButtonSecretStore(keyring, ttl),
            connections=connections,
            integrations=integrations,
            audit=AuditLog(),
            clients=clients,
        )
        holder["connect"] = connect
        return cls(settings, db, keyring, connect, clients)

    async def start(self, *, migrate: bool = True, workers: bool | None = None) -> None:
        if self.started:
            return
        if migrate:
            await upgrade_async(self.settings.database.url)
        admin = self.settings.security.admin_api_key
        if admin is not None:
            await ensure_api_key(
                self.db, key=admin.get_secret_value(), name="bootstrap-admin", role="admin"
            )
        run = self.settings.server.run_workers if workers is None else workers
        if run:
            self._tasks.append(asyncio.create_task(self._housekeeping(), name="housekeeping"))
        self.started = True

    async def _housekeeping(self) -> None:
        keepalive = timedelta(days=self.settings.amo.keepalive_refresh_days)
        while True:
            try:
                await self.connect.purge_expired()
                await self.connect.keepalive(older_than=keepalive)
            except Exception:  # a bad round must not end housekeeping; it is logged
                log.exception("housekeeping round failed")
            await asyncio.sleep(HOUSEKEEPING_INTERVAL)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.clients.aclose()
        await self.db.dispose()
        self.started = False


class RootPathMiddleware:
    """Serve under a proxy prefix (seed 000's ``/api``) as ASGI servers do for ``--root-path``:
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
        try:
            yield
        finally:
            await services.stop()

    app = FastAPI(
        title="amobridge",
        version=__version__,
        lifespan=lifespan,
        description="Connects business backends to amoCRM / Kommo and keeps them connected.",
    )
    app.state.services = services
    root_path = settings.server.root_path.strip().rstrip("/")
    if root_path:
        app.add_middleware(RootPathMiddleware, root_path="/" + root_path.lstrip("/"))
    install_error_handlers(app)

    from amobridge.connect.router import router as connect_router

    app.include_router(connect_router)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.get("/readyz", tags=["ops"])
    async def readyz() -> JSONResponse:
        try:
            async with services.db.transaction() as session:
                await session.execute(text("SELECT 1"))
        except Exception as exc:  # reported, not raised: this is the readiness answer
            return JSONResponse(
                {"status": "unavailable", "detail": f"database: {type(exc).__name__}"},
                status_code=503,
            )
        return JSONResponse({"status": "ready"})

    return app
