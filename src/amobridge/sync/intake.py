"""Accepting leads: ``POST /leads`` commits each lead with its contact, its push job and its audit
entry before it answers — many requests' leads in one unit of work.

What a request can check without writing (its owner's connection, the names against the
catalogue, an earlier answer for its ``Idempotency-Key``) it checks on its own. Then its lead
joins a group commit (:class:`amobridge.storage.batch.GroupCommit`): the leads waiting when the
writer is free are written in one unit, run in one call on the database's unit thread
(:meth:`Database.run_unit <amobridge.storage.db.Database.run_unit>`), and each request is
answered once that unit has committed. One lead at a time through an async unit of about twenty
statements, each a hop through a busy event loop and each unit queueing for SQLite's write lock,
took 30-60 ms; a unit now writes a few dozen leads in about that time.

Within the unit every lead is written as a request alone would be, in arrival order, so what one
lead writes the next one sees: its ``Idempotency-Key`` taken (a retry of the same request in the
same unit gets the first one's answer), its ``external_id`` taken, a contact it created (the
next lead with that e-mail links it instead of making another).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import Connection as SyncConnection
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from amobridge.audit.repository import entry as audit_entry
from amobridge.errors import ServiceError
from amobridge.jobs import JobQueue
from amobridge.storage.batch import GroupCommit
from amobridge.storage.db import Database
from amobridge.storage.repository import SyncRepository
from amobridge.storage.tables import Contact, IdempotencyKey, Lead, LeadContact
from amobridge.sync import kinds
from amobridge.sync.catalogue import Catalogue
from amobridge.sync.repository import ContactRepository, IdempotencyRepository, LeadRepository
from amobridge.sync.schemas import ContactIn, LeadCreateBody
from amobridge.sync.views import fold, lead_out, mark_dirty

Answer = tuple[int, dict[str, Any], bool]  # status, body, replayed


@dataclass(frozen=True)
class Resolved:
    pipeline_id: int | None
    status_id: int | None
    custom_fields: list[dict[str, Any]] | None  # amoCRM values with names; None: not given
    unresolved: dict[str, Any] | None


def replay(found: Any, request_hash: str) -> Answer:
    """The first answer given for an ``Idempotency-Key``, for a retry of the same request."""
    if found.request_hash != request_hash or found.response is None:
        raise ServiceError(
            "this Idempotency-Key was already used with another request: use a new key for a "
            "new request (the first answer is replayed only for the same body)",
            status_code=422,
            code="idempotency_key_reused",
        )
    return int(found.status_code or 200), dict(found.response), True


def merge_contact(
    contact: Contact,
    *,
    name: str | None,
    email: str | None,
    phone: str | None,
    primary: bool,
) -> list[str]:
    """Add what ``contact`` lacks (``primary``: the given e-mail and phone become its first);
    the names of the columns changed."""
    changed: list[str] = []
    if name and (primary or not contact.name) and name != contact.name:
        contact.name = name
        contact.name_folded = fold(name)
        changed.append("name")
    for value, single, plural in ((email, "email", "emails"), (phone, "phone", "phones")):
        if value is None:
            continue
        values = list(getattr(contact, plural) or [])
        if primary and values[:1] != [value]:
            values = [value, *(v for v in values if v != value)]
        elif value not in values:
            values.append(value)
        else:
            continue
        setattr(contact, plural, values)
        setattr(contact, single, values[0])
        changed.append(plural)
    return changed


class UnitQueue(Protocol):
    """What the intake needs of the job queue: enqueue in a unit run in one call."""

    def enqueue_in(
        self,
        connection: SyncConnection,
        *,
        kind: str,
        payload: dict[str, Any],
        owner: str | None = None,
        connection_id: str | None = None,
        ordering_key: str | None = None,
        dedup_key: str | None = None,
        idempotency_key: str | None = None,
    ) -> bool: ...

    def wake(self) -> None: ...


@dataclass(frozen=True)
class NewLead:
    """A ``POST /leads`` checked and waiting for its unit: what the request resolved."""

    owner: str
    connection_id: str
    connection_status: str
    body: LeadCreateBody
    resolved: Resolved | None  # None: its external_id named a stored lead when checked
    catalogue: Catalogue | None
    email: str | None
    phone: str | None
    idempotency_key: str | None
    request_hash: str
    actor: str


class LeadIntakeRepository(SyncRepository[Lead]):
    """The SQL of accepting leads, on the intake unit's session."""

    model = Lead

    def claim_key(self, owner: str, key: str, request_hash: str) -> IdempotencyKey | None:
        """Take ``key`` for this request, or the row of the request that took it first."""
        taken = self.session.scalar(
            IdempotencyRepository.claim_statement(
                self.dialect, owner, key, request_hash, created_at=datetime.now(UTC)
            )
        )
        if taken is not None:
            return None
        return self.session.get(IdempotencyKey, (owner, key))

    def answer_key(self, owner: str, key: str, status: int, response: dict[str, Any]) -> None:
        row = self.session.get(IdempotencyKey, (owner, key))
        if row is not None:
            row.status_code = status
            row.response = response

    def by_external_id(self, owner: str, external_id: str) -> Lead | None:
        found: Lead | None = self.session.scalar(
            LeadRepository.external_id_query(owner, external_id)
        )
        return found

    def add_new(self, lead: Lead) -> bool:
        """Insert ``lead``; False when its ``external_id`` is taken by then (another process
        stored it first)."""
        try:
            with self.session.begin_nested():
                self.session.add(lead)
                self.session.flush()
        except IntegrityError:
            return False
        return True

    def duplicate_of(
        self, connection_id: str, *, email: str | None, phone: str | None
    ) -> Contact | None:
        for query in ContactRepository.duplicate_queries(connection_id, email=email, phone=phone):
            found: Contact | None = self.session.scalar(query)
            if found is not None:
                return found
        return None

    def main_contact(self, lead_id: str) -> Contact | None:
        found: Contact | None = self.session.scalar(
            select(Contact)
            .join(LeadContact, LeadContact.contact_id == Contact.id)
            .where(LeadContact.lead_id == lead_id, LeadContact.is_main.is_(True))
        )
        return found


