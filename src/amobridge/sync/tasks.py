"""The push: job handlers that send the mirror's leads and contacts to amoCRM.

**Creates of one connection go in batches.** ``sync.lead.create`` is registered with a batch of
50, amoCRM's maximum for ``POST /api/v4/leads/complex``: up to 50 leads, each with its contact
(created with it, or an existing one linked by id), in one request.

**No duplicates (invariant 2).** Each lead carries its create job's idempotency key twice: as
the item's ``request_id`` (amoCRM echoes it in the reply, so results are matched by it) and as
the value of the lead's text custom field ``AMOBRIDGE_REF`` ("amobridge ref", created in the
account on the first push). amoCRM keeps no ``request_id``, and its ``query`` search reads custom
field values (the sandbox matches them as substrings too; tags are not searched), so the marker
is what finds the lead again. ``pushed_at`` is committed **before** a request leaves; a job that
finds it set (a timeout, a 5xx after the body left, a crash between sending and committing)
first searches amoCRM by the marker, adopts the lead it finds and sends only the ones not found.
A 4xx means nothing was created: ``pushed_at`` is cleared again.

**Contacts are deduplicated** by e-mail (lower-cased) and phone (E.164): against the mirror when a
lead is accepted (``service.py``), and here against amoCRM (a contacts search, compared exactly;
``AMOBRIDGE_SYNC__MIRROR_AUTHORITATIVE=true`` skips it) before a new contact is created. A contact
found is linked by id instead; two leads of one batch with the same new contact create it once.

**Updates** (``sync.lead.update``, ``sync.contact.update``) send only the fields changed locally
(``dirty``: field → the row version it changed at), batched into one ``PATCH /api/v4/leads``.

**Outcomes.** A job the handler finishes is reported through the job context; an error it does
not handle is mapped by the queue (dead grant or disconnect: paused until the owner connects
again; ban: paused until it ends; 429: deferred; 5xx or network: retried with backoff). When the
queue will not try again (a permanent error, or the last attempt), the row turns ``failed`` with
the error in ``last_error``; while it waits, the row stays ``pending`` with the reason there.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy.ext.asyncio import AsyncSession

from amobridge.amo.client import AmoClient
from amobridge.amo.errors import (
    AmoAmbiguousWrite,
    AmoHTTPError,
    AmoServerError,
    AmoValidationError,
)
from amobridge.amo.finders import find_contacts_by_email, find_contacts_by_phone
from amobridge.amo.models.contacts import Contact as AmoContact
from amobridge.amo.models.custom_fields import CustomField
from amobridge.amo.models.leads import Lead as AmoLead
from amobridge.amo.phones import normalize_email, normalize_phone, phone_search_terms
from amobridge.connect.clients import ConnectionDisconnected
from amobridge.connect.repository import ConnectionRepository
from amobridge.jobs import Job, JobContext, JobHandlers, outcome_for
from amobridge.settings import Settings
from amobridge.storage.crypto import Keyring
from amobridge.storage.db import Database
from amobridge.storage.tables import Connection, Contact, Lead
from amobridge.sync import amo_bodies, kinds
from amobridge.sync.catalogue import Catalogue, CatalogueService, UnknownReference
from amobridge.sync.readback import LeadReadback
from amobridge.sync.repository import ContactRepository, ImportRepository, LeadRepository
from amobridge.sync.service import Queue, merge_custom_fields
from amobridge.sync.views import mark_dirty

if TYPE_CHECKING:
    from amobridge.notify import NotifyService

log = logging.getLogger("amobridge.sync")

Entity = Literal["leads", "contacts"]
# A job whose row waits for another push (a lead for its contact's own create; an update for the
# create) looks again after this long, without using an attempt.
WAIT_FOR_CREATE = timedelta(seconds=5)
IN_FLIGHT = "its last create may still be on its way to amoCRM: looked for once it cannot be"
# Contact searches per phone, of the forms a stored phone most likely contains: its digits
# (89001234567, +79001234567), "(900) 123-45-67" and "900 123-45-67" (+7 (900) 123-45-67,
# 8 900 123-45-67). Each search is a request within amoCRM's 7 per second; the hits are compared
# in E.164 either way.
PHONE_SEARCHES = 3


@dataclass
class _Item:
    """One create job and what it pushes."""

    job: Job
    lead: Lead
    contact: Contact | None
    key: str  # the marker and request_id
    version: int
    contact_version: int = 0
    link_contact: int | None = None  # an existing amoCRM contact to link
    creates_contact: bool = False


@dataclass
class _Outcome:
    job: Job
    row_id: str
    kind: Literal["retry", "fail", "defer", "error"]
    error: BaseException | str
    delay: timedelta | None = None


def _row_id(job: Job, entity: Entity) -> str:
    value = job.payload.get("lead_id" if entity == "leads" else "contact_id")
    return str(value) if value is not None else ""


def _amo_time(value: int | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value else None


def _pushed(row: Lead | Contact, version: int, *, amo_updated_at: datetime | None) -> None:
    """``row`` as it was at ``version`` is in amoCRM: what changed later stays dirty."""
    row.dirty = {name: at for name, at in (row.dirty or {}).items() if int(at) > version}
    row.sync_state = "synced" if not row.dirty else "pending"
    row.last_error = None
    row.synced_at = datetime.now(UTC)
    if amo_updated_at is not None:
        row.amo_updated_at = amo_updated_at


def _field_errors(error: AmoValidationError) -> dict[str, str]:
    """amoCRM's field errors by the item they name (its request_id, or its index)."""
    found: dict[str, list[str]] = {}
    for item in error.errors:
        if item.request_id is not None:
            found.setdefault(item.request_id, []).append(str(item))
    return {key: "amoCRM refused the item: " + "; ".join(texts) for key, texts in found.items()}


