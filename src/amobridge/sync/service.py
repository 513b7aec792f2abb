"""The lead API: accept, show, list and change leads and contacts of an owner's mirror.

Every write follows invariant 1: the row **and its push job** are committed in one unit of work
before the answer is sent, so a 2xx means the change is stored and will reach amoCRM (a job of a
connection that needs re-authorization waits, it is not dropped). amoCRM is never called while a
unit of work is open: the catalogue a request needs is read first (``catalogue.py``), then the
unit of work writes.

``Idempotency-Key`` on POST: the key and a hash of the request are stored in the unit of work that
creates the row, with the answer; a retry with the same key gets that answer again (status and
body) and creates nothing, the same key with another body is refused. ``external_id`` is unique per
owner: a second POST with it answers **200** with the lead already stored (unchanged; PATCH
changes it). A contact given with a lead is deduplicated against the connection's contacts by
e-mail (lower-cased) and phone (E.164) at once; the push also looks in amoCRM (``tasks.py``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from amobridge.amo.phones import normalize_email, normalize_phone
from amobridge.audit import AuditRepository
from amobridge.connect.repository import ConnectionRepository
from amobridge.errors import NotFound, ServiceError
from amobridge.settings import Settings
from amobridge.storage.crypto import Keyring
from amobridge.storage.db import Database
from amobridge.storage.tables import Connection, Contact, Lead
from amobridge.sync import kinds
from amobridge.sync.catalogue import Catalogue, CatalogueService, UnknownReference
from amobridge.sync.intake import (
    Answer,
    LeadIntake,
    NewLead,
    Resolved,
    UnitQueue,
    merge_contact,
    replay,
)
from amobridge.sync.repository import (
    ContactRepository,
    Cursor,
    IdempotencyRepository,
    LeadRepository,
    Search,
)
from amobridge.sync.schemas import (
    ContactCreateBody,
    ContactIn,
    ContactPatchBody,
    LeadCreateBody,
    LeadPatchBody,
)
from amobridge.sync.views import contact_out, fold, lead_out, mark_dirty

log = logging.getLogger("amobridge.sync")


class Queue(UnitQueue, Protocol):
    """What the service needs of the job queue: enqueue inside the caller's unit of work."""

    async def enqueue(
        self,
        session: AsyncSession,
        *,
        kind: str,
        payload: dict[str, Any],
        owner: str | None = None,
        connection_id: str | None = None,
        ordering_key: str | None = None,
        dedup_key: str | None = None,
    ) -> Any: ...


