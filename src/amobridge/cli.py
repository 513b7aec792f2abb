"""The ``amobridge`` command."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

from amobridge import __version__
from amobridge.errors import AmobridgeError, ConfigurationError, ServiceError

if TYPE_CHECKING:
    from datetime import datetime

    from amobridge.connect.listing import ListedConnection
    from amobridge.settings import Settings

# Everything heavy (SQLAlchemy, Alembic, FastAPI, the service's object graph, even the settings'
# pydantic models) is imported inside the commands that use it: `amobridge version` and
# `amobridge connections list` pay only for what they need.

T = TypeVar("T")

# Plain Click help (rich_markup_mode=None): Typer's rich help adds a column of Python types
# (<bool>, <str>) to every option, --help included. Options declare a metavar (PORT) instead.
HELP: dict[str, Any] = {"no_args_is_help": True, "rich_markup_mode": None}

app = typer.Typer(
    name="amobridge",
    help="Connect business backends to amoCRM / Kommo and keep them connected.",
    add_completion=False,
    # A traceback's local variables may hold tokens and secrets.
    pretty_exceptions_show_locals=False,
    **HELP,
)


def _settings() -> Settings:
    from amobridge.settings import load_settings

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
    host: Annotated[
        str | None, typer.Option(metavar="HOST", help="Interface to listen on (default 127.0.0.1).")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(metavar="PORT", min=1, max=65535, help="Port to listen on (default 8010)."),
    ] = None,
    demo: Annotated[
        bool, typer.Option("--demo/--no-demo", help="Create the demo account and integration.")
    ] = False,
) -> None:
    """Run the sandbox, a local fake amoCRM.

    OAuth, API v4, webhooks and injected faults, with a control API under /_sandbox.
    """
    import uvicorn

    from amobridge.sandbox import create_sandbox_app
    from amobridge.sandbox.demo import seed_demo
    from amobridge.sandbox.from_settings import sandbox_from_settings

    settings = _settings()
    group = settings.sandbox
    host = host or group.host
    port = port or group.port
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    box = sandbox_from_settings(group)
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


# --- the service ---------------------------------------------------------------------------------

keys_app = typer.Typer(help="Encryption keys for tokens and secrets at rest.", **HELP)
api_keys_app = typer.Typer(help="API keys of host apps.", **HELP)
connections_app = typer.Typer(help="Connections to amoCRM accounts.", **HELP)
app.add_typer(keys_app, name="keys")
app.add_typer(api_keys_app, name="api-keys")
app.add_typer(connections_app, name="connections")


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except ConfigurationError as exc:
        _fail(str(exc), 2)
    except ServiceError as exc:
        _fail(exc.detail)
    except AmobridgeError as exc:  # e.g. a stored secret no configured key decrypts
        _fail(str(exc))
    except Exception as exc:
        problem = _database_problem(exc)
        if problem is None:
            raise
        _fail(problem)


def _database_problem(exc: BaseException) -> str | None:
    """One line on what failed in the database (unreachable, refused, a file that cannot be
    opened), without the SQL or its parameters (they may hold tokens); None for anything else,
    which is a bug and keeps its traceback."""
    import sqlite3
    import sys

    sa_exc = sys.modules.get("sqlalchemy.exc")
    if sa_exc is not None and isinstance(exc, sa_exc.DBAPIError):
        lines = str(exc.orig).strip().splitlines() if exc.orig is not None else []
        reason = lines[0] if lines else type(exc).__name__
    elif isinstance(exc, sqlite3.Error | OSError):
        reason = str(exc)
    else:
        return None
    return f"the database failed: {reason}"


def _configure_logging(settings: Settings) -> None:
    from amobridge.logs import configure_logging

    configure_logging(settings.log_level)


def _check_storage(settings: Settings) -> None:
    """Refuse to start on a database that is gone, replaced or write-protected: one clear
    message and exit code 2 (the check would otherwise fail inside the server's start-up)."""
    from amobridge.storage.identity import verify

    try:
        asyncio.run(verify(settings.database.url))
    except ConfigurationError as exc:
        _fail(str(exc), 2)


@app.command()
def serve(
    host: Annotated[
        str | None,
        typer.Option(metavar="HOST", help="Interface (default AMOBRIDGE_SERVER__HOST, 127.0.0.1)."),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            metavar="PORT", min=1, max=65535, help="Port (default AMOBRIDGE_SERVER__PORT, 8000)."
        ),
    ] = None,
) -> None:
    """Run the service (migrates the database first).

    Connect flows, connection status and the background workers.
    """
    import uvicorn

    from amobridge.services import Services
    from amobridge.web.app import create_app

    settings = _settings()
    _say_database(settings)
    _configure_logging(settings)
    _check_storage(settings)
    try:
        services = Services.build(settings)
        # The service encrypts and decrypts from its first request on: its keys are read (and
        # the development key announced) at start.
        services.keyring.load()
        application = create_app(settings, services=services)
    except ConfigurationError as exc:
        _fail(str(exc), 2)
    uvicorn.run(
        application,
        host=host or settings.server.host,
        port=port or settings.server.port,
        log_level=settings.log_level.lower(),
        proxy_headers=True,
        forwarded_allow_ips=settings.server.forwarded_allow_ips,
        log_config=None,
    )


