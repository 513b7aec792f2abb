"""Import and catch-up: pulling a connection's amoCRM account into the mirror.

- **An import** (``POST /imports``, ``amobridge import``) reads the account's pipelines and custom
  fields (into the catalogue), then every contact and every lead, 250 a page, and writes them
  into the mirror (``upsert.py``). It is a job (``sync.import``, one per connection at a time:
  asking again while one waits or runs answers with that one) and an ``imports`` row that keeps
  its cursor and its counts.
- **A catch-up** runs for every active connection every ``AMOBRIDGE_SYNC__CATCHUP_MINUTES``: the
  contacts and leads amoCRM changed since the connection's mark (the start of its last
  succeeded import or catch-up; the connection's creation before any) minus
  ``AMOBRIDGE_SYNC__CATCHUP_OVERLAP_SECONDS``. It repairs what webhooks missed. The housekeeping
  loop queues them (``sync.catchup``, one per connection at a time).

The pages are read and applied by ``import_tasks.py``. An import that failed is resumed from its
cursor by the next ``POST /imports``; one that succeeded is done, and the next request starts a
new one.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from amobridge.audit import AuditRepository
from amobridge.connect.repository import ConnectionRepository
from amobridge.errors import Conflict, NotFound
from amobridge.jobs import JobQueue
from amobridge.jobs.repository import JobRepository
from amobridge.settings import Settings
from amobridge.storage.crypto import Keyring
from amobridge.storage.db import Database
from amobridge.storage.tables import Connection, Import, new_id
from amobridge.sync import kinds
from amobridge.sync.repository import IMPORT_UNFINISHED, ImportRepository
from amobridge.sync.views import iso

log = logging.getLogger("amobridge.sync")

FULL = "import"
CATCHUP = "catchup"
# What a full import reads, in this order: contacts before leads, so each lead's contacts
# (``with=contacts``, the only side that says which one is main) are in the mirror already.
FULL_STEPS = ("catalogue", "contacts", "leads")
CATCHUP_STEPS = ("contacts", "leads")
# Attempts of one import job: each failed page costs one, the pages before it stay applied.
ATTEMPTS = 20
CATCHUPS_PER_ROUND = 500
CATCHUP_RETENTION = timedelta(days=7)


def steps(kind: str) -> tuple[str, ...]:
    return FULL_STEPS if kind == FULL else CATCHUP_STEPS


def import_out(run: Import, *, job: Any = None) -> dict[str, Any]:
    counts = dict(run.counts or {})
    changes = counts.pop("changes", None) or {}
    return {
        "id": run.id,
        "owner": run.owner,
        "kind": run.kind,
        "state": run.state,
        "entity": run.entity,
        "page": run.page if run.entity is not None else None,
        "counts": {k: int(v) for k, v in counts.items()},
        "changes": {k: int(v) for k, v in changes.items()},
        "pages": {k: int(v) for k, v in (run.pages or {}).items()},
        "total": run.total,
        "since": iso(run.since),
        "last_error": run.last_error,
        "job": None
        if job is None
        else {"id": job.id, "state": job.state, "paused_reason": job.paused_reason},
        "created_at": iso(run.created_at),
        "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at),
    }


class ImportService:
    def __init__(self, settings: Settings, db: Database, *, keyring: Keyring, queue: JobQueue):
        self.settings = settings
        self.db = db
        self.keyring = keyring
        self.queue = queue

    async def _connection(self, owner: str) -> Connection:
        async with self.db.read() as session:
            row = await ConnectionRepository(session, self.keyring).for_owner(owner)
        if row is None:
            raise NotFound(
                "no amoCRM connection for this owner: connect it first (GET /amocrm/auth)",
                code="connection_not_found",
            )
        return row

    async def _enqueue(self, session: AsyncSession, run: Import) -> Any:
        kind = kinds.IMPORT if run.kind == FULL else kinds.CATCHUP
        return await self.queue.enqueue(
            session,
            kind=kind,
            payload={"import_id": run.id},
            owner=run.owner,
            connection_id=run.connection_id,
            dedup_key=kinds.pull_dedup_key(kind, run.connection_id),
            max_attempts=ATTEMPTS,
        )

    async def start(self, owner: str, *, actor: str) -> tuple[dict[str, Any], bool]:
        """Queue an import of the owner's account (or resume its unfinished one); the import,
        and whether this request queued it (False: one was waiting or running already)."""
        connection = await self._connection(owner)
        if connection.status == "disconnected":
            raise Conflict(
                f"the owner's amoCRM connection was disconnected: connect the account again: "
                f"GET /amocrm/auth?owner={owner}",
                code="connection_disconnected",
            )
        async with self.db.transaction() as session:
            repo = ImportRepository(session)
            run = await repo.latest(connection.id, FULL)
            if run is not None and run.state != "succeeded":
                job = await self._enqueue(session, run)
                if job.payload.get("import_id") != run.id:
                    # The connection's import job works for another row: answer with that one.
                    other = await repo.get(str(job.payload.get("import_id")))
                    return import_out(other or run, job=job), False
                resumed = job.id != run.job_id
                if resumed:  # its job had ended (failed for good, cancelled): from its cursor
                    run.job_id, run.state, run.finished_at = job.id, "queued", None
                    self._audit(session, run, actor, f"import {run.id} resumed")
                return import_out(run, job=job), resumed
            run = Import(
                id=new_id(),
                kind=FULL,
                connection_id=connection.id,
                owner=owner,
                state="queued",
                entity=FULL_STEPS[0],
                page=1,
                seen=[],
                counts={},
                pages={},
            )
            job = await self._enqueue(session, run)
            run.job_id = job.id
            repo.add(run)
            await repo.flush()
            self._audit(session, run, actor, f"import {run.id} queued")
            return import_out(run, job=job), True

    def _audit(self, session: AsyncSession, run: Import, actor: str, message: str) -> None:
        AuditRepository(session).record(
            actor=actor,
            action="import.start",
            success=True,
            owner=run.owner,
            connection_id=run.connection_id,
            message=message,
            details={"import": run.id},
        )

    async def get(self, owner: str, import_id: str) -> dict[str, Any]:
        async with self.db.read() as session:
            run = await ImportRepository(session).for_owner(owner, import_id)
            if run is None:
                raise NotFound("no import with this id for this owner", code="import_not_found")
            job = await JobRepository(session).find(run.job_id) if run.job_id else None
            return import_out(run, job=job)

    async def latest(self, owner: str, kind: str = FULL) -> dict[str, Any] | None:
        connection = await self._connection(owner)
        async with self.db.read() as session:
            run = await ImportRepository(session).latest(connection.id, kind)
            if run is None:
                return None
            job = await JobRepository(session).find(run.job_id) if run.job_id else None
            return import_out(run, job=job)

    # --- catch-ups -------------------------------------------------------------------------
    async def schedule_catchups(self, *, now: datetime | None = None) -> int:
        """Queue a catch-up for each active connection whose last one finished at least
        ``catchup_minutes`` ago (and that has no import under way); how many were queued."""
        minutes = self.settings.sync.catchup_minutes
        if minutes <= 0:
            return 0
        now = now or datetime.now(UTC)
        overlap = timedelta(seconds=self.settings.sync.catchup_overlap_seconds)
        queued = 0
        async with self.db.transaction() as session:
            repo = ImportRepository(session)
            due = await repo.catchup_due(
                finished_before=now - timedelta(minutes=minutes), limit=CATCHUPS_PER_ROUND
            )
            for connection_id, owner, connected_at in due:
                mark = await repo.mark(connection_id) or connected_at
                since = mark - overlap
                run = Import(
                    id=new_id(),
                    kind=CATCHUP,
                    connection_id=connection_id,
                    owner=owner,
                    state="queued",
                    entity=CATCHUP_STEPS[0],
                    page=1,
                    bound=int(since.timestamp()),
                    since=since,
                    seen=[],
                    counts={},
                    pages={},
                )
                job = await self._enqueue(session, run)
                if job.payload.get("import_id") != run.id:
                    continue  # one is queued already (its row is on its way)
                run.job_id = job.id
                repo.add(run)
                queued += 1
        if queued:
            log.info("catch-ups queued for %d connections", queued)
        return queued

    async def purge(self, *, now: datetime | None = None) -> int:
        """Finished catch-ups older than a week (each connection's last succeeded run kept)."""
        now = now or datetime.now(UTC)
        async with self.db.transaction() as session:
            return await ImportRepository(session).purge_catchups(
                finished_before=now - CATCHUP_RETENTION
            )


__all__ = ["CATCHUP", "FULL", "IMPORT_UNFINISHED", "ImportService", "import_out", "steps"]