class SyncTasks:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        *,
        keyring: Keyring,
        catalogues: CatalogueService,
        queue: Queue,
        events: NotifyService,
    ) -> None:
        self.settings = settings
        self.db = db
        self.keyring = keyring
        self.catalogues = catalogues
        self.queue = queue
        # lead.created and lead.sync_failed for the host app, in the units that decide them.
        self.events = events
        self.readback = LeadReadback(db)

    def register(self, handlers: JobHandlers) -> None:
        for kind, handler in (
            (kinds.LEAD_CREATE, self.create_leads),
            (kinds.LEAD_UPDATE, self.update_leads),
            (kinds.CONTACT_CREATE, self.create_contacts),
            (kinds.CONTACT_UPDATE, self.update_contacts),
        ):
            handlers.register(
                kind, handler, batch_size=kinds.BATCH_SIZE, on_abandoned=self.abandoned
            )
        handlers.register(kinds.LEAD_READBACK, self.readback.run, batch_size=kinds.READBACK_BATCH)

    # --- handlers ------------------------------------------------------------------------------
    async def create_leads(self, context: JobContext, jobs: Sequence[Job]) -> None:
        await self._guarded(context, jobs, "leads", self._create_leads)

    async def update_leads(self, context: JobContext, jobs: Sequence[Job]) -> None:
        await self._guarded(context, jobs, "leads", self._update_leads)

    async def create_contacts(self, context: JobContext, jobs: Sequence[Job]) -> None:
        await self._guarded(context, jobs, "contacts", self._create_contacts)

    async def update_contacts(self, context: JobContext, jobs: Sequence[Job]) -> None:
        await self._guarded(context, jobs, "contacts", self._update_contacts)

    async def _guarded(
        self,
        context: JobContext,
        jobs: Sequence[Job],
        entity: Entity,
        run: Callable[[JobContext, Sequence[Job]], Awaitable[None]],
    ) -> None:
        try:
            await run(context, jobs)
        except Exception as exc:  # every job not reported yet gets what the error means
            left = [job for job in jobs if job.id not in context.outcomes]
            if not left:
                raise
            await self._settle(
                context, entity, [_Outcome(job, _row_id(job, entity), "error", exc) for job in left]
            )

    async def abandoned(self, session: AsyncSession, jobs: Sequence[Job]) -> None:
        """Jobs the queue failed because their worker stopped on every attempt: their rows are
        ``failed`` with the reason (``lead.sync_failed`` for a lead), visible and retryable,
        never left ``pending`` with no job to push them."""
        for entity in ("leads", "contacts"):
            mine = [job for job in jobs if kinds.entity_of(job.kind) == entity]
            if not mine:
                continue
            repo = LeadRepository(session) if entity == "leads" else ContactRepository(session)
            rows = await repo.by_ids([_row_id(job, entity) for job in mine], for_update=True)
            for job in mine:
                row = rows.get(_row_id(job, entity))
                if row is not None:
                    await self._mark_failed(session, row, job, job.last_error or "failed")

    async def _mark_failed(
        self, session: AsyncSession, row: Lead | Contact, job: Job, text: str
    ) -> None:
        was_failed = row.sync_state == "failed"
        row.sync_state = "failed"
        row.last_error = text
        if isinstance(row, Lead) and not was_failed:
            operation = "create" if job.kind == kinds.LEAD_CREATE else "update"
            await self.events.emit_lead(
                session, "lead.sync_failed", row, operation=operation, error=text
            )

    # --- outcomes ------------------------------------------------------------------------------
    async def _settle(self, context: JobContext, entity: Entity, outcomes: list[_Outcome]) -> None:
        """Report ``outcomes`` to the queue, and the rows' side of them: ``failed`` when the
        queue will not try again, else ``pending`` with why it waits."""
        if not outcomes:
            return
        final: dict[int, bool] = {}
        for item in outcomes:
            mapped: str
            if item.kind == "error" and isinstance(item.error, BaseException):
                mapped = outcome_for(item.error).kind
            else:
                mapped = {"retry": "retry", "fail": "failed", "defer": "defer"}.get(
                    item.kind, "retry"
                )
            exhausted = mapped == "retry" and item.job.attempts >= item.job.max_attempts
            final[item.job.id] = mapped == "failed" or exhausted
        async with self.db.transaction() as session:
            repo = LeadRepository(session) if entity == "leads" else ContactRepository(session)
            rows = await repo.by_ids([item.row_id for item in outcomes], for_update=True)
            for item in outcomes:
                row = rows.get(item.row_id)
                if row is None or item.kind == "defer":
                    continue
                text = str(item.error) if isinstance(item.error, str) else _describe(item.error)
                if final[item.job.id]:
                    await self._mark_failed(session, row, item.job, text)
                else:
                    row.last_error = f"will try again: {text}"
        for item in outcomes:
            if final[item.job.id]:
                context.fail(item.job, item.error)
            elif item.kind == "defer":
                context.defer(item.job, item.delay or WAIT_FOR_CREATE, item.error)
            elif item.kind == "retry":
                context.retry(item.job, item.error, item.delay)
            else:
                assert isinstance(item.error, BaseException)
                context.report_error(item.error, [item.job])

    async def _connection(self, connection_id: str | None) -> Connection:
        if connection_id is None:
            raise ConnectionDisconnected("?")
        async with self.db.read() as session:
            row = await ConnectionRepository(session, self.keyring).get(connection_id)
        if row is None:
            raise ConnectionDisconnected(connection_id)
        return row

    async def _searches_amo(self, connection_id: str) -> bool:
        """Whether a new contact is looked for in amoCRM before it is created: not when the
        setting says every contact comes through amobridge, nor once an import has put the
        account's contacts into the mirror (the contact was looked for there when its lead was
        accepted; webhooks and catch-ups bring the ones added in amoCRM since)."""
        if self.settings.sync.mirror_authoritative:
            return False
        async with self.db.read() as session:
            return not await ImportRepository(session).imported(connection_id)

    # --- lead creates --------------------------------------------------------------------------
    async def _create_leads(self, context: JobContext, jobs: Sequence[Job]) -> None:
        wanted = {job.id: _row_id(job, "leads") for job in jobs}
        async with self.db.read() as session:
            repo = LeadRepository(session)
            leads = await repo.by_ids(wanted.values())
            contacts = await repo.main_contacts(leads)
        items: list[_Item] = []
        for job in jobs:
            lead = leads.get(wanted[job.id])
            if lead is None or lead.deleted:
                context.succeed(job, {"skipped": "the lead is gone"})
            elif lead.amo_id is not None:
                context.succeed(job, {"amo_id": lead.amo_id})
            else:
                contact = contacts.get(lead.id)
                items.append(
                    _Item(
                        job,
                        lead,
                        contact,
                        lead.create_key or job.idempotency_key,
                        lead.version,
                        contact.version if contact is not None else 0,
                    )
                )
        if not items:
            return
        connection = await self._connection(jobs[0].connection_id)
        client = await context.client(connection.id)
        marker = await self.catalogues.ensure_marker(connection.id, client, "leads")
        items = await self._resolve_names(context, connection, items)
        items = await self._reconcile_leads(context, connection, client, marker, items)
        searching = await self._searches_amo(connection.id)
        items = await self._find_contacts(context, connection, client, items, searching)
        await self._send_creates(context, client, marker, items)

    async def _resolve_names(
        self, context: JobContext, connection: Connection, items: list[_Item]
    ) -> list[_Item]:
        """Names accepted without a catalogue, resolved now (a wrong one fails its job)."""
        waiting = [item for item in items if item.lead.unresolved]
        if not waiting:
            return items
        catalogue = await self.catalogues.get(connection)
        failed: list[_Outcome] = []
        resolved: dict[str, tuple[Any, ...]] = {}
        for item in waiting:
            given = dict(item.lead.unresolved or {})
            try:
                _, found = await self.catalogues.resolve(
                    connection,
                    catalogue,
                    lambda cat, given=given, lead=item.lead: _resolve_refs(cat, given, lead),
                )
            except UnknownReference as exc:
                failed.append(_Outcome(item.job, item.lead.id, "fail", exc.detail))
                continue
            resolved[item.lead.id] = found
        async with self.db.transaction() as session:
            rows = await LeadRepository(session).by_ids(resolved, for_update=True)
            for lead_id, (pipeline_id, status_id, fields) in resolved.items():
                row = rows.get(lead_id)
                if row is None:
                    continue
                if pipeline_id is not None:
                    row.pipeline_id = pipeline_id
                if status_id is not None:
                    row.status_id = status_id
                if fields:
                    merge_custom_fields(row, fields)
                row.unresolved = None
        for item in items:
            if item.lead.id in resolved:
                pipeline_id, status_id, fields = resolved[item.lead.id]
                item.lead.pipeline_id = pipeline_id or item.lead.pipeline_id
                item.lead.status_id = status_id or item.lead.status_id
                if fields:
                    merge_custom_fields(item.lead, fields)
                item.lead.unresolved = None
        await self._settle(context, "leads", failed)
        refused = {outcome.job.id for outcome in failed}
        return [item for item in items if item.job.id not in refused]

    async def _reconcile_leads(
        self,
        context: JobContext,
        connection: Connection,
        client: AmoClient,
        marker: CustomField,
        items: list[_Item],
    ) -> list[_Item]:
        """Leads whose create may have reached amoCRM before: found by their marker, adopted.
        One whose create may still be on its way (sent moments ago by a worker that lost its
        lease) waits until it cannot be: a search before it lands finds nothing, and a second
        create would double it."""
        left: list[_Item] = []
        adopted: list[tuple[_Item, AmoLead]] = []
        waiting: list[_Outcome] = []
        for item in items:
            if item.lead.pushed_at is None:
                left.append(item)
                continue
            wait = (
                self._in_flight(context, item.lead.pushed_at)
                if item.job.id in context.taken_over
                else None
            )
            if wait is not None:
                waiting.append(_Outcome(item.job, item.lead.id, "defer", IN_FLIGHT, wait))
                continue
            found = await _find_by_marker(client, "leads", marker.id, item.key)
            if found is None:
                left.append(item)
            else:
                assert isinstance(found, AmoLead)
                adopted.append((item, found))
        if adopted:
            log.info(
                "connection %s: %d lead(s) were already in amoCRM (found by marker): adopted",
                connection.id,
                len(adopted),
            )
            await self._adopt_leads(context, connection, adopted)
        await self._settle(context, "leads", waiting)
        return left

    def _in_flight(self, context: JobContext, pushed_at: datetime) -> timedelta | None:
        """How much longer a create sent at ``pushed_at`` may still be on its way (None: it
        cannot be any more)."""
        window = timedelta(seconds=self.settings.sync.in_flight_seconds)
        sent = pushed_at if pushed_at.tzinfo else pushed_at.replace(tzinfo=UTC)
        left = sent + window - context.started_at
        return left if left > timedelta(0) else None

    async def _adopt_leads(
        self, context: JobContext, connection: Connection, adopted: list[tuple[_Item, AmoLead]]
    ) -> None:
        async with self.db.transaction() as session:
            leads = LeadRepository(session)
            contacts = ContactRepository(session)
            rows = await leads.by_ids([item.lead.id for item, _ in adopted], for_update=True)
            for item, found in adopted:
                row = rows.get(item.lead.id)
                if row is None:
                    continue
                first = row.amo_id is None
                row.amo_id = found.id
                _pushed(row, item.version, amo_updated_at=_amo_time(found.updated_at))
                if first:
                    await self.events.emit_lead(session, "lead.created", row, source="amobridge")
                contact_id = found.main_contact_id
                if item.contact is not None and item.contact.amo_id is None and contact_id:
                    await self._give_contact_amo_id(
                        leads,
                        contacts,
                        connection.id,
                        row.id,
                        item.contact.id,
                        contact_id,
                        item.contact_version,
                    )
                    # A lead of this run sharing the contact links it instead of creating it
                    # again (the row object is theirs too), as after a create in _created.
                    item.contact.amo_id = contact_id
        for item, found in adopted:
            context.succeed(item.job, {"amo_id": found.id, "reconciled": True})

    async def _give_contact_amo_id(
        self,
        leads: LeadRepository,
        contacts: ContactRepository,
        connection_id: str,
        lead_id: str,
        contact_id: str,
        amo_id: int,
        version: int,
    ) -> int:
        """The local contact ``contact_id`` is amoCRM's ``amo_id`` — unless another local
        contact already is (amoCRM merged them): then the lead is linked to that one."""
        other = await contacts.by_amo_id(connection_id, amo_id)
        if other is not None and other.id != contact_id:
            await leads.link(lead_id, other.id)
            return amo_id
        rows = await contacts.by_ids([contact_id], for_update=True)
        row = rows.get(contact_id)
        if row is not None and row.amo_id is None:
            row.amo_id = amo_id
            _pushed(row, version, amo_updated_at=None)
        return amo_id

    async def _find_contacts(
        self,
        context: JobContext,
        connection: Connection,
        client: AmoClient,
        items: list[_Item],
        searching: bool,
    ) -> list[_Item]:
        """Which contact each lead links (found in amoCRM, when ``searching``) or creates."""
        left: list[_Item] = []
        waiting: list[_Outcome] = []
        found_by_contact: dict[str, AmoContact | None] = {}
        for item in items:
            contact = item.contact
            if contact is None:
                left.append(item)
                continue
            if contact.amo_id is not None:
                item.link_contact = contact.amo_id
            elif contact.create_key and contact.sync_state == "pending":
                # A contact of its own create job (POST /contacts): wait for it, not a duplicate.
                waiting.append(
                    _Outcome(
                        item.job,
                        item.lead.id,
                        "defer",
                        "waiting for its contact's create",
                        WAIT_FOR_CREATE,
                    )
                )
                continue
            elif (
                contact.pushed_at is not None
                and item.job.id in context.taken_over
                and (wait := self._in_flight(context, contact.pushed_at))
            ):
                # A create that carried it may still be on its way: searching now would miss it.
                waiting.append(_Outcome(item.job, item.lead.id, "defer", IN_FLIGHT, wait))
                continue
            elif searching or contact.pushed_at is not None:
                # The mirror is authoritative for the contacts whose fate it knows: one that a
                # create without a known outcome carried may be in amoCRM already.
                if contact.id not in found_by_contact:
                    found_by_contact[contact.id] = await self._search_contact(client, contact)
                found = found_by_contact[contact.id]
                if found is not None:
                    item.link_contact = await self._absorb_contact(connection, item, found)
            left.append(item)
        await self._settle(context, "leads", waiting)
        return left

    async def _search_contact(self, client: AmoClient, contact: Contact) -> AmoContact | None:
        """The oldest amoCRM contact with this e-mail, else with this phone (compared exactly)."""
        if contact.email:
            hits = await find_contacts_by_email(client, contact.email)
            if hits:
                return min(hits, key=lambda c: c.id)
        if contact.phone:
            region = self.settings.sync.phone_region
            hits = await find_contacts_by_phone(
                client,
                contact.phone,
                default_region=region,
                search_terms=phone_search_terms(contact.phone, region)[:PHONE_SEARCHES],
            )
            if hits:
                return min(hits, key=lambda c: c.id)
        return None

    async def _absorb_contact(self, connection: Connection, item: _Item, found: AmoContact) -> int:
        """The lead's contact is ``found`` in amoCRM; what amoCRM lacks of it is pushed by an
        update job."""
        assert item.contact is not None
        async with self.db.transaction() as session:
            leads = LeadRepository(session)
            contacts = ContactRepository(session)
            other = await contacts.by_amo_id(connection.id, found.id)
            if other is not None and other.id != item.contact.id:
                await leads.link(item.lead.id, other.id)
                item.contact.amo_id = found.id
                return found.id
            rows = await contacts.by_ids([item.contact.id], for_update=True)
            row = rows.get(item.contact.id)
            if row is not None:
                await self._absorb(session, row, found, item.contact_version)
            item.contact.amo_id = found.id
        return found.id

    async def _absorb(
        self, session: AsyncSession, row: Contact, found: AmoContact, version: int
    ) -> None:
        """``row`` is ``found`` in amoCRM: take its id and details; what amoCRM lacks of ours
        (an e-mail, a phone) is pushed by an update job."""
        region = self.settings.sync.phone_region
        ours_emails, ours_phones = list(row.emails or []), list(row.phones or [])
        amo_bodies.absorb_contact(row, found, region)
        _pushed(row, version, amo_updated_at=_amo_time(found.updated_at))
        theirs_emails = {normalize_email(e) for e in found.emails}
        theirs_phones = {normalize_phone(p, region) for p in found.phones}
        missing = []
        if any(email not in theirs_emails for email in ours_emails):
            missing.append("emails")
        if any(phone not in theirs_phones for phone in ours_phones):
            missing.append("phones")
        if missing:
            mark_dirty(row, missing)
            await self.queue.enqueue(
                session,
                kind=kinds.CONTACT_UPDATE,
                payload={"contact_id": row.id},
                owner=row.owner,
                connection_id=row.connection_id,
                ordering_key=f"contact:{row.id}",
                dedup_key=kinds.update_dedup_key(kinds.CONTACT_UPDATE, row.id),
            )

    async def _send_creates(
        self, context: JobContext, client: AmoClient, marker: CustomField, items: list[_Item]
    ) -> None:
        pending = items
        while pending:
            batch: list[_Item] = []
            later: list[_Item] = []
            creating: set[str] = set()
            for item in pending:
                contact = item.contact
                if contact is not None and item.link_contact is None and contact.amo_id is not None:
                    item.link_contact = contact.amo_id  # created by an earlier request of this run
                if len(batch) >= kinds.BATCH_SIZE:
                    later.append(item)
                elif contact is not None and item.link_contact is None:
                    if contact.id in creating:
                        later.append(item)  # the same new contact: linked once it exists
                        continue
                    creating.add(contact.id)
                    item.creates_contact = True
                    batch.append(item)
                else:
                    batch.append(item)
            if not await self._send_batch(context, client, marker, batch):
                await self._settle(
                    context,
                    "leads",
                    [
                        _Outcome(
                            item.job,
                            item.lead.id,
                            "retry",
                            "an earlier request of the batch failed",
                        )
                        for item in later
                    ],
                )
                return
            pending = later

    async def _mark_sent(self, items: list[_Item], *, sent: bool) -> None:
        now = datetime.now(UTC) if sent else None
        async with self.db.transaction() as session:
            leads = await LeadRepository(session).by_ids(
                [i.lead.id for i in items], for_update=True
            )
            for item in items:
                row = leads.get(item.lead.id)
                if row is not None and row.amo_id is None:
                    row.pushed_at = now
                    item.lead.pushed_at = now
            if not sent:
                return
            # The new contacts going with them, never unmarked: a later 4xx does not say that
            # an earlier request carrying one created nothing (see _find_contacts).
            carried = [i.contact.id for i in items if i.creates_contact and i.contact is not None]
            contacts = await ContactRepository(session).by_ids(carried, for_update=True)
            for contact in contacts.values():
                if contact.amo_id is None:
                    contact.pushed_at = now

    async def _send_batch(
        self, context: JobContext, client: AmoClient, marker: CustomField, items: list[_Item]
    ) -> bool:
        """One ``POST /leads/complex``; False when the rest of the run should not go on."""
        while items:
            bodies = [
                amo_bodies.complex_lead(
                    item.lead,
                    key=item.key,
                    marker=amo_bodies.marker_value(marker.id, item.key),
                    contact=item.contact if item.creates_contact else None,
                    contact_amo_id=item.link_contact,
                )
                for item in items
            ]
            await self._mark_sent(items, sent=True)  # committed before the request leaves
            try:
                results = await client.leads.create_complex(bodies)
            except AmoAmbiguousWrite as exc:
                await self._settle(
                    context, "leads", [_Outcome(i.job, i.lead.id, "retry", exc) for i in items]
                )
                return False
            except AmoValidationError as exc:
                await self._mark_sent(items, sent=False)  # refused whole: nothing was created
                refused = _field_errors(exc)
                if not refused or not any(item.key in refused for item in items):
                    await self._settle(
                        context, "leads", [_Outcome(i.job, i.lead.id, "fail", exc) for i in items]
                    )
                    return True
                await self._settle(
                    context,
                    "leads",
                    [
                        _Outcome(i.job, i.lead.id, "fail", refused[i.key])
                        for i in items
                        if i.key in refused
                    ],
                )
                items = [item for item in items if item.key not in refused]
                continue
            except AmoHTTPError as exc:
                if not isinstance(exc, AmoServerError):
                    await self._mark_sent(items, sent=False)  # a 4xx: nothing was created
                raise
            await self._created(context, client, items, results)
            return True
        return True

    async def _created(
        self, context: JobContext, client: AmoClient, items: list[_Item], results: list[Any]
    ) -> None:
        made = [
            (item, result)
            for item, result in zip(items, results, strict=True)
            if item.creates_contact and item.contact is not None and result.contact_id
        ]
        async with self.db.transaction() as session:
            leads = LeadRepository(session)
            contacts = ContactRepository(session)
            rows = await leads.by_ids([item.lead.id for item in items], for_update=True)
            # The new contacts' rows and any other local contact amoCRM's ids already name (it
            # merged them), each read once for the request, not once per lead.
            connection_id = items[0].lead.connection_id
            taken = await contacts.by_amo_ids(connection_id, [r.contact_id for _, r in made])
            own = await contacts.by_ids(
                [item.contact.id for item, _ in made if item.contact is not None], for_update=True
            )
            for item, result in zip(items, results, strict=True):
                row = rows.get(item.lead.id)
                if row is None:
                    continue
                first = row.amo_id is None
                row.amo_id = result.id
                _pushed(row, item.version, amo_updated_at=None)  # read back later: readback.py
                if first:
                    await self.events.emit_lead(session, "lead.created", row, source="amobridge")
            for item, result in made:
                assert item.contact is not None
                other = taken.get(result.contact_id)
                if other is not None and other.id != item.contact.id:
                    if item.lead.id in rows:
                        await leads.link(item.lead.id, other.id)
                else:
                    mine = own.get(item.contact.id)
                    if mine is not None and mine.amo_id is None:
                        mine.amo_id = result.contact_id
                        _pushed(mine, item.contact_version, amo_updated_at=None)
                        taken[result.contact_id] = mine
                item.contact.amo_id = result.contact_id
            await self.queue.enqueue(
                session,
                kind=kinds.LEAD_READBACK,
                payload={"lead_ids": [item.lead.id for item in items]},
                owner=items[0].lead.owner,
                connection_id=items[0].lead.connection_id,
            )
        for item, result in zip(items, results, strict=True):
            context.succeed(item.job, {"amo_id": result.id, "contact_id": result.contact_id})

    # --- lead updates --------------------------------------------------------------------------
    async def _update_leads(self, context: JobContext, jobs: Sequence[Job]) -> None:
        wanted = {job.id: _row_id(job, "leads") for job in jobs}
        async with self.db.read() as session:
            leads = await LeadRepository(session).by_ids(wanted.values())
        ready: list[tuple[Job, Lead]] = []
        waiting: list[_Outcome] = []
        for job in jobs:
            lead = leads.get(wanted[job.id])
            if lead is None or lead.deleted:
                context.succeed(job, {"skipped": "the lead is gone"})
            elif lead.amo_id is None:
                if lead.sync_state == "failed":
                    waiting.append(
                        _Outcome(
                            job,
                            lead.id,
                            "fail",
                            "the lead was never created in amoCRM: "
                            + (lead.last_error or "its create failed"),
                        )
                    )
                else:
                    waiting.append(
                        _Outcome(
                            job, lead.id, "defer", "waiting for the lead's create", WAIT_FOR_CREATE
                        )
                    )
            else:
                ready.append((job, lead))
        await self._settle(context, "leads", waiting)
        if not ready:
            return
        connection = await self._connection(jobs[0].connection_id)
        client = await context.client(connection.id)
        if any(lead.unresolved for _, lead in ready):
            ready = await self._resolve_update_names(context, connection, ready)
        await self._send_updates(context, client, "leads", ready)

    async def _resolve_update_names(
        self, context: JobContext, connection: Connection, ready: list[tuple[Job, Lead]]
    ) -> list[tuple[Job, Lead]]:
        catalogue = await self.catalogues.get(connection)
        failed: list[_Outcome] = []
        keep: list[tuple[Job, Lead]] = []
        async with self.db.transaction() as session:
            rows = await LeadRepository(session).by_ids(
                [lead.id for _, lead in ready], for_update=True
            )
            for job, lead in ready:
                row = rows.get(lead.id)
                if row is None or not row.unresolved:
                    keep.append((job, row or lead))
                    continue
                given = dict(row.unresolved)
                try:
                    _, (pipeline_id, status_id, fields) = await self.catalogues.resolve(
                        connection,
                        catalogue,
                        lambda cat, given=given, row=row: _resolve_refs(cat, given, row),
                    )
                except UnknownReference as exc:
                    row.unresolved = None
                    failed.append(_Outcome(job, lead.id, "fail", exc.detail))
                    continue
                changed: list[str] = []
                if pipeline_id is not None and pipeline_id != row.pipeline_id:
                    row.pipeline_id = pipeline_id
                    changed.append("pipeline_id")
                if status_id is not None and status_id != row.status_id:
                    row.status_id = status_id
                    changed.append("status_id")
                if fields:
                    changed.extend(merge_custom_fields(row, fields))
                row.unresolved = None
                mark_dirty(row, changed)
                keep.append((job, row))
        await self._settle(context, "leads", failed)
        return keep

    # --- contacts ------------------------------------------------------------------------------
    async def _create_contacts(self, context: JobContext, jobs: Sequence[Job]) -> None:
        wanted = {job.id: _row_id(job, "contacts") for job in jobs}
        async with self.db.read() as session:
            contacts = await ContactRepository(session).by_ids(wanted.values())
        todo: list[tuple[Job, Contact, str, int]] = []
        for job in jobs:
            contact = contacts.get(wanted[job.id])
            if contact is None or contact.deleted:
                context.succeed(job, {"skipped": "the contact is gone"})
            elif contact.amo_id is not None:
                context.succeed(job, {"amo_id": contact.amo_id})
            else:
                todo.append(
                    (job, contact, contact.create_key or job.idempotency_key, contact.version)
                )
        if not todo:
            return
        connection = await self._connection(jobs[0].connection_id)
        client = await context.client(connection.id)
        marker = await self.catalogues.ensure_marker(connection.id, client, "contacts")
        adopted: list[tuple[Job, Contact, int, AmoContact]] = []
        send: list[tuple[Job, Contact, str, int]] = []
        searching = await self._searches_amo(connection.id)
        for job, contact, key, version in todo:
            found: AmoContact | None = None
            if (
                contact.pushed_at is not None
                and job.id in context.taken_over
                and (wait := self._in_flight(context, contact.pushed_at))
            ):
                context.defer(job, wait, IN_FLIGHT)
                continue
            if contact.pushed_at is not None:
                hit = await _find_by_marker(client, "contacts", marker.id, key)
                found = hit if isinstance(hit, AmoContact) else None
            if found is None and searching:
                found = await self._search_contact(client, contact)
            if found is not None:
                adopted.append((job, contact, version, found))
            else:
                send.append((job, contact, key, version))
        if adopted:
            async with self.db.transaction() as session:
                repo = ContactRepository(session)
                rows = await repo.by_ids([c.id for _, c, _, _ in adopted], for_update=True)
                for _job, contact, version, found in adopted:
                    row = rows.get(contact.id)
                    other = await repo.by_amo_id(connection.id, found.id)
                    if row is None or (other is not None and other.id != row.id):
                        continue  # another local contact is that one already
                    await self._absorb(session, row, found, version)
            for job, _, _, found in adopted:
                context.succeed(job, {"amo_id": found.id, "found": True})
        while send:
            bodies = [
                amo_bodies.new_contact(contact, marker=amo_bodies.marker_value(marker.id, key))
                for _, contact, key, _ in send
            ]
            await self._mark_contacts_sent([c.id for _, c, _, _ in send], sent=True)
            try:
                results = await client.contacts.create(bodies)
            except AmoAmbiguousWrite as exc:
                await self._settle(
                    context, "contacts", [_Outcome(j, c.id, "retry", exc) for j, c, _, _ in send]
                )
                return
            except AmoValidationError as exc:
                await self._mark_contacts_sent([c.id for _, c, _, _ in send], sent=False)
                refused = _field_errors(exc)
                named = [entry for entry in send if entry[2] in refused]
                if not named:
                    await self._settle(
                        context, "contacts", [_Outcome(j, c.id, "fail", exc) for j, c, _, _ in send]
                    )
                    return
                await self._settle(
                    context,
                    "contacts",
                    [_Outcome(j, c.id, "fail", refused[k]) for j, c, k, _ in named],
                )
                send = [entry for entry in send if entry[2] not in refused]
                continue
            except AmoHTTPError as exc:
                if not isinstance(exc, AmoServerError):
                    await self._mark_contacts_sent([c.id for _, c, _, _ in send], sent=False)
                raise
            async with self.db.transaction() as session:
                rows = await ContactRepository(session).by_ids(
                    [c.id for _, c, _, _ in send], for_update=True
                )
                for (_, contact, _, version), result in zip(send, results, strict=True):
                    row = rows.get(contact.id)
                    if row is not None:
                        row.amo_id = result.id
                        _pushed(row, version, amo_updated_at=None)
            for (job, _, _, _), result in zip(send, results, strict=True):
                context.succeed(job, {"amo_id": result.id})
            return

    async def _mark_contacts_sent(self, ids: list[str], *, sent: bool) -> None:
        async with self.db.transaction() as session:
            rows = await ContactRepository(session).by_ids(ids, for_update=True)
            for row in rows.values():
                if row.amo_id is None:
                    row.pushed_at = datetime.now(UTC) if sent else None

    async def _update_contacts(self, context: JobContext, jobs: Sequence[Job]) -> None:
        wanted = {job.id: _row_id(job, "contacts") for job in jobs}
        async with self.db.read() as session:
            contacts = await ContactRepository(session).by_ids(wanted.values())
        ready: list[tuple[Job, Contact]] = []
        waiting: list[_Outcome] = []
        for job in jobs:
            contact = contacts.get(wanted[job.id])
            if contact is None or contact.deleted:
                context.succeed(job, {"skipped": "the contact is gone"})
            elif contact.amo_id is None:
                if contact.sync_state == "failed":
                    waiting.append(
                        _Outcome(job, contact.id, "fail", "the contact was never created in amoCRM")
                    )
                else:
                    waiting.append(
                        _Outcome(
                            job,
                            contact.id,
                            "defer",
                            "waiting for the contact's create",
                            WAIT_FOR_CREATE,
                        )
                    )
            else:
                ready.append((job, contact))
        await self._settle(context, "contacts", waiting)
        if not ready:
            return
        client = await context.client(jobs[0].connection_id or "")
        await self._send_updates(context, client, "contacts", ready)

    # --- updates, both kinds -------------------------------------------------------------------
    async def _send_updates(
        self,
        context: JobContext,
        client: AmoClient,
        entity: Entity,
        ready: Sequence[tuple[Job, Lead | Contact]],
    ) -> None:
        """One ``PATCH /api/v4/{entity}`` with each row's changed fields."""
        entries: list[tuple[Job, Lead | Contact, int, Any]] = []
        for job, row in ready:
            dirty = dict(row.dirty or {})
            body: Any
            if isinstance(row, Lead):
                body = amo_bodies.lead_changes(row, dirty)
            else:
                body = amo_bodies.contact_changes(row, dirty)
            if body is None:
                await self._nothing_to_send(entity, row)
                context.succeed(job, {"amo_id": row.amo_id, "sent": False})
            else:
                entries.append((job, row, row.version, body))
        while entries:
            try:
                if entity == "leads":
                    results = await client.leads.update([body for *_, body in entries])
                else:
                    results = await client.contacts.update([body for *_, body in entries])
            except AmoValidationError as exc:
                refused = _field_errors(exc)  # an update's items are named by their index
                hit = {str(i) for i in range(len(entries))} & set(refused)
                if not hit:
                    await self._settle(
                        context, entity, [_Outcome(j, r.id, "fail", exc) for j, r, _, _ in entries]
                    )
                    return
                await self._settle(
                    context,
                    entity,
                    [
                        _Outcome(j, r.id, "fail", refused[str(i)])
                        for i, (j, r, _, _) in enumerate(entries)
                        if str(i) in hit
                    ],
                )
                entries = [e for i, e in enumerate(entries) if str(i) not in hit]
                continue
            async with self.db.transaction() as session:
                repo = LeadRepository(session) if entity == "leads" else ContactRepository(session)
                rows = await repo.by_ids([r.id for _, r, _, _ in entries], for_update=True)
                for (_, row, version, _), result in zip(entries, results, strict=True):
                    fresh = rows.get(row.id)
                    if fresh is not None:
                        _pushed(fresh, version, amo_updated_at=_amo_time(result.updated_at))
            for (job, row, _, _), result in zip(entries, results, strict=True):
                context.succeed(job, {"amo_id": row.amo_id, "updated_at": result.updated_at})
            return

    async def _nothing_to_send(self, entity: Entity, row: Lead | Contact) -> None:
        async with self.db.transaction() as session:
            repo = LeadRepository(session) if entity == "leads" else ContactRepository(session)
            fresh = (await repo.by_ids([row.id], for_update=True)).get(row.id)
            if fresh is not None:
                _pushed(fresh, row.version, amo_updated_at=None)