@app.command()
def migrate() -> None:
    """Bring the database schema up to date (Alembic), after the start-up check of the
    database's identity (a missing or swapped database is refused, not recreated)."""
    settings = _settings()
    _say_database(settings)
    _check_storage(settings)
    typer.echo("database is up to date")


@keys_app.command("generate")
def keys_generate() -> None:
    """Print a new Fernet key for AMOBRIDGE_SECURITY__SECRET_KEYS."""
    from amobridge.storage.crypto import generate_key

    typer.echo(generate_key())


@keys_app.command("rotate")
def keys_rotate() -> None:
    """Re-encrypt the stored secrets with the primary key.

    The primary key is the first of AMOBRIDGE_SECURITY__SECRET_KEYS; every key after it must
    still decrypt what it encrypted.
    """
    from amobridge.services import Services
    from amobridge.storage.crypto import DecryptionError
    from amobridge.storage.rotate import rotate_all

    settings = _settings()
    _say_database(settings)
    _require_database(settings)

    async def go() -> int:
        services = Services.build(settings)
        try:
            await services.start(workers=False)
            return await rotate_all(services.db, services.keyring)
        except DecryptionError:
            raise ConfigurationError(
                "a stored secret cannot be decrypted with any key in "
                "AMOBRIDGE_SECURITY__SECRET_KEYS; nothing was changed. Put the new key first and "
                "keep every old key after it (NEW,OLD) until the rotation has run."
            ) from None
        finally:
            await services.stop()

    count = _run(go())
    typer.echo(f"re-encrypted {count} values with the primary key")


@api_keys_app.command("create")
def api_keys_create(
    name: Annotated[
        str, typer.Option(metavar="NAME", help="Who uses the key (shown in the audit log).")
    ],
    role: Annotated[str, typer.Option(metavar="ROLE", help="admin or app.")] = "app",
) -> None:
    """Create an API key and print it once (only its hash is stored)."""
    from amobridge.auth.principal import identifier_problem
    from amobridge.services import Services

    if role not in ("admin", "app"):
        _fail("role must be admin or app", 2)
    if problem := identifier_problem(name, "--name"):
        _fail(problem, 2)
    settings = _settings()
    _say_database(settings)

    async def go() -> str:
        services = Services.build(settings)
        try:
            await services.start(workers=False)
            async with services.db.transaction() as session:
                return await services.auth.create_api_key(
                    session,
                    name=name,
                    role=role,  # type: ignore[arg-type]
                )
        finally:
            await services.stop()

    key = _run(go())
    typer.echo(key)
    typer.echo("store it now: it is not shown again", err=True)


