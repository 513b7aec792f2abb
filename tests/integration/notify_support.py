"""What the events tests share: the service wired to the sandbox and to a small host app (an ASGI
app of its own, in-process) that records what arrives at ``http://hostapp.test`` and answers with
the statuses a test gives it."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from amobridge.jobs import JobWorker
from amobridge.services import Services
from amobridge.web.app import create_app

HOST_URL = "http://hostapp.test"
# Standard Webhooks secrets: whsec_ and base64 of random bytes.
SECRET = "whsec_" + base64.b64encode(b"events-test-secret-0123456789ab").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"another-test-secret-0123456789a").decode()


@dataclass
class Arrival:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class HostApp:
    """The host app's endpoints: every request is recorded; each path answers with the next
    status of its queue (200 when empty), or waits past any timeout for ``"hang"``."""

    arrivals: list[Arrival] = field(default_factory=list)
    replies: dict[str, list[int | str]] = field(default_factory=dict)

    def app(self) -> Starlette:
        async def receive(request: Request) -> Response:
            body = await request.body()
            path = request.url.path
            self.arrivals.append(Arrival(path, dict(request.headers), body))
            queue = self.replies.get(path) or []
            reply = queue.pop(0) if queue else 200
            if reply == "hang":
                raise httpx.ReadTimeout("the host app did not answer")
            return Response(f"reply {reply}", status_code=int(reply))

        return Starlette(routes=[Route("/{path:path}", receive, methods=["POST"])])

    def at(self, path: str) -> list[Arrival]:
        return [a for a in self.arrivals if a.path == path]


class Routes(httpx.AsyncBaseTransport):
    """hostapp.test to the host app, the service's own URL to the service, the rest (amoCRM)
    to the sandbox."""

    def __init__(self, sandbox_app: Any, host: HostApp) -> None:
        self.sandbox = httpx.ASGITransport(app=sandbox_app)
        self.host = httpx.ASGITransport(app=host.app())
        self.service: Any = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "hostapp.test":
            return await self.host.handle_async_request(request)
        if request.url.host == "service.test" and self.service is not None:
            return await httpx.ASGITransport(app=self.service).handle_async_request(request)
        return await self.sandbox.handle_async_request(request)


@dataclass
class EventsStack:
    stack: Any  # conftest.Stack
    host: HostApp

    @property
    def services(self) -> Services:
        services: Services = self.stack.services
        return services

    def events(self, path: str = "/hook") -> list[dict[str, Any]]:
        """Every event that reached the host app at ``path``, in order, each verified against
        its signature with :data:`SECRET` (a bad one raises)."""
        return [Webhook(SECRET).verify(a.body, a.headers) for a in self.host.at(path)]


@contextlib.asynccontextmanager
async def events_stack(
    database_url: str,
    sandbox: Any,
    sandbox_app: Any,
    control: httpx.AsyncClient,
    **over: Any,
) -> AsyncIterator[EventsStack]:
    """The integration tests' ``stack`` with outbound requests routed as :class:`Routes` says
    and settings ``over`` (e.g. ``events={"url": ..., "secret": ...}``)."""
    from conftest import SERVICE_URL, Stack, make_settings  # type: ignore[import-not-found]

    host = HostApp()
    routes = Routes(sandbox_app, host)
    integration = (
        await control.post(
            "/_sandbox/integrations",
            json={
                "name": "amobridge",
                "redirect_uri": f"{SERVICE_URL}/amocrm/callback",
                "disconnect_url": f"{SERVICE_URL}/amocrm/uninstall",
            },
        )
    ).json()
    account = (await control.post("/_sandbox/accounts", json={"subdomain": "acme"})).json()
    settings = make_settings(
        database_url,
        amo={"client_id": integration["client_id"], "client_secret": integration["client_secret"]},
        **over,
    )
    services = Services.build(settings, amo_transport=routes)
    app = create_app(settings, services=services)
    routes.service = app
    sandbox._outbound_transport = httpx.ASGITransport(app=app)
    await services.start(migrate=False)
    async with services.db.transaction() as session:
        admin_key = await services.auth.create_api_key(session, name="admin", role="admin")
        app_key = await services.auth.create_api_key(session, name="host-app", role="app")
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url=SERVICE_URL
        ) as http:
            stack = Stack(
                settings,
                services,
                app,
                http,
                control,
                sandbox,
                admin_key,
                app_key,
                integration,
                account,
            )
            yield EventsStack(stack, host)
    finally:
        await services.stop()


async def run_jobs(services: Services, *, ahead: timedelta | None = None, rounds: int = 50) -> int:
    """Run the job worker until nothing is due (its clock ``ahead`` of this one's, so retries
    scheduled within that are due); the number of jobs run."""
    clock = (lambda: datetime.now(UTC) + ahead) if ahead else None
    worker = JobWorker(
        services.db,
        services.jobs,
        services.job_handlers,
        services.settings.jobs,
        clients=services.clients,
        services=services,
        clock=clock,
    )
    total = 0
    for _ in range(rounds):
        await worker.tasks.upkeep()
        claimed = await worker.run_once()
        if not claimed:
            return total
        total += len(claimed)
    raise AssertionError(f"the queue still had due jobs after {rounds} batches")


def events_settings(path: str = "/hook", **over: Any) -> dict[str, Any]:
    return {"events": {"url": f"{HOST_URL}{path}", "secret": SECRET, **over}}