def _describe(error: BaseException | str) -> str:
    from amobridge.jobs.handlers import describe_error

    return describe_error(error)


def _resolve_refs(
    catalogue: Catalogue | None, given: dict[str, Any], lead: Lead
) -> tuple[int | None, int | None, list[dict[str, Any]] | None]:
    if catalogue is None:
        raise UnknownReference(
            "the account's pipelines and fields cannot be read: the names given with the lead "
            "stay unchecked",
            code="unknown_stage",
            available=[],
        )
    creating = lead.amo_id is None
    pipeline_id, status_id = catalogue.lead_refs(
        pipeline=given.get("pipeline"),
        stage=given.get("stage"),
        current_pipeline_id=lead.pipeline_id if not creating else None,
        creating=creating and ("pipeline" in given or "stage" in given),
    )
    fields = given.get("custom_fields")
    values = catalogue.field_values("leads", fields) if fields else None
    return pipeline_id, status_id, values


async def _find_by_marker(
    client: AmoClient, entity: Entity, field_id: int, key: str
) -> AmoLead | AmoContact | None:
    """The entity whose marker field holds ``key`` (the oldest, should there be several)."""
    page: Any
    if entity == "leads":  # with their contacts: a lead's contact is adopted with it
        page = await client.leads.list(query=key, limit=50, with_contacts=True)
    else:
        page = await client.contacts.list(query=key, limit=50)
    hits = [item for item in page.items if item.custom_field_value(field_id) == key]
    if len(hits) > 1:
        log.warning("%d %s carry the same marker: the oldest is adopted", len(hits), entity)
    found: AmoLead | AmoContact | None = min(hits, key=lambda item: item.id) if hits else None
    return found