def _say_database(settings: Settings) -> None:
    """One line on stderr naming the database a command uses: the default SQLite path is relative
    to the working folder, so a command run from another folder uses another database."""
    from amobridge.storage.location import shown_database

    typer.echo(f"database: {shown_database(settings.database.url)}", err=True)


def _require_database(settings: Settings) -> None:
    """Stop a command that reads or rewrites what is stored when its SQLite file does not exist,
    rather than create an empty database there."""
    from amobridge.storage.location import sqlite_file

    path = sqlite_file(settings.database.url)
    if path is None or path.exists():
        return
    if path.is_absolute():
        _fail(
            f"no database at {path.resolve()} — start the service (amobridge serve) or run "
            "`amobridge migrate` with this AMOBRIDGE_DATABASE__URL to create it"
        )
    _fail(
        f"no database at {path.resolve()} — run from the folder where the service runs, or set "
        "AMOBRIDGE_DATABASE__URL to its absolute path (sqlite:////srv/amobridge/data/amobridge.db)"
    )


NOTHING = "—"


def _when(value: datetime | None) -> str:
    from datetime import UTC

    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if value else NOTHING


def _token_expires(row: ListedConnection) -> str:
    if not row.has_tokens:
        return NOTHING
    if row.long_lived:
        return "long-lived" if row.expires_at is None else f"{_when(row.expires_at)} (long-lived)"
    return _when(row.expires_at)


@connections_app.command("list")
def connections_list(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON array (for scripts) instead of a table.")
    ] = False,
    owner: Annotated[
        str | None, typer.Option(metavar="OWNER", help="Only the connection of this owner.")
    ] = None,
) -> None:
    """List the connections and their status (never a token)."""
    from amobridge.connect.listing import DatabaseNotReady, list_database, list_sqlite
    from amobridge.storage.location import sqlite_file

    if owner is not None:
        # Only when asked: amobridge.auth imports SQLAlchemy, which this command otherwise skips.
        from amobridge.auth.principal import identifier_problem

        if problem := identifier_problem(owner):
            _fail(problem, 2)
    settings = _settings()
    _say_database(settings)
    _require_database(settings)
    path = sqlite_file(settings.database.url)
    try:
        rows = list_sqlite(path) if path else _run(list_database(settings.database.url))
    except DatabaseNotReady as exc:
        _fail(str(exc))
    if owner is not None:
        rows = [row for row in rows if row.owner == owner]
        if not rows:
            _fail(f"no connection for owner {owner!r}")
    if as_json:
        import json

        typer.echo(json.dumps([row.as_json() for row in rows], indent=2, ensure_ascii=False))
        return
    if not rows:
        typer.echo("no connections")
        return
    table = [("OWNER", "ACCOUNT", "STATUS", "TOKEN EXPIRES", "LAST REFRESH", "LAST ERROR")]
    for row in rows:
        table.append(
            (
                row.owner,
                row.domain or NOTHING,
                row.status,
                _token_expires(row),
                _when(row.last_refresh_at),
                (row.last_error or NOTHING).replace("\n", " ")[:80],
            )
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]) - 1)]
    for line in table:
        cells = [cell.ljust(width) for cell, width in zip(line, widths, strict=False)]
        typer.echo("  ".join([*cells, line[-1]]))


