"""``amobridge demo`` (what ``make run`` starts): the service and the sandbox in one process.

The sandbox gets a demo account ("Demo Academy", with an online school's pipeline) and an integration
whose redirect URI is the service's callback; the service is configured to use the sandbox for
the consent page, the button script and every API call. ``/demo/*`` routes act as a demo owner,
so the printed URLs work in a browser as they are (no credential is printed).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import SecretStr

from amobridge import __version__
from amobridge.auth.principal import Principal
from amobridge.dependencies import ReadSession, WriteSession
from amobridge.sandbox import Sandbox, create_sandbox_app
from amobridge.sandbox.demo import Demo, seed_demo
from amobridge.sandbox.from_settings import sandbox_from_settings
from amobridge.services import Services, data_dir
from amobridge.settings import Environment, Settings
from amobridge.storage.location import shown_database
from amobridge.web.app import create_app

DEMO_OWNER = "demo-user"


def add_demo_routes(app: FastAPI, services: Services) -> None:
    """Browser shortcuts acting as the demo owner: only ``amobridge demo`` mounts them."""
    from amobridge.connect.router import auth, connect_page

    demo_user = Principal(role="user", name=DEMO_OWNER, owner=DEMO_OWNER)

    @app.get("/demo/connect", include_in_schema=False)
    async def demo_connect(request: Request, session: WriteSession) -> Response:
        # The same route a host app's user takes, so the flow is bound to this browser too.
        return await auth(request, services.connect, session, demo_user, None, "web", None)

    @app.get("/demo/button", include_in_schema=False)
    async def demo_button(request: Request, session: WriteSession) -> Response:
        return await connect_page(request, services.connect, session, demo_user, None, "web", None)

    @app.get("/demo/status", include_in_schema=False)
    async def demo_status(session: ReadSession) -> dict[str, object]:
        return await services.connect.status(session, DEMO_OWNER)


def demo_settings(
    settings: Settings, *, service_url: str, sandbox_url: str, client_id: str, client_secret: str
) -> Settings:
    if settings.environment == Environment.production:
        from amobridge.errors import ConfigurationError

        raise ConfigurationError("the demo runs against the sandbox: not in production")
    amo = settings.amo.model_copy(
        update={
            "client_id": client_id,
            "client_secret": SecretStr(client_secret),
            "redirect_uri": f"{service_url}/amocrm/callback",
            "authorize_url": f"{sandbox_url}/oauth",
            "button_script_url": f"{sandbox_url}/auth/button.min.js",
            "api_base_url": sandbox_url,
        }
    )
    server = settings.server.model_copy(update={"public_url": service_url})
    return settings.model_copy(update={"amo": amo, "server": server})


def demo_state_file(settings: Settings) -> Path:
    """Where the demo's sandbox keeps its state unless AMOBRIDGE_SANDBOX__STATE_FILE says: beside
    the service's database, so the tokens stored there keep meaning something after a restart."""
    return data_dir(settings) / "sandbox-state.json"


def demo_sandbox(settings: Settings, *, service_url: str) -> tuple[Sandbox, Demo]:
    """The demo's sandbox, built from the settings as ``amobridge sandbox`` builds its own (a
    control token closes the control API here too), with the demo account and an integration
    wired to the service's callback and uninstall hook, loaded from and saved to its state
    file."""
    group = settings.sandbox
    box = sandbox_from_settings(group, state_file=str(demo_state_file(settings)))
    made = seed_demo(
        box, subdomain=group.demo_subdomain, redirect_uri=f"{service_url}/amocrm/callback"
    )
    made.integration.disconnect_url = f"{service_url}/amocrm/uninstall"
    box.save()  # the seeded world is on disk before the first request
    return box, made


async def run_demo(settings: Settings, *, host: str, port: int, sandbox_port: int) -> None:
    service_url = f"http://{host}:{port}"
    sandbox_url = f"http://{host}:{sandbox_port}"
    box, made = demo_sandbox(settings, service_url=service_url)
    wired = demo_settings(
        settings,
        service_url=service_url,
        sandbox_url=sandbox_url,
        client_id=made.integration.client_id,
        client_secret=made.integration.client_secret,
    )
    services = Services.build(wired)
    services.keyring.load()  # the development key is announced at start, not at the first flow
    service_app = create_app(wired, services=services)
    add_demo_routes(service_app, services)
    servers = [
        uvicorn.Server(
            uvicorn.Config(
                create_sandbox_app(sandbox=box),
                host=host,
                port=sandbox_port,
                log_config=None,
                access_log=False,
            )
        ),
        uvicorn.Server(
            uvicorn.Config(
                service_app,
                host=host,
                port=port,
                log_config=None,
                access_log=False,
                proxy_headers=True,
            )
        ),
    ]
    echo = typer.echo
    echo(f"amobridge {__version__} — service and sandbox amoCRM")
    echo(f"  service:   {service_url}   (API docs: {service_url}/docs, health: /healthz)")
    echo(f"  sandbox:   {sandbox_url}   (a local amoCRM; control API: /_sandbox/health)")
    echo(f"  account:   {made.account.host} (id {made.account.id})")
    echo(f"  database:  {shown_database(wired.database.url)}")
    echo(f"  state:     {box.state_file}   (the sandbox's accounts and tokens; delete to reset)")
    echo("")
    echo(f"Connect the demo owner {DEMO_OWNER!r}: open in a browser")
    echo(f"  {service_url}/demo/connect          (redirect flow)")
    echo(f"  {service_url}/demo/button           (amoCRM's website button)")
    echo(f"  {service_url}/demo/status           (its connection status)")
    echo("(/demo/* exist only in `amobridge demo`; the sandbox keeps its state across restarts.)")
    try:
        await asyncio.gather(*(server.serve() for server in servers))
    finally:
        await box.aclose()
