"""The ``amobridge`` command."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from amobridge import __version__
from amobridge.errors import ConfigurationError
from amobridge.settings import Settings, load_settings

app = typer.Typer(
    name="amobridge",
    help="Connect business backends to amoCRM / Kommo and keep them connected.",
    no_args_is_help=True,
    add_completion=False,
)


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigurationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def version() -> None:
    """Print amobridge's version."""
    typer.echo(__version__)


@app.command()
def sandbox(
    host: Annotated[str | None, typer.Option(help="Interface to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (default 8010).")] = None,
    demo: Annotated[bool, typer.Option(help="Create the demo account and integration.")] = False,
) -> None:
    """Run the sandbox: a local fake amoCRM (OAuth, API v4, webhooks, faults)."""
    import uvicorn

    from amobridge.sandbox import Sandbox, SandboxConfig, create_sandbox_app
    from amobridge.sandbox.clock import Clock
    from amobridge.sandbox.demo import seed_demo

    settings = _settings()
    group = settings.sandbox
    host = host or group.host
    port = port or group.port
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    config = SandboxConfig(
        code_ttl=group.code_ttl_seconds,
        access_ttl=group.access_ttl_seconds,
        refresh_ttl=group.refresh_ttl_seconds,
        rate_limit_enabled=group.rate_limit_enabled,
        rate_limit_rps=group.rate_limit_rps,
        account_rps_cap=group.account_rps_cap,
        ban_seconds=group.ban_seconds,
        control_token=group.control_token.get_secret_value() if group.control_token else None,
    )
    box = Sandbox(config, clock=Clock(scale=group.time_scale))
    base = f"http://{host}:{port}"
    if demo:
        made = seed_demo(
            box, subdomain=group.demo_subdomain, redirect_uri=f"{base}/_sandbox/demo/callback"
        )
        typer.echo(f"amobridge sandbox {__version__} — a local amoCRM")
        typer.echo(f"  sandbox:        {base}  (control API: {base}/_sandbox/health)")
        typer.echo(f"  demo account:   {made.account.host} (id {made.account.id})")
        typer.echo(f"  API base:       {base}/api/v4/  (Host: {made.account.host})")
        typer.echo(f"  integration:    client_id {made.integration.client_id}")
        typer.echo("                  (secret: GET /_sandbox/integrations)")
        typer.echo(
            f"  connect:        {base}/oauth?client_id={made.integration.client_id}"
            "&state=demo&mode=popup"
        )
        typer.echo("  docs:           docs/sandbox.md")
    uvicorn.run(
        create_sandbox_app(sandbox=box),
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
        access_log=False,
    )


def main() -> None:
    app()