def _request_hash(route: str, body: dict[str, Any]) -> str:
    canonical = json.dumps([route, body], sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _searched(q: str | None, region: str) -> Search | None:
    if q is None or not q.strip():
        return None
    text = q.strip()
    digits = "".join(ch for ch in text if ch.isdigit())
    return Search(
        folded=fold(text) or "",
        email=text.lower(),
        phone=normalize_phone(text, region),
        digits=digits
        if len(digits) >= 5 and len(digits) * 2 >= len(text.replace(" ", ""))
        else None,
    )


def _since(value: str | None) -> datetime | None:
    if value is None or not value.strip():
        return None
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ServiceError(
            f"updated_since: {value!r} is not an ISO 8601 time, e.g. 2025-06-01T09:30:00+00:00",
            status_code=422,
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


class SyncService:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        *,
        keyring: Keyring,
        catalogues: CatalogueService,
        queue: Queue,
    ) -> None:
        self.settings = settings
        self.db = db
        self.keyring = keyring
        self.catalogues = catalogues
        self.queue = queue
        self.intake = LeadIntake(db, queue)

    @property
    def region(self) -> str:
        return self.settings.sync.phone_region

    # --- shared --------------------------------------------------------------------------------
    async def _connection(self, owner: str) -> Connection:
        async with self.db.read() as session:
            row = await ConnectionRepository(session, self.keyring).for_owner(owner)
        if row is None:
            raise NotFound(
                "no amoCRM connection for this owner: connect it first (GET /amocrm/auth)",
                code="connection_not_found",
            )
        return row

    async def _replayed(self, owner: str, key: str | None, request_hash: str) -> Answer | None:
        if key is None:
            return None
        async with self.db.read() as session:
            found = await IdempotencyRepository(session).find(owner, key)
        return replay(found, request_hash) if found is not None else None

    def _contact_keys(
        self, given: ContactIn | ContactCreateBody | ContactPatchBody
    ) -> tuple[str | None, str | None]:
        email = phone = None
        if given.email:
            email = normalize_email(given.email)
            if email is None:
                raise ServiceError(
                    f"email {given.email!r} is not an e-mail address",
                    status_code=422,
                    code="invalid_email",
                )
        if given.phone:
            phone = normalize_phone(given.phone, self.region)
            if phone is None:
                raise ServiceError(
                    f"phone {given.phone!r} is not a phone number (a number without + is read "
                    f"as dialled in {self.region}: AMOBRIDGE_SYNC__PHONE_REGION)",
                    status_code=422,
                    code="invalid_phone",
                )
        return email, phone

    async def _enqueue(
        self, session: AsyncSession, kind: str, row: Lead | Contact, *, dedup: bool
    ) -> Any:
        entity = "lead" if isinstance(row, Lead) else "contact"
        return await self.queue.enqueue(
            session,
            kind=kind,
            payload={f"{entity}_id": row.id},
            owner=row.owner,
            connection_id=row.connection_id,
            # A row's jobs run one at a time, in order: its update never overtakes its create.
            ordering_key=f"{entity}:{row.id}",
            dedup_key=kinds.update_dedup_key(kind, row.id) if dedup else None,
        )

    # --- resolving names ----------------------------------------------------------------------
    def _resolve(
        self,
        catalogue: Catalogue | None,
        *,
        pipeline: int | str | None,
        stage: int | str | None,
        custom_fields: dict[str, Any] | None,
        current_pipeline_id: int | None = None,
        creating: bool,
    ) -> Resolved:
        if catalogue is None:
            # Nothing to check against: the push resolves the names (a new lead's missing
            # pipeline and stage too: the main pipeline's first stage).
            unresolved: dict[str, Any] = {}
            if creating or pipeline is not None:
                unresolved["pipeline"] = pipeline
            if creating or stage is not None:
                unresolved["stage"] = stage
            if custom_fields:
                unresolved["custom_fields"] = custom_fields
            return Resolved(
                pipeline if isinstance(pipeline, int) else None,
                stage if isinstance(stage, int) else None,
                None,
                unresolved or None,
            )
        pipeline_id, status_id = catalogue.lead_refs(
            pipeline=pipeline,
            stage=stage,
            current_pipeline_id=current_pipeline_id,
            creating=creating,
        )
        fields = catalogue.field_values("leads", custom_fields) if custom_fields else None
        return Resolved(pipeline_id, status_id, fields, None)

    async def _resolved(
        self, connection: Connection, **given: Any
    ) -> tuple[Catalogue | None, Resolved]:
        catalogue = await self.catalogues.get(connection)
        return await self.catalogues.resolve(
            connection, catalogue, lambda found: self._resolve(found, **given)
        )

    # --- leads ---------------------------------------------------------------------------------
    async def create_lead(
        self, owner: str, body: LeadCreateBody, *, idempotency_key: str | None, actor: str
    ) -> Answer:
        given = body.model_dump(mode="json", exclude_unset=True, exclude={"owner"})
        request_hash = _request_hash("POST /leads", given)
        replayed = await self._replayed(owner, idempotency_key, request_hash)
        if replayed is not None:
            return replayed
        connection = await self._connection(owner)
        email, phone = self._contact_keys(body.contact) if body.contact else (None, None)
        async with self.db.read() as session:
            existing = (
                await LeadRepository(session).by_external_id(owner, body.external_id)
                if body.external_id
                else None
            )
        if existing is not None:
            catalogue = await self.catalogues.cached(connection.id)
            resolved = None
        else:
            catalogue, resolved = await self._resolved(
                connection,
                pipeline=body.pipeline,
                stage=body.stage,
                custom_fields=body.custom_fields,
                creating=True,
            )
        return await self.intake.submit(
            NewLead(
                owner=owner,
                connection_id=connection.id,
                connection_status=connection.status,
                body=body,
                resolved=resolved,
                catalogue=catalogue,
                email=email,
                phone=phone,
                idempotency_key=idempotency_key,
                request_hash=request_hash,
                actor=actor,
            )
        )

    async def get_lead(self, owner: str, lead_id: str) -> dict[str, Any]:
        connection = await self._connection(owner)
        async with self.db.read() as session:
            leads = LeadRepository(session)
            lead = await leads.for_owner(owner, lead_id)
            if lead is None:
                raise NotFound("no lead with this id for this owner", code="lead_not_found")
            contacts = await leads.main_contacts([lead.id])
        catalogue = await self.catalogues.cached(connection.id)
        return lead_out(
            lead, contact=contacts.get(lead.id), catalogue=catalogue, connection=connection.status
        )

    async def list_leads(
        self,
        owner: str,
        *,
        pipeline: str | None,
        stage: str | None,
        q: str | None,
        updated_since: str | None,
        state: str | None,
        cursor: str | None,
        limit: int,
    ) -> dict[str, Any]:
        connection = await self._connection(owner)
        since = _since(updated_since)
        after = Cursor.decode(cursor, "updated" if since else "created") if cursor else None
        pipeline_ids: list[int] | None = None
        stages: list[tuple[int, int]] | None = None
        catalogue = await self.catalogues.cached(connection.id)
        if pipeline is not None or stage is not None:
            pipeline_ref = pipeline.strip() if pipeline else None
            stage_ref = stage.strip() if stage else None
            if catalogue is None:
                catalogue = await self.catalogues.get(connection)
            if catalogue is None:
                if not all(ref is None or ref.isdigit() for ref in (pipeline_ref, stage_ref)):
                    raise UnknownReference(
                        "pipeline and stage names cannot be checked now (amoCRM cannot be "
                        "reached and nothing is cached): filter by their ids",
                        code="unknown_stage",
                        available=[],
                    )
                pipeline_ids = [int(pipeline_ref)] if pipeline_ref else None
                if stage_ref:
                    raise UnknownReference(
                        "a stage filter needs the account's pipelines, which cannot be read now",
                        code="unknown_stage",
                        available=[],
                    )
            else:
                catalogue, (pipeline_ids, stages) = await self.catalogues.resolve(
                    connection, catalogue, lambda found: found.stage_pairs(pipeline_ref, stage_ref)
                )
        async with self.db.read() as session:
            leads = LeadRepository(session)
            rows = await leads.page(
                owner,
                pipeline_ids=pipeline_ids,
                stages=stages,
                search=_searched(q, self.region),
                updated_since=since,
                state=state,
                cursor=after,
                limit=limit,
            )
            more = len(rows) > limit
            rows = rows[:limit]
            contacts = await leads.main_contacts([row.id for row in rows])
        items = [
            lead_out(
                row, contact=contacts.get(row.id), catalogue=catalogue, connection=connection.status
            )
            for row in rows
        ]
        next_cursor = None
        if more and rows:
            last = rows[-1]
            next_cursor = Cursor(
                "updated" if since else "created",
                last.updated_at if since else last.created_at,
                last.id,
            ).encode()
        return {"items": items, "next_cursor": next_cursor}

    async def update_lead(
        self, owner: str, lead_id: str, body: LeadPatchBody, *, actor: str
    ) -> dict[str, Any]:
        connection = await self._connection(owner)
        async with self.db.read() as session:
            current = await LeadRepository(session).for_owner(owner, lead_id)
        if current is None:
            raise NotFound("no lead with this id for this owner", code="lead_not_found")
        given = body.model_fields_set
        touches_stage = "pipeline" in given or "stage" in given
        catalogue, resolved = await self._resolved(
            connection,
            pipeline=body.pipeline if touches_stage else None,
            stage=body.stage if touches_stage else None,
            custom_fields=body.custom_fields if "custom_fields" in given else None,
            current_pipeline_id=current.pipeline_id,
            creating=False,
        )
        async with self.db.transaction() as session:
            leads = LeadRepository(session)
            lead = await leads.for_owner(owner, lead_id, for_update=True)
            if lead is None:
                raise NotFound("no lead with this id for this owner", code="lead_not_found")
            changed = _apply_lead_patch(lead, body, resolved, touches_stage)
            if changed:
                mark_dirty(lead, changed)
                await leads.flush()
                await self._enqueue(session, kinds.LEAD_UPDATE, lead, dedup=True)
                AuditRepository(session).record(
                    actor=actor,
                    action="lead.update",
                    success=True,
                    owner=owner,
                    connection_id=lead.connection_id,
                    lead_id=lead.amo_id,
                    stage_id=lead.status_id if "status_id" in changed else None,
                    message=f"lead {lead.id}: {', '.join(sorted(changed))}",
                    details={"lead": lead.id, "fields": sorted(changed)},
                )
            contacts = await leads.main_contacts([lead.id])
            return lead_out(
                lead,
                contact=contacts.get(lead.id),
                catalogue=catalogue,
                connection=connection.status,
            )

    # --- contacts ------------------------------------------------------------------------------
    async def create_contact(
        self, owner: str, body: ContactCreateBody, *, idempotency_key: str | None, actor: str
    ) -> Answer:
        given = body.model_dump(mode="json", exclude_unset=True, exclude={"owner"})
        request_hash = _request_hash("POST /contacts", given)
        replayed = await self._replayed(owner, idempotency_key, request_hash)
        if replayed is not None:
            return replayed
        connection = await self._connection(owner)
        email, phone = self._contact_keys(body)
        if not (body.name or email or phone):
            raise ServiceError(
                "a contact needs a name, an email or a phone",
                status_code=422,
                code="validation_error",
            )
        async with self.db.transaction() as session:
            idempotency = IdempotencyRepository(session)
            if idempotency_key is not None:
                first = await idempotency.claim(owner, idempotency_key, request_hash)
                if first is not None:
                    return replay(first, request_hash)
            contacts = ContactRepository(session)
            found = (
                await contacts.by_external_id(owner, body.external_id) if body.external_id else None
            )
            if found is None:
                found = await contacts.duplicate_of(connection.id, email=email, phone=phone)
                if found is not None:
                    changed = merge_contact(
                        found, name=body.name, email=email, phone=phone, primary=False
                    )
                    if body.external_id and found.external_id is None:
                        found.external_id = body.external_id
                    if changed and found.amo_id is not None:
                        mark_dirty(found, changed)
                        await self._enqueue(session, kinds.CONTACT_UPDATE, found, dedup=True)
                    await contacts.flush()
            status = 200
            if found is None:
                contact = Contact(
                    owner=owner,
                    connection_id=connection.id,
                    name=body.name,
                    name_folded=fold(body.name),
                    email=email,
                    phone=phone,
                    emails=[email] if email else [],
                    phones=[phone] if phone else [],
                    tags=list(dict.fromkeys(body.tags or [])),
                    external_id=body.external_id,
                    sync_state="pending",
                    version=1,
                    dirty={},
                )
                found = await contacts.add_new(contact)
                if found is None:
                    found = await contacts.by_external_id(owner, body.external_id or "")
                else:
                    status = 201
                    job = await self._enqueue(session, kinds.CONTACT_CREATE, found, dedup=False)
                    found.create_key = job.idempotency_key
                    await contacts.flush()
                    AuditRepository(session).record(
                        actor=actor,
                        action="contact.create",
                        success=True,
                        owner=owner,
                        connection_id=connection.id,
                        message=f"contact {found.id} accepted",
                        details={"contact": found.id},
                    )
            assert found is not None
            answer = contact_out(found, connection=connection.status)
            if idempotency_key is not None:
                await idempotency.answer(owner, idempotency_key, status, answer)
        return status, answer, False

    async def get_contact(self, owner: str, contact_id: str) -> dict[str, Any]:
        connection = await self._connection(owner)
        async with self.db.read() as session:
            contact = await ContactRepository(session).for_owner(owner, contact_id)
        if contact is None:
            raise NotFound("no contact with this id for this owner", code="contact_not_found")
        return contact_out(contact, connection=connection.status)

    async def list_contacts(
        self, owner: str, *, q: str | None, cursor: str | None, limit: int
    ) -> dict[str, Any]:
        connection = await self._connection(owner)
        after = Cursor.decode(cursor, "created") if cursor else None
        async with self.db.read() as session:
            rows = await ContactRepository(session).page(
                owner, search=_searched(q, self.region), cursor=after, limit=limit
            )
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = (
            Cursor("created", rows[-1].created_at, rows[-1].id).encode() if more and rows else None
        )
        return {
            "items": [contact_out(row, connection=connection.status) for row in rows],
            "next_cursor": next_cursor,
        }

    async def update_contact(
        self, owner: str, contact_id: str, body: ContactPatchBody, *, actor: str
    ) -> dict[str, Any]:
        connection = await self._connection(owner)
        email, phone = self._contact_keys(body)
        async with self.db.transaction() as session:
            contacts = ContactRepository(session)
            contact = await contacts.for_owner(owner, contact_id, for_update=True)
            if contact is None:
                raise NotFound("no contact with this id for this owner", code="contact_not_found")
            changed = merge_contact(
                contact,
                name=body.name if "name" in body.model_fields_set else None,
                email=email,
                phone=phone,
                primary=True,
            )
            if "tags" in body.model_fields_set and body.tags is not None:
                tags = list(dict.fromkeys(body.tags))
                if tags != list(contact.tags or []):
                    contact.tags = tags
                    changed.append("tags")
            if changed:
                mark_dirty(contact, changed)
                await contacts.flush()
                # Not yet in amoCRM: the job finds the create (its own or its lead's) sent it.
                await self._enqueue(session, kinds.CONTACT_UPDATE, contact, dedup=True)
                AuditRepository(session).record(
                    actor=actor,
                    action="contact.update",
                    success=True,
                    owner=owner,
                    connection_id=contact.connection_id,
                    message=f"contact {contact.id}: {', '.join(sorted(changed))}",
                    details={"contact": contact.id, "fields": sorted(changed)},
                )
            return contact_out(contact, connection=connection.status)

    # --- housekeeping --------------------------------------------------------------------------
    async def purge_idempotency_keys(self) -> int:
        hours = self.settings.sync.idempotency_ttl_hours
        async with self.db.transaction() as session:
            return await IdempotencyRepository(session).purge(
                older_than=datetime.now(UTC) - timedelta(hours=hours)
            )


def _apply_lead_patch(
    lead: Lead, body: LeadPatchBody, resolved: Resolved, touches_stage: bool
) -> list[str]:
    """Write the patch into ``lead``; the names of the fields it changed (``cf:<id>`` for a
    custom field)."""
    given = body.model_fields_set
    changed: list[str] = []
    if "name" in given and body.name != lead.name:
        lead.name = body.name
        lead.name_folded = fold(body.name)
        changed.append("name")
    if "price" in given and body.price != lead.price:
        lead.price = body.price
        changed.append("price")
    if (
        "responsible_user_id" in given
        and body.responsible_user_id is not None
        and body.responsible_user_id != lead.responsible_user_id
    ):
        lead.responsible_user_id = body.responsible_user_id
        changed.append("responsible_user_id")
    if resolved.unresolved:
        merged = {**(lead.unresolved or {}), **resolved.unresolved}
        if "custom_fields" in resolved.unresolved:
            merged["custom_fields"] = {
                **((lead.unresolved or {}).get("custom_fields") or {}),
                **resolved.unresolved["custom_fields"],
            }
        lead.unresolved = merged
        changed.append("unresolved")
    elif touches_stage:
        if resolved.pipeline_id is not None and resolved.pipeline_id != lead.pipeline_id:
            lead.pipeline_id = resolved.pipeline_id
            changed.append("pipeline_id")
        if resolved.status_id is not None and resolved.status_id != lead.status_id:
            lead.status_id = resolved.status_id
            changed.append("status_id")
    if resolved.custom_fields:
        changed.extend(merge_custom_fields(lead, resolved.custom_fields))
    if "tags" in given and body.tags is not None:
        tags = list(dict.fromkeys(body.tags))
        if tags != list(lead.tags or []):
            lead.tags = tags
            changed.append("tags")
    return changed


def merge_custom_fields(lead: Lead, values: list[dict[str, Any]]) -> list[str]:
    """Set (or, with ``values: None``, clear) these fields on ``lead``; ``cf:<id>`` of each
    one that changed."""
    by_id = {item["field_id"]: item for item in lead.custom_fields or []}
    changed: list[str] = []
    for item in values:
        field_id = item["field_id"]
        before = by_id.get(field_id)
        if item["values"] is None:
            if before is not None:
                del by_id[field_id]
                changed.append(f"cf:{field_id}")
        elif before is None or before.get("values") != item["values"]:
            by_id[field_id] = item
            changed.append(f"cf:{field_id}")
    if changed:
        lead.custom_fields = list(by_id.values())
    return changed
