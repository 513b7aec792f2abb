"""The object graph of amobridge, built from Settings (never at import time) and usable without a
web app: ``amobridge serve`` mounts it in FastAPI, while the worker, the CLI and ``doctor`` use it
directly.

Construction runs one way — storage, then the token store, the reauth handler, the clients, then
the features — so nothing is wired after the fact. ``start()`` migrates the database and stores
the bootstrap admin key; the app's lifespan calls it, and so do in-process tests (httpx's
``ASGITransport`` sends no lifespan events). ``start(workers=True)`` runs the background loops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import httpx
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from amobridge.amo.ratelimit import RateLimitBackend
from amobridge.auth.service import AuthService
from amobridge.connect.callback import CallbackService
from amobridge.connect.clients import ConnectionClients
from amobridge.connect.ratelimit import DatabaseRateLimiter
from amobridge.connect.reauth import ReauthService
from amobridge.connect.repository import ConnectionRepository, Tokens, decrypt_tokens
from amobridge.connect.service import ConnectService
from amobridge.connect.stores import ButtonSecretStore, StateSigner, StateStore
from amobridge.connect.tasks import ConnectTasks
from amobridge.connect.token_store import DatabaseTokenStore
from amobridge.errors import ConfigurationError
from amobridge.jobs import JobHandlers, JobQueue, JobWorker
from amobridge.notify.service import NotifyService
from amobridge.notify.tasks import NotifyTasks
from amobridge.settings import Environment, Settings
from amobridge.storage.crypto import Keyring, load_or_create_dev_key
from amobridge.storage.db import Database
from amobridge.storage.guard import StorageUnavailable
from amobridge.storage.identity import establish, preflight
from amobridge.storage.migrate import upgrade_async
from amobridge.storage.tables import Connection
from amobridge.sync.catalogue import CatalogueService
from amobridge.sync.import_tasks import ImportTasks
from amobridge.sync.imports import ImportService
from amobridge.sync.service import SyncService
from amobridge.sync.tasks import SyncTasks
from amobridge.sync.upsert import MirrorUpsert
from amobridge.webhooks.service import WebhookService
from amobridge.webhooks.tasks import WebhookTasks

log = logging.getLogger("amobridge.services")

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
    # Read (created, announced) when a secret is first encrypted or decrypted: a command that
    # only builds the services, e.g. `amobridge api-keys create`, leaves it alone.
    folder = data_dir(settings)
    return Keyring.deferred(lambda: [load_or_create_dev_key(folder)])


@dataclass
class Services:
    settings: Settings
    db: Database
    keyring: Keyring
    auth: AuthService
    store: DatabaseTokenStore
    reauth: ReauthService
    clients: ConnectionClients
    connect: ConnectService
    connect_callback: CallbackService
    connect_tasks: ConnectTasks
    # The job queue (features enqueue in their units), the handler of each job kind (features
    # register theirs when the services are built) and, while workers run, this process's worker.
    jobs: JobQueue
    job_handlers: JobHandlers
    # The lead API and its push handlers (registered in job_handlers).
    sync: SyncService
    sync_tasks: SyncTasks
    # Imports and catch-ups from amoCRM into the mirror, and their job handler.
    imports: ImportService
    import_tasks: ImportTasks
    # Events to the host app: emitted by the features in their units, delivered by jobs.
    notify: NotifyService
    notify_tasks: NotifyTasks
    job_worker: JobWorker | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    started: bool = False
    # amoCRM's webhooks into the mirror, and their jobs (built from the graph above).
    webhooks: WebhookService = field(init=False)
    webhook_tasks: WebhookTasks = field(init=False)

    def __post_init__(self) -> None:
        # The webhook inbox hears of every connection that becomes active or is disconnected
        # (inside that unit of work: its subscribe or unsubscribe job commits with it).
        self.webhooks = WebhookService(
            self.settings, self.db, keyring=self.keyring, queue=self.jobs
        )
        self.webhook_tasks = WebhookTasks(
            self.db, keyring=self.keyring, service=self.webhooks, clients=self.clients
        )
        self.webhook_tasks.register(self.job_handlers)
        self.connect.on_connected.append(self.webhooks.on_connected)
        self.connect.on_disconnecting.append(self.webhooks.on_disconnecting)
        # What amoCRM's webhooks change in the lead mirror is announced to the host app.
        self.webhooks.applier.on_lead = self.notify.amocrm_lead_change

    @classmethod
    def build(
        cls, settings: Settings, *, amo_transport: httpx.AsyncBaseTransport | None = None
    ) -> Services:
        db = Database(settings.database.url)
        keyring = build_keyring(settings)
        store = DatabaseTokenStore(db, keyring)
        jobs, handlers = JobQueue(settings.jobs), JobHandlers()
        notify = NotifyService(settings, keyring=keyring, queue=jobs)
        reauth = ReauthService(settings, db, keyring, events=notify)
        amo = settings.amo
        limiter: RateLimitBackend | None = (
            DatabaseRateLimiter(db, amo.rate_limit_rps)
            if amo.rate_limit_backend == "database"
            else None
        )
        clients = ConnectionClients(
            db,
            keyring,
            store,
            on_reauth=reauth.on_reauth_required,
            transport=amo_transport,
            base_url=amo.api_base_url,
            rate_limit_rps=amo.rate_limit_rps,
            rate_limiter=limiter,
            leeway=float(amo.refresh_leeway_seconds),
            check_interval=amo.connection_check_ms / 1000,
        )
        ttl = timedelta(seconds=settings.security.state_ttl_seconds)
        states = StateStore(StateSigner.of(lambda: keyring.derived_keys("oauth-state")), ttl)
        button_secrets = ButtonSecretStore(keyring, ttl)
        connect = ConnectService(
            settings,
            db,
            keyring=keyring,
            states=states,
            button_secrets=button_secrets,
            clients=clients,
            events=notify,
        )
        tasks = ConnectTasks(
            settings, db, keyring, clients=clients, states=states, button_secrets=button_secrets
        )
        auth = AuthService(db, settings.security)
        catalogues = CatalogueService(
            db, clients, timedelta(seconds=settings.sync.catalogue_ttl_seconds)
        )
        sync = SyncService(settings, db, keyring=keyring, catalogues=catalogues, queue=jobs)
        sync_tasks = SyncTasks(
            settings, db, keyring=keyring, catalogues=catalogues, queue=jobs, events=notify
        )
        sync_tasks.register(handlers)
        imports = ImportService(settings, db, keyring=keyring, queue=jobs)
        upsert = MirrorUpsert(phone_region=settings.sync.phone_region, queue=jobs)
        import_tasks = ImportTasks(
            db,
            catalogues=catalogues,
            upsert=upsert,
            # A slice well inside the handler's time limit: the page under way finishes too.
            slice_seconds=min(30.0, settings.jobs.handler_timeout_seconds / 4),
        )
        import_tasks.register(handlers)
        notify_tasks = NotifyTasks(settings, db, service=notify, http=clients.http)
        notify_tasks.register(handlers)
        return cls(
            settings,
            db,
            keyring,
            auth,
            store,
            reauth,
            clients,
            connect,
            CallbackService(connect),
            tasks,
            jobs=jobs,
            job_handlers=handlers,
            sync=sync,
            sync_tasks=sync_tasks,
            imports=imports,
            import_tasks=import_tasks,
            notify=notify,
            notify_tasks=notify_tasks,
        )

    def connections(self, session: AsyncSession) -> ConnectionRepository:
        """The connections repository in ``session`` (for the CLI and tests)."""
        return ConnectionRepository(session, self.keyring)

    def new_job_worker(self, *, concurrency: int | None = None) -> JobWorker:
        """A worker running this process's registered job handlers (``start(workers=True)``
        starts one; tests drive one step by step)."""
        return JobWorker(
            self.db,
            self.jobs,
            self.job_handlers,
            self.settings.jobs,
            clients=self.clients,
            services=self,
            concurrency=concurrency,
        )

    def tokens_of(self, row: Connection) -> Tokens | None:
        """A connection row's tokens in plaintext (diagnostics and tests; never log them)."""
        return decrypt_tokens(self.keyring, row)

    async def start(self, *, migrate: bool = True, workers: bool | None = None) -> None:
        if self.started:
            return
        preflight(self.db)  # before migrations, which would create a missing database
        if migrate:
            await upgrade_async(self.settings.database.url)
        await establish(self.db)
        admin = self.settings.security.admin_api_key
        if admin is not None:
            async with self.db.transaction() as session:
                await self.auth.ensure_api_key(
                    session, key=admin.get_secret_value(), name="bootstrap-admin", role="admin"
                )
        run = self.settings.server.run_workers if workers is None else workers
        if run:
            self._tasks.append(asyncio.create_task(self._housekeeping(), name="housekeeping"))
            self.job_worker = self.new_job_worker()
            self.job_worker.start()
        self.started = True

    async def _housekeeping(self) -> None:
        keepalive = timedelta(days=self.settings.amo.keepalive_refresh_days)
        while True:
            try:
                await self.connect_tasks.purge_expired()
                await self.connect_tasks.keepalive(older_than=keepalive)
                await self.webhook_tasks.housekeeping()
                await self.sync.purge_idempotency_keys()
                await self.imports.schedule_catchups()
                await self.imports.purge()
                await self.notify_tasks.purge()
            except StorageUnavailable as exc:  # one line, not a traceback a minute
                log.warning("housekeeping paused: %s", exc.detail)
            except Exception:  # a bad round must not end housekeeping; it is logged
                log.exception("housekeeping round failed")
            await asyncio.sleep(HOUSEKEEPING_INTERVAL)

    async def stop(self) -> None:
        if self.job_worker is not None:  # first: running handlers finish or hand their jobs back
            await self.job_worker.stop()
            self.job_worker = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.webhooks.batcher.aclose()  # deliveries not yet written get 503
        await self.sync.intake.aclose()  # so do leads
        await self.auth.aclose()
        await self.clients.aclose()
        await self.db.dispose()
        self.started = False
