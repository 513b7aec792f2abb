"""The handler of ``sync.import`` and ``sync.catchup`` jobs: page through amoCRM, write each page
into the mirror and commit the cursor with it.

**Pages.** Contacts and leads are read 250 a page (amoCRM's maximum), in the order of a time that
does not move under the reader — ``created_at`` for an import, ``updated_at`` for a catch-up —
filtered from a *bound*: ``filter[created_at][from]`` (or ``updated_at``) and
``order[…]=asc``. After each page the bound moves to the last entity's time and the page number
goes back to 1, remembering the ids at that time already applied (``seen``); only when a whole
page shares one time does the page number grow instead. So an entity changed (or, for an
import, created) while the import runs never shifts the pages still to come, as numbered pages
of a plain listing would, and a page is never read twice. An empty page (204) or one without
``_links.next`` ends an entity.

**Resumable.** The page and its cursor commit in one unit of work: a run stopped anywhere — a
crash, a kill, a failed request, a deploy — goes on from the page after the last committed one,
and a page applied twice changes nothing the second time (rows are found by amoCRM id). While a
page is written the next one is already being read, so the database's time hides behind the
pace of 7 requests per second. A run works for at most ``SLICE_SECONDS`` at a time, then gives
its place back to the queue (the connection's pushes go between slices) and goes on.

Every request goes through the connection's client: the shared pace, the refresh, the ban
breaker. What a failure means is the queue's rule (``jobs.outcome_for``); the import row shows
it (``waiting`` with the error while it will be retried, ``failed`` once it will not).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy.exc import IntegrityError

from amobridge.amo.client import AmoClient
from amobridge.amo.models.base import Page
from amobridge.amo.models.contacts import Contact as AmoContact
from amobridge.amo.models.leads import Lead as AmoLead
from amobridge.amo.resources.base import EntityFilters
from amobridge.jobs import Job, JobContext, JobHandlers, outcome_for
from amobridge.jobs.handlers import describe_error
from amobridge.storage.db import Database
from amobridge.storage.tables import Import
from amobridge.sync import kinds
from amobridge.sync.catalogue import CatalogueService
from amobridge.sync.imports import FULL, steps
from amobridge.sync.repository import ImportRepository
from amobridge.sync.upsert import MirrorUpsert, PageCounts

log = logging.getLogger("amobridge.sync")

PAGE_LIMIT = 250  # amoCRM's largest page
SLICE_SECONDS = 30.0
YIELD_SECONDS = 1.0  # between slices: the connection's other jobs are due first
Entity = Literal["contacts", "leads"]
TimeKey = Literal["created_at", "updated_at"]


@dataclass(frozen=True)
class Cursor:
    """Where the next page starts: the time ``bound`` (None: from the start), the page at that
    bound, and the ids at ``bound`` already applied."""

    bound: int | None
    page: int
    seen: frozenset[int]


def advance(
    cursor: Cursor, items: Sequence[tuple[int, int | None]], *, has_next: bool
) -> Cursor | None:
    """The cursor after a page of ``(id, time)`` items in time order; None: the entity is done."""
    if not has_next or not items:
        return None
    last = items[-1][1]
    if last is None or (cursor.bound is not None and last <= cursor.bound):
        return Cursor(cursor.bound, cursor.page + 1, cursor.seen)  # the whole page at the bound
    at_last = frozenset(item_id for item_id, at in items if at == last)
    # Entities at ``last`` begin on this page: a whole page of them means page 2 is next.
    return Cursor(last, 1 if len(at_last) < PAGE_LIMIT else 2, at_last)


class _TakenOver(Exception):
    """The import's cursor moved under this run: another worker has it now."""