@connections_app.command("import-env")
def connections_import_env(
    # Described in the docstring: Typer lists an argument with its Python type (<path>).
    env_file: Annotated[Path, typer.Argument(metavar="ENV_FILE", hidden=True)],
    owner: Annotated[
        str, typer.Option(metavar="OWNER", help="Owner id of the imported connection.")
    ] = "default",
) -> None:
    """Import a hand-built integration's .env as a connection.

    ENV_FILE holds its AMOCRM_* / AMO_* values (AMOCRM_SUBDOMAIN, AMOCRM_ACCESS_TOKEN,
    AMO_DOMAIN, …): an existing single-account setup migrates in one command.
    """
    from amobridge.auth.principal import identifier_problem
    from amobridge.connect.envimport import read_legacy_env
    from amobridge.services import Services

    if not env_file.is_file():
        _fail(f"{env_file} does not exist", 2)
    if problem := identifier_problem(owner):
        _fail(problem, 2)
    settings = _settings()
    _say_database(settings)
    try:
        legacy = read_legacy_env(env_file)
    except ValueError as exc:
        _fail(str(exc), 2)
    for warning in legacy.warnings:
        typer.echo(f"warning: {warning}", err=True)

    async def go() -> dict[str, Any]:
        services = Services.build(settings)
        try:
            await services.start(workers=False)
            async with services.db.transaction() as session:
                await services.connect.import_tokens(
                    session,
                    owner,
                    domain=legacy.domain,
                    access_token=legacy.access_token,
                    refresh_token=legacy.refresh_token,
                    expires_in=None,
                    client_id=legacy.client_id,
                    client_secret=legacy.client_secret,
                    redirect_uri=legacy.redirect_uri,
                )
                return await services.connect.status(session, owner)
        finally:
            await services.stop()

    status = _run(go())
    kind = (
        "long-lived token" if status.get("longLived") else "OAuth tokens (refreshed automatically)"
    )
    typer.echo(
        f"imported {status['domain']} for owner {owner!r}: {kind}, status {status['status']}"
    )


@app.command()
def demo(
    host: Annotated[
        str | None,
        typer.Option(metavar="HOST", help="Interface of both servers (default 127.0.0.1)."),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(metavar="PORT", min=1, max=65535, help="Service port (default 8000)."),
    ] = None,
    sandbox_port: Annotated[
        int | None,
        typer.Option(metavar="PORT", min=1, max=65535, help="Sandbox port (default 8010)."),
    ] = None,
) -> None:
    """Run the service and the sandbox together (make run).

    The two are wired to each other, with a demo account to connect.
    """
    from amobridge.demo import run_demo

    settings = _settings()
    _configure_logging(settings)
    _check_storage(settings)
    try:
        asyncio.run(
            run_demo(
                settings,
                host=host or settings.server.host,
                port=port or settings.server.port,
                sandbox_port=sandbox_port or settings.sandbox.port,
            )
        )
    except ConfigurationError as exc:
        _fail(str(exc), 2)
    except KeyboardInterrupt:
        pass


# --- import ---------------------------------------------------------------------------------------

IMPORT_POLL_SECONDS = 0.5  # how often the progress bar reads the import's row
IMPORT_STOP_GRACE = 5.0  # seconds a handler it runs gets to finish once the import is over


@app.command("import")
def import_account(
    owner: Annotated[str, typer.Option(metavar="OWNER", help="Whose amoCRM account to import.")],
    wait: Annotated[
        bool,
        typer.Option(
            "--wait/--no-wait", help="Show the progress until it ends (default), or only queue it."
        ),
    ] = True,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the import as JSON (for scripts) at the end.")
    ] = False,
) -> None:
    """Import an owner's amoCRM account into the mirror.

    Pipelines, custom fields, contacts and leads, 250 a page at the connection's pace. An
    unfinished import is resumed from its last page. While it waits, this command runs queued
    imports itself, as a worker does. Exit 1 when it fails or has to wait for the owner.
    """
    from amobridge.auth.principal import identifier_problem

    if problem := identifier_problem(owner):
        _fail(problem, 2)
    settings = _settings()
    _say_database(settings)
    _require_database(settings)
    _configure_logging(settings)
    shown = _run(_import(settings, owner, wait=wait, quiet=as_json))
    if as_json:
        import json

        typer.echo(json.dumps(shown, indent=2, ensure_ascii=False))
    else:
        typer.echo(_import_line(shown))
    if wait and shown["state"] != "succeeded":
        raise typer.Exit(1)


def _import_line(shown: dict[str, Any]) -> str:
    counts = shown["counts"]
    read = (
        f"{int(counts.get('leads', 0)):,} leads, {int(counts.get('contacts', 0)):,} contacts, "
        f"{int(counts.get('pipelines', 0))} pipelines"
    )
    pages = sum(shown["pages"].values())
    line = f"import {shown['id']} {shown['state']}: {read} ({pages} pages)"
    if shown["last_error"]:
        line += f" — {shown['last_error']}"
    return line