@dataclass
class _Unit:
    """One intake unit: its connection, session and repository, and whether it queued a job."""

    connection: SyncConnection
    session: Session
    repo: LeadIntakeRepository
    enqueued: bool = False


class LeadIntake:
    """Writes accepted leads in groups (see the module's docstring)."""

    def __init__(self, db: Database, queue: UnitQueue) -> None:
        self.db = db
        self.queue = queue
        self.batch: GroupCommit[NewLead, Answer] = GroupCommit(self._write, what="a lead")

    async def submit(self, item: NewLead) -> Answer:
        return await self.batch.submit(item)

    async def aclose(self) -> None:
        await self.batch.aclose()

    async def _write(self, items: list[NewLead]) -> list[Answer]:
        answers, enqueued = await self.db.run_unit(lambda c: self._unit(c, items))
        if enqueued:
            self.queue.wake()
        return answers

    def _unit(
        self, connection: SyncConnection, items: Sequence[NewLead]
    ) -> tuple[list[Answer], bool]:
        with Session(bind=connection, expire_on_commit=False, autoflush=False) as session:
            unit = _Unit(connection, session, LeadIntakeRepository(session))
            answers = [self._one(unit, item) for item in items]
            session.flush()
            return answers, unit.enqueued

    def _one(self, unit: _Unit, item: NewLead) -> Answer:
        session, repo = unit.session, unit.repo
        owner, body = item.owner, item.body
        if item.idempotency_key is not None:
            first = repo.claim_key(owner, item.idempotency_key, item.request_hash)
            if first is not None:
                return replay(first, item.request_hash)
        status, lead = 201, None
        if body.external_id:
            lead = repo.by_external_id(owner, body.external_id)
            status = 200 if lead is not None else 201
        contact: Contact | None = None
        if lead is None:
            if item.resolved is None:  # the external_id's lead has gone since (it never does)
                raise ServiceError(
                    "the lead changed meanwhile: send the request again", status_code=409
                )
            lead, contact = self._insert_lead(unit, item, item.resolved)
            if lead is None:  # another process stored this external_id first
                lead = repo.by_external_id(owner, body.external_id or "")
                status = 200
            else:
                session.add(
                    audit_entry(
                        actor=item.actor,
                        action="lead.create",
                        success=True,
                        owner=owner,
                        connection_id=item.connection_id,
                        message=f"lead {lead.id} accepted",
                        details={"lead": lead.id, "external_id": lead.external_id},
                    )
                )
        if lead is None:
            raise ServiceError(
                "the lead changed meanwhile: send the request again", status_code=409
            )
        if status == 200:
            contact = repo.main_contact(lead.id)
        answer = lead_out(
            lead, contact=contact, catalogue=item.catalogue, connection=item.connection_status
        )
        if item.idempotency_key is not None:
            repo.answer_key(owner, item.idempotency_key, status, answer)
            session.flush()
        return status, answer, False

    def _insert_lead(
        self, unit: _Unit, item: NewLead, resolved: Resolved
    ) -> tuple[Lead | None, Contact | None]:
        session, repo = unit.session, unit.repo
        body = item.body
        create_key = JobQueue.new_idempotency_key()
        lead = Lead(
            owner=item.owner,
            connection_id=item.connection_id,
            name=body.name,
            name_folded=fold(body.name),
            price=body.price,
            pipeline_id=resolved.pipeline_id,
            status_id=resolved.status_id,
            responsible_user_id=body.responsible_user_id,
            custom_fields=[f for f in resolved.custom_fields or [] if f["values"] is not None],
            tags=list(dict.fromkeys(body.tags or [])),
            external_id=body.external_id,
            sync_state="pending",
            version=1,
            dirty={},
            unresolved=resolved.unresolved,
            create_key=create_key,
        )
        if not repo.add_new(lead):
            return None, None
        contact = None
        given = body.contact
        if given is not None and (given.name or item.email or item.phone):
            contact = self._contact_for_lead(unit, item, given)
            session.add(LeadContact(lead_id=lead.id, contact_id=contact.id, is_main=True))
        unit.enqueued |= self.queue.enqueue_in(
            unit.connection,
            kind=kinds.LEAD_CREATE,
            payload={"lead_id": lead.id},
            owner=lead.owner,
            connection_id=lead.connection_id,
            # A row's jobs run one at a time, in order: its update never overtakes its create.
            ordering_key=f"lead:{lead.id}",
            idempotency_key=create_key,
        )
        return lead, contact

    def _contact_for_lead(self, unit: _Unit, item: NewLead, given: ContactIn) -> Contact:
        """The connection's contact with this e-mail or phone (what it lacked added to it), or
        a new one, pushed with the lead."""
        session, repo = unit.session, unit.repo
        email, phone = item.email, item.phone
        found = repo.duplicate_of(item.connection_id, email=email, phone=phone)
        if found is None:
            contact = Contact(
                owner=item.owner,
                connection_id=item.connection_id,
                name=given.name,
                name_folded=fold(given.name),
                email=email,
                phone=phone,
                emails=[email] if email else [],
                phones=[phone] if phone else [],
                tags=[],
                sync_state="pending",
                version=1,
                dirty={},
            )
            session.add(contact)
            session.flush()  # the next lead of this unit with this e-mail finds it
            return contact
        changed = merge_contact(found, name=given.name, email=email, phone=phone, primary=False)
        if changed and found.amo_id is not None:
            mark_dirty(found, changed)
            session.flush()
            unit.enqueued |= self.queue.enqueue_in(
                unit.connection,
                kind=kinds.CONTACT_UPDATE,
                payload={"contact_id": found.id},
                owner=found.owner,
                connection_id=found.connection_id,
                ordering_key=f"contact:{found.id}",
                dedup_key=kinds.update_dedup_key(kinds.CONTACT_UPDATE, found.id),
            )
        session.flush()
        return found