class ImportTasks:
    def __init__(
        self,
        db: Database,
        *,
        catalogues: CatalogueService,
        upsert: MirrorUpsert,
        slice_seconds: float = SLICE_SECONDS,
    ) -> None:
        self.db = db
        self.catalogues = catalogues
        self.upsert = upsert
        self.slice_seconds = slice_seconds

    def register(self, handlers: JobHandlers) -> None:
        handlers.register(kinds.IMPORT, self.run)
        handlers.register(kinds.CATCHUP, self.run)

    async def run(self, context: JobContext, jobs: Sequence[Job]) -> None:
        for job in jobs:
            await self._run_one(context, job)

    async def _run_one(self, context: JobContext, job: Job) -> None:
        import_id = str(job.payload.get("import_id") or "")
        async with self.db.transaction() as session:
            run = await ImportRepository(session).get(import_id, for_update=True)
            if run is None or run.state in ("succeeded", "failed"):
                context.succeed(job, {"skipped": "the import is over or gone"})
                return
            run.state, run.last_error, run.job_id = "running", None, job.id
            run.started_at = run.started_at or datetime.now(UTC)
        try:
            done = await self._work(context, job, import_id)
        except _TakenOver:
            context.defer(job, YIELD_SECONDS, "the import's cursor moved under this run")
            return
        except Exception as exc:  # what it means for the job is the queue's rule; shown here
            await self._failed(job, import_id, exc)
            context.report_error(exc, [job])
            return
        if done is None:
            context.defer(job, YIELD_SECONDS)
        else:
            context.succeed(job, done)

    async def _failed(self, job: Job, import_id: str, exc: Exception) -> None:
        outcome = outcome_for(exc)
        final = outcome.kind == "failed" or (
            outcome.kind == "retry" and job.attempts >= job.max_attempts
        )
        text = describe_error(exc)
        log.warning("import %s: %s (%s)", import_id, text, "failed" if final else outcome.kind)
        async with self.db.transaction() as session:
            run = await ImportRepository(session).get(import_id, for_update=True)
            if run is None:
                return
            if final:
                run.state, run.finished_at = "failed", datetime.now(UTC)
                run.last_error = text
            else:
                run.state = "waiting"
                run.last_error = (
                    f"paused ({outcome.reason}): {text}"
                    if outcome.kind == "paused"
                    else f"will try again: {text}"
                )

    # --- one slice ---------------------------------------------------------------------------
    async def _work(self, context: JobContext, job: Job, import_id: str) -> dict[str, Any] | None:
        """Read pages until the run is done (its result) or the slice is over (None)."""
        deadline = time.monotonic() + self.slice_seconds
        async with self.db.read() as session:
            run = await ImportRepository(session).get(import_id)
        assert run is not None
        client = await context.client(job)
        order = steps(run.kind)
        while run.entity is not None:
            if run.entity == "catalogue":
                run = await self._catalogue(run, client)
            else:
                entity: Entity = "leads" if run.entity == "leads" else "contacts"
                run = await self._entity(run, entity, client, deadline)
                if run.entity == entity:
                    return None  # out of time: the next slice goes on from here
            if run.entity is not None and run.entity not in order:
                raise ValueError(f"import {run.id}: unknown step {run.entity!r}")
        return {"import_id": run.id, "counts": dict(run.counts or {}), "pages": run.pages}

    def _next_step(self, run: Import, step: str) -> tuple[str | None, int | None]:
        order = steps(run.kind)
        index = order.index(step) + 1
        following = order[index] if index < len(order) else None
        start = int(run.since.timestamp()) if run.since is not None else None
        return following, (start if run.kind != FULL else None)

    async def _catalogue(self, run: Import, client: AmoClient) -> Import:
        """Pipelines (with their stages) and the custom fields of leads and contacts."""
        catalogue = await self.catalogues.fetch(run.connection_id, client)
        found = {
            "pipelines": len(catalogue.pipelines),
            "lead_fields": len(catalogue.lead_fields),
            "contact_fields": len(catalogue.contact_fields),
        }
        following, bound = self._next_step(run, "catalogue")
        async with self.db.transaction() as session:
            row = await self._locked(session, run, "catalogue")
            row.counts = {**(row.counts or {}), **found}
            row.pages = {**(row.pages or {}), **dict.fromkeys(found, 1)}
            self._move(row, following, bound)
            return row

    async def _entity(
        self, run: Import, entity: Entity, client: AmoClient, deadline: float
    ) -> Import:
        """Pages of ``entity`` until it is done or ``deadline`` passed; the run as committed."""
        key: TimeKey = "created_at" if run.kind == FULL else "updated_at"
        cached = await self.catalogues.cached(run.connection_id)
        marker = cached.marker_field(entity) if cached is not None else None
        marker_id = marker.id if marker is not None else None
        cursor = Cursor(run.bound, run.page, frozenset(int(i) for i in run.seen or []))
        fetch: asyncio.Task[Any] | None = asyncio.create_task(
            self._fetch(client, entity, key, cursor)
        )
        try:
            while fetch is not None:
                page = await fetch
                fetch = None
                times = [(item.id, getattr(item, key)) for item in page.items]
                following = advance(cursor, times, has_next=page.has_next)
                if following is not None and time.monotonic() < deadline:
                    # Read ahead while this page is written: the pace, not the database, sets
                    # the speed.
                    fetch = asyncio.create_task(self._fetch(client, entity, key, following))
                fresh = [item for item in page.items if item.id not in cursor.seen]
                try:
                    run = await self._apply(run, entity, cursor, fresh, following, marker_id)
                except IntegrityError:
                    # A webhook or a push stored one of these entities meanwhile: the page
                    # again finds it by its amoCRM id and updates it instead.
                    run = await self._apply(run, entity, cursor, fresh, following, marker_id)
                if following is None:
                    return run
                cursor = following
            return run
        finally:
            if fetch is not None:
                fetch.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await fetch

    async def _fetch(
        self, client: AmoClient, entity: Entity, key: TimeKey, cursor: Cursor
    ) -> Page[AmoLead] | Page[AmoContact]:
        filters: EntityFilters = {"order": (key, "asc")}
        if cursor.bound is not None:
            if key == "created_at":
                filters["created_from"] = cursor.bound
            else:
                filters["updated_from"] = cursor.bound
        if entity == "leads":
            return await client.leads.list(
                page=cursor.page, limit=PAGE_LIMIT, with_contacts=True, **filters
            )
        return await client.contacts.list(page=cursor.page, limit=PAGE_LIMIT, **filters)

    async def _apply(
        self,
        run: Import,
        entity: Entity,
        cursor: Cursor,
        items: Sequence[Any],
        following: Cursor | None,
        marker_id: int | None,
    ) -> Import:
        """One page into the mirror and the cursor after it, in one unit of work."""
        async with self.db.transaction() as session:
            row = await self._locked(session, run, entity, cursor)
            if entity == "leads":
                counts = await self.upsert.leads(
                    session,
                    connection_id=row.connection_id,
                    owner=row.owner,
                    items=items,
                    marker_id=marker_id,
                )
            else:
                counts = await self.upsert.contacts(
                    session,
                    connection_id=row.connection_id,
                    owner=row.owner,
                    items=items,
                    marker_id=marker_id,
                )
            totals = dict(row.counts or {})
            totals[entity] = int(totals.get(entity, 0)) + len(items)
            changes = PageCounts(**(totals.get("changes") or {}))
            changes.add(counts)
            totals["changes"] = changes.public()
            row.counts = totals
            pages = dict(row.pages or {})
            pages[entity] = int(pages.get(entity, 0)) + 1
            row.pages = pages
            if following is None:
                step, bound = self._next_step(row, entity)
                self._move(row, step, bound)
            else:
                row.page, row.bound = following.page, following.bound
                row.seen = sorted(following.seen)
            return row

    async def _locked(
        self, session: Any, run: Import, step: str, cursor: Cursor | None = None
    ) -> Import:
        row = await ImportRepository(session).get(run.id, for_update=True)
        if row is None or row.state != "running" or row.entity != step:
            raise _TakenOver
        if cursor is not None and (row.page, row.bound) != (cursor.page, cursor.bound):
            raise _TakenOver
        return row

    @staticmethod
    def _move(row: Import, step: str | None, bound: int | None) -> None:
        row.entity, row.page, row.bound, row.seen = step, 1, bound, []
        if step is None:
            row.state, row.finished_at, row.last_error = "succeeded", datetime.now(UTC), None
            row.total = sum(int(row.counts.get(name, 0)) for name in ("contacts", "leads"))