def _import_done(shown: dict[str, Any]) -> bool:
    """Over, or waiting for something no worker here can change (the owner, an operator)."""
    job = shown["job"] or {}
    return (
        shown["state"] in ("succeeded", "failed")
        or job.get("state") in ("cancelled", "failed")
        or job.get("paused_reason") is not None
    )


async def _import(settings: Settings, owner: str, *, wait: bool, quiet: bool) -> dict[str, Any]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from amobridge.jobs import JobHandlers, JobWorker
    from amobridge.services import Services
    from amobridge.sync import kinds

    services = Services.build(settings)
    worker: JobWorker | None = None
    try:
        await services.start(workers=False)
        shown, _ = await services.imports.start(owner, actor="cli")
        if not wait:
            return shown
        handlers = JobHandlers()
        handlers.register(kinds.IMPORT, services.import_tasks.run)
        worker = JobWorker(
            services.db,
            services.jobs,
            handlers,
            settings.jobs,
            clients=services.clients,
            services=services,
            concurrency=1,
        )
        worker.start()
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[read]}"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, disable=quiet, transient=False) as progress:
            task = progress.add_task("queued", total=None, read="")
            while True:
                shown = await services.imports.get(owner, shown["id"])
                counts = shown["counts"]
                read = sum(int(counts.get(name, 0)) for name in ("contacts", "leads"))
                progress.update(
                    task,
                    description=f"{shown['state']} {shown['entity'] or ''}".strip(),
                    completed=read,
                    read=f"{int(counts.get('contacts', 0)):,} contacts, "
                    f"{int(counts.get('leads', 0)):,} leads",
                )
                if _import_done(shown):
                    progress.update(task, total=max(read, 1), completed=max(read, 1))
                    break
                await asyncio.sleep(IMPORT_POLL_SECONDS)
        # The job's outcome is committed after its last page: let it finish, then show it.
        await worker.stop(grace=IMPORT_STOP_GRACE)
        worker = None
        return await services.imports.get(owner, shown["id"])
    finally:
        if worker is not None:  # interrupted: what it runs is handed back, not lost
            await worker.stop(grace=0)
        await services.stop()


# --- the job queue -------------------------------------------------------------------------------

jobs_app = typer.Typer(help="The outbound job queue: see, retry and cancel jobs.", **HELP)
app.add_typer(jobs_app, name="jobs")


@app.command()
def worker(
    concurrency: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            min=1,
            max=256,
            help="Handlers run at the same time (default AMOBRIDGE_JOBS__CONCURRENCY, 4).",
        ),
    ] = None,
) -> None:
    """Run the background workers, without the HTTP API.

    Jobs, the refresh keep-alive, purges and host-app notifications. Start several (one per
    core, on more hosts) against one PostgreSQL database: they never claim the same job.
    SIGTERM or Ctrl-C stops it after the running handlers finish.
    """
    import signal

    from amobridge.services import Services

    settings = _settings()
    if concurrency is not None:
        jobs = settings.jobs.model_copy(update={"concurrency": concurrency})
        settings = settings.model_copy(update={"jobs": jobs})
    _say_database(settings)
    _configure_logging(settings)
    _check_storage(settings)

    async def go() -> None:
        services = Services.build(settings)
        services.keyring.load()
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(number, stopping.set)
        try:
            await services.start(workers=True)
            running = services.job_worker
            kinds = ", ".join(services.job_handlers.kinds()) or "none registered"
            typer.echo(
                f"worker {running.worker_id if running else '?'} running "
                f"{services.settings.jobs.concurrency} at a time (job kinds: {kinds})",
                err=True,
            )
            await stopping.wait()
        finally:
            await services.stop()

    _run(go())


def _job_line(job: Any) -> tuple[str, ...]:
    return (
        str(job.id),
        job.state + (f" ({job.paused_reason})" if job.paused_reason else ""),
        job.kind,
        job.owner or NOTHING,
        f"{job.attempts}/{job.max_attempts}",
        _when(job.run_after),
        (job.last_error or NOTHING).replace("\n", " ")[:80],
    )


@jobs_app.command("list")
def jobs_list(
    state: Annotated[
        str | None,
        typer.Option(
            metavar="STATE",
            help="pending, running, succeeded, failed, paused or cancelled.",
        ),
    ] = None,
    owner: Annotated[str | None, typer.Option(metavar="OWNER", help="Only this owner's.")] = None,
    kind: Annotated[str | None, typer.Option(metavar="KIND", help="Only this kind.")] = None,
    limit: Annotated[
        int, typer.Option(metavar="N", min=1, max=200, help="At most N jobs (newest first).")
    ] = 50,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON array (for scripts) instead of a table.")
    ] = False,
) -> None:
    """List jobs, newest first, with their last error."""
    from amobridge.auth.principal import identifier_problem
    from amobridge.services import Services

    if owner is not None and (problem := identifier_problem(owner)):
        _fail(problem, 2)
    settings = _settings()
    _say_database(settings)
    _require_database(settings)

    async def go() -> tuple[list[Any], dict[str, int]]:
        services = Services.build(settings)
        try:
            await services.start(workers=False)
            async with services.db.read() as session:
                page = await services.jobs.list(
                    session, owner=owner, state=state, kind=kind, limit=limit
                )
                counts = await services.jobs.counts(session, owner=owner)
            return page.jobs, counts
        finally:
            await services.stop()

    rows, counts = _run(go())
    if as_json:
        import json

        from amobridge.jobs.schemas import JobOut, job_out

        found = [JobOut.model_validate(job_out(row)).model_dump(mode="json") for row in rows]
        typer.echo(json.dumps(found, indent=2, ensure_ascii=False))
        return
    typer.echo(", ".join(f"{n} {name}" for name, n in counts.items() if n) or "no jobs")
    if not rows:
        return
    table: list[tuple[str, ...]] = [
        ("ID", "STATE", "KIND", "OWNER", "ATTEMPTS", "RUN AFTER", "LAST ERROR")
    ]
    table += [_job_line(row) for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]) - 1)]
    for line in table:
        cells = [cell.ljust(width) for cell, width in zip(line, widths, strict=False)]
        typer.echo("  ".join([*cells, line[-1]]))


def _job_action(job_id: int, action: str) -> None:
    from amobridge.services import Services

    settings = _settings()
    _say_database(settings)
    _require_database(settings)

    async def go() -> Any:
        services = Services.build(settings)
        try:
            await services.start(workers=False)
            async with services.db.transaction() as session:
                if action == "retry":
                    return await services.jobs.retry(session, job_id)
                return await services.jobs.cancel(session, job_id)
        finally:
            await services.stop()

    job = _run(go())
    typer.echo(f"job {job.id} ({job.kind}) is {job.state}")


@jobs_app.command("retry")
def jobs_retry(
    # Described in the docstring: Typer lists an argument with its Python type (<integer>).
    job_id: Annotated[int, typer.Argument(metavar="ID", min=1, hidden=True)],
) -> None:
    """Run job ID again, attempts reset.

    A failed, cancelled or paused job goes back to pending now.
    """
    _job_action(job_id, "retry")


@jobs_app.command("cancel")
def jobs_cancel(
    job_id: Annotated[int, typer.Argument(metavar="ID", min=1, hidden=True)],
) -> None:
    """Cancel job ID so it does not run.

    A pending, paused or failed job; retry brings it back.
    """
    _job_action(job_id, "cancel")


def main() -> None:
    try:
        app()
    except Exception as exc:  # a command without _run (migrate, a start-up check)
        problem = _database_problem(exc)
        if problem is None:
            raise
        typer.echo(f"error: {problem}", err=True)
        raise SystemExit(1) from None
