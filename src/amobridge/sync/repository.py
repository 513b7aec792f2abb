"""All SQL of the lead mirror: leads, contacts, their links, Idempotency-Keys and the cached
catalogue. Repositories never commit (the unit of work does).

Owner isolation (invariant 6): every read a caller can trigger names the owner
(``for_owner``, ``page``, ``by_external_id``); the id-based reads (``by_ids``) are for the push
handlers, which act for the connection their job belongs to.

Pages are ordered by ``(created_at, id)`` newest first, or with ``updated_since`` by
``(updated_at, id)`` oldest first; the cursor is the last row's key, so rows inserted meanwhile
never shift a page (they land before the first page, or after the last).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, cast

from sqlalchemy import Table, and_, delete, exists, func, insert, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import aliased

from amobridge.errors import ServiceError
from amobridge.storage.repository import Repository, dialect_insert
from amobridge.storage.tables import (
    AmoCatalogue,
    Connection,
    Contact,
    IdempotencyKey,
    Import,
    Lead,
    LeadContact,
)

Order = Literal["created", "updated"]


@dataclass(frozen=True)
class Cursor:
    """Where a page ends: the last row's ordering key, and which ordering it belongs to."""

    order: Order
    at: datetime
    id: str

    def encode(self) -> str:
        raw = json.dumps([self.order[0], self.at.isoformat(), self.id], separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, value: str, order: Order) -> Cursor:
        try:
            padded = value + "=" * (-len(value) % 4)
            kind, at, id_ = json.loads(base64.urlsafe_b64decode(padded.encode()))
            when = datetime.fromisoformat(at)
            if not isinstance(id_, str) or when.tzinfo is None or kind != order[0]:
                raise ValueError("not this listing's cursor")
        except (ValueError, TypeError, UnicodeDecodeError):
            raise ServiceError(
                "cursor is not a next_cursor of this listing (with the same updated_since): "
                "start again without it",
                code="invalid_cursor",
            ) from None
        return cls(order, when, id_)


@dataclass(frozen=True)
class Search:
    """``q`` prepared for the columns it is compared with."""

    folded: str  # the name, casefolded with ё→е
    email: str  # lower-cased, for the contact's e-mail
    phone: str | None  # E.164, when ``q`` is a phone number
    digits: str | None  # five or more digits: part of a phone


def _page_filters(model: Any, cursor: Cursor | None, order: Order) -> list[Any]:
    if cursor is None:
        return []
    column = model.created_at if order == "created" else model.updated_at
    if order == "created":  # newest first
        return [or_(column < cursor.at, and_(column == cursor.at, model.id < cursor.id))]
    return [or_(column > cursor.at, and_(column == cursor.at, model.id > cursor.id))]


def _ordering(model: Any, order: Order) -> list[Any]:
    if order == "created":
        return [model.created_at.desc(), model.id.desc()]
    return [model.updated_at.asc(), model.id.asc()]


def _contact_matches(search: Search) -> Any:
    conditions = [Contact.name_folded.contains(search.folded, autoescape=True)]
    if search.email:
        conditions.append(Contact.email.contains(search.email, autoescape=True))
    if search.phone:
        conditions.append(Contact.phone == search.phone)
    if search.digits:
        conditions.append(Contact.phone.contains(search.digits, autoescape=True))
    return or_(*conditions)


class LeadRepository(Repository[Lead]):
    model = Lead

    # --- owner-scoped ----------------------------------------------------------------------
    async def for_owner(self, owner: str, lead_id: str, *, for_update: bool = False) -> Lead | None:
        query = select(Lead).where(Lead.owner == owner, Lead.id == lead_id, Lead.deleted.is_(False))
        if for_update:
            query = query.with_for_update()
        return await self.session.scalar(query)

    @staticmethod
    def external_id_query(owner: str, external_id: str) -> Any:
        return select(Lead).where(Lead.owner == owner, Lead.external_id == external_id)

    async def by_external_id(self, owner: str, external_id: str) -> Lead | None:
        found: Lead | None = await self.session.scalar(self.external_id_query(owner, external_id))
        return found

    async def page(
        self,
        owner: str,
        *,
        pipeline_ids: Sequence[int] | None = None,
        stages: Sequence[tuple[int, int]] | None = None,
        search: Search | None = None,
        updated_since: datetime | None = None,
        state: str | None = None,
        cursor: Cursor | None = None,
        limit: int = 50,
    ) -> list[Lead]:
        """One page of the owner's leads (``limit + 1`` rows read: the extra says there is
        more). ``stages``: (pipeline id, status id) pairs, any of which may match."""
        order: Order = "updated" if updated_since is not None else "created"
        query = select(Lead).where(Lead.owner == owner, Lead.deleted.is_(False))
        if pipeline_ids is not None:
            query = query.where(Lead.pipeline_id.in_(list(pipeline_ids)))
        if stages is not None:
            query = query.where(
                or_(*(and_(Lead.pipeline_id == p, Lead.status_id == s) for p, s in stages))
                if stages
                else Lead.id.is_(None)
            )
        if state is not None:
            query = query.where(Lead.sync_state == state)
        if updated_since is not None:
            query = query.where(Lead.updated_at >= updated_since)
        if search is not None:
            linked = exists(
                select(LeadContact.lead_id)
                .join(Contact, Contact.id == LeadContact.contact_id)
                .where(LeadContact.lead_id == Lead.id, _contact_matches(search))
            )
            query = query.where(
                or_(Lead.name_folded.contains(search.folded, autoescape=True), linked)
            )
        query = query.where(*_page_filters(Lead, cursor, order))
        query = query.order_by(*_ordering(Lead, order)).limit(limit + 1)
        return list(await self.session.scalars(query))

    # --- by id: the push handlers -----------------------------------------------------------
    async def by_ids(self, ids: Iterable[str], *, for_update: bool = False) -> dict[str, Lead]:
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return {}
        query = select(Lead).where(Lead.id.in_(wanted))
        if for_update:
            query = query.with_for_update()
        return {row.id: row for row in await self.session.scalars(query)}

    async def add_new(self, lead: Lead) -> Lead | None:
        """Insert ``lead``; None when its ``external_id`` is taken by then (a concurrent POST
        won the race: the caller answers with that lead)."""
        try:
            async with self.session.begin_nested():
                self.session.add(lead)
                await self.session.flush()
        except IntegrityError:
            return None
        return lead

    # --- by amoCRM id: the webhook inbox ------------------------------------------------------
    async def by_amo_ids(
        self, connection_id: str, amo_ids: Iterable[int], *, for_update: bool = False
    ) -> dict[int, Lead]:
        wanted = sorted(set(amo_ids))
        if not wanted:
            return {}
        query = select(Lead).where(Lead.connection_id == connection_id, Lead.amo_id.in_(wanted))
        if for_update:
            query = query.with_for_update()
        return {row.amo_id: row for row in await self.session.scalars(query) if row.amo_id}

    async def awaiting_create(self, connection_id: str, keys: Iterable[str]) -> dict[str, Lead]:
        """The connection's leads not known by amoCRM id yet, by create key (the marker a
        webhook about their create carries)."""
        wanted = sorted(set(keys))
        if not wanted:
            return {}
        rows = await self.session.scalars(
            select(Lead).where(
                Lead.connection_id == connection_id,
                Lead.amo_id.is_(None),
                Lead.create_key.in_(wanted),
            )
        )
        return {row.create_key: row for row in rows if row.create_key}

    async def contact_links(self, contact_id: str) -> dict[str, bool]:
        """The leads linked to ``contact_id``: lead id → whether it is their main contact."""
        rows = await self.session.execute(
            select(LeadContact.lead_id, LeadContact.is_main).where(
                LeadContact.contact_id == contact_id
            )
        )
        return {str(lead_id): bool(main) for lead_id, main in rows}

    async def with_main_contact(self, lead_ids: Iterable[str]) -> set[str]:
        wanted = list(dict.fromkeys(lead_ids))
        if not wanted:
            return set()
        rows = await self.session.scalars(
            select(LeadContact.lead_id).where(
                LeadContact.lead_id.in_(wanted), LeadContact.is_main.is_(True)
            )
        )
        return set(rows)

    async def unlink(self, lead_id: str, contact_id: str) -> None:
        await self.session.execute(
            delete(LeadContact).where(
                LeadContact.lead_id == lead_id, LeadContact.contact_id == contact_id
            )
        )

    # --- contacts of leads ------------------------------------------------------------------
    async def link(self, lead_id: str, contact_id: str, *, is_main: bool = True) -> None:
        if is_main:
            await self.session.execute(
                delete(LeadContact).where(
                    LeadContact.lead_id == lead_id, LeadContact.is_main.is_(True)
                )
            )
        self.session.add(LeadContact(lead_id=lead_id, contact_id=contact_id, is_main=is_main))
        await self.session.flush()

    async def main_contacts(self, lead_ids: Iterable[str]) -> dict[str, Contact]:
        """The main contact of each of ``lead_ids`` that has one."""
        wanted = list(dict.fromkeys(lead_ids))
        if not wanted:
            return {}
        rows = await self.session.execute(
            select(LeadContact.lead_id, Contact)
            .join(Contact, Contact.id == LeadContact.contact_id)
            .where(LeadContact.lead_id.in_(wanted), LeadContact.is_main.is_(True))
        )
        return {lead_id: contact for lead_id, contact in rows}


class ContactRepository(Repository[Contact]):
    model = Contact

    # --- owner-scoped ----------------------------------------------------------------------
    async def for_owner(
        self, owner: str, contact_id: str, *, for_update: bool = False
    ) -> Contact | None:
        query = select(Contact).where(
            Contact.owner == owner, Contact.id == contact_id, Contact.deleted.is_(False)
        )
        if for_update:
            query = query.with_for_update()
        return await self.session.scalar(query)

    async def by_external_id(self, owner: str, external_id: str) -> Contact | None:
        return await self.session.scalar(
            select(Contact).where(Contact.owner == owner, Contact.external_id == external_id)
        )

    @staticmethod
    def duplicate_queries(connection_id: str, *, email: str | None, phone: str | None) -> list[Any]:
        """The look-ups :meth:`duplicate_of` tries in turn: by e-mail, then by phone."""
        return [
            select(Contact)
            .where(
                Contact.connection_id == connection_id,
                column == value,
                Contact.deleted.is_(False),
            )
            .order_by(Contact.created_at, Contact.id)
            .limit(1)
            for column, value in ((Contact.email, email), (Contact.phone, phone))
            if value is not None
        ]

    async def duplicate_of(
        self, connection_id: str, *, email: str | None, phone: str | None
    ) -> Contact | None:
        """The connection's contact with this e-mail (lower-cased) or, failing that, this phone
        (E.164): the oldest, so every duplicate leads to the same one."""
        for query in self.duplicate_queries(connection_id, email=email, phone=phone):
            found: Contact | None = await self.session.scalar(query)
            if found is not None:
                return found
        return None

    async def by_amo_ids(
        self, connection_id: str, amo_ids: Iterable[int], *, for_update: bool = False
    ) -> dict[int, Contact]:
        wanted = sorted(set(amo_ids))
        if not wanted:
            return {}
        query = select(Contact).where(
            Contact.connection_id == connection_id, Contact.amo_id.in_(wanted)
        )
        if for_update:
            query = query.with_for_update()
        return {row.amo_id: row for row in await self.session.scalars(query) if row.amo_id}

    async def awaiting_create(
        self, connection_id: str, *, emails: Sequence[str], phones: Sequence[str]
    ) -> Contact | None:
        """The connection's oldest contact not known by amoCRM id yet with one of these
        e-mails or phones (a contact a lead's create is bringing to amoCRM right now)."""
        conditions = []
        if emails:
            conditions.append(Contact.email.in_(list(emails)))
        if phones:
            conditions.append(Contact.phone.in_(list(phones)))
        if not conditions:
            return None
        return await self.session.scalar(
            select(Contact)
            .where(
                Contact.connection_id == connection_id,
                Contact.amo_id.is_(None),
                Contact.deleted.is_(False),
                or_(*conditions),
            )
            .order_by(Contact.created_at, Contact.id)
            .limit(1)
        )

    async def by_amo_id(self, connection_id: str, amo_id: int) -> Contact | None:
        return await self.session.scalar(
            select(Contact).where(Contact.connection_id == connection_id, Contact.amo_id == amo_id)
        )

    async def page(
        self,
        owner: str,
        *,
        search: Search | None = None,
        cursor: Cursor | None = None,
        limit: int = 50,
    ) -> list[Contact]:
        query = select(Contact).where(Contact.owner == owner, Contact.deleted.is_(False))
        if search is not None:
            query = query.where(_contact_matches(search))
        query = query.where(*_page_filters(Contact, cursor, "created"))
        query = query.order_by(*_ordering(Contact, "created")).limit(limit + 1)
        return list(await self.session.scalars(query))

    # --- by id: the push handlers -----------------------------------------------------------
    async def by_ids(self, ids: Iterable[str], *, for_update: bool = False) -> dict[str, Contact]:
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return {}
        query = select(Contact).where(Contact.id.in_(wanted))
        if for_update:
            query = query.with_for_update()
        return {row.id: row for row in await self.session.scalars(query)}

    async def add_new(self, contact: Contact) -> Contact | None:
        """Insert ``contact``; None when its ``external_id`` is taken by then."""
        try:
            async with self.session.begin_nested():
                self.session.add(contact)
                await self.session.flush()
        except IntegrityError:
            return None
        return contact


class IdempotencyRepository(Repository[IdempotencyKey]):
    model = IdempotencyKey

    async def find(self, owner: str, key: str) -> IdempotencyKey | None:
        return await self.session.scalar(
            select(IdempotencyKey).where(IdempotencyKey.owner == owner, IdempotencyKey.key == key)
        )

    @staticmethod
    def claim_statement(
        dialect: str, owner: str, key: str, request_hash: str, *, created_at: datetime
    ) -> Any:
        """The INSERT that takes ``key`` (nothing when another request took it first)."""
        insert: Any = dialect_insert(dialect, IdempotencyKey)  # both know on_conflict_do_nothing
        return (
            insert.values(owner=owner, key=key, request_hash=request_hash, created_at=created_at)
            .on_conflict_do_nothing(index_elements=["owner", "key"])
            .returning(IdempotencyKey.key)
        )

    async def claim(self, owner: str, key: str, request_hash: str) -> IdempotencyKey | None:
        """Take ``key`` for this request, or return the row of the request that took it first.

        On PostgreSQL a concurrent request with the same key waits here until the first one's
        unit of work ends, then finds its row (with its answer); on SQLite the write lock
        already serialises them."""
        taken = await self.session.scalar(
            self.claim_statement(
                self.dialect, owner, key, request_hash, created_at=await self.db_now()
            )
        )
        if taken is not None:
            return None
        return await self.find(owner, key)

    async def answer(
        self, owner: str, key: str, status_code: int, response: dict[str, Any]
    ) -> None:
        row = await self.find(owner, key)
        if row is not None:
            row.status_code = status_code
            row.response = response
            await self.flush()

    async def purge(self, *, older_than: datetime) -> int:
        result = await self.session.execute(
            delete(IdempotencyKey).where(IdempotencyKey.created_at < older_than)
        )
        return int(getattr(result, "rowcount", 0) or 0)


class CatalogueRepository(Repository[AmoCatalogue]):
    model = AmoCatalogue

    async def load(self, connection_id: str) -> dict[str, AmoCatalogue]:
        rows = await self.session.scalars(
            select(AmoCatalogue).where(AmoCatalogue.connection_id == connection_id)
        )
        return {row.kind: row for row in rows}

    async def save(
        self, connection_id: str, kind: str, data: list[Any], fetched_at: datetime
    ) -> None:
        insert: Any = self.insert()  # the dialect's Insert: both know on_conflict_do_update
        statement = insert.values(
            connection_id=connection_id, kind=kind, data=data, fetched_at=fetched_at
        )
        await self.session.execute(
            statement.on_conflict_do_update(
                index_elements=["connection_id", "kind"],
                set_={"data": statement.excluded.data, "fetched_at": statement.excluded.fetched_at},
            )
        )

    async def forget(self, connection_id: str) -> None:
        """Drop the connection's cache (read again at its next use)."""
        await self.session.execute(
            delete(AmoCatalogue).where(AmoCatalogue.connection_id == connection_id)
        )


# The states of an import that is not over: one at a time per connection and kind.
IMPORT_UNFINISHED = ("queued", "running", "waiting")


@dataclass(frozen=True)
class LeadLink:
    lead_id: str
    contact_id: str
    is_main: bool
    contact_amo_id: int | None


class ImportRepository(Repository[Import]):
    """Imports and catch-ups (``sync/imports.py``), and the bulk reads their pages need."""

    model = Import

    async def for_owner(self, owner: str, import_id: str) -> Import | None:
        return await self.session.scalar(
            select(Import).where(Import.owner == owner, Import.id == import_id)
        )

    async def latest(self, connection_id: str, kind: str) -> Import | None:
        """The connection's newest run of ``kind``."""
        return await self.session.scalar(
            select(Import)
            .where(Import.connection_id == connection_id, Import.kind == kind)
            .order_by(Import.created_at.desc(), Import.id.desc())
            .limit(1)
        )

    async def imported(self, connection_id: str) -> bool:
        """Whether a full import of the connection's account has succeeded: the mirror then
        holds every contact amoCRM had, and webhooks and catch-ups keep adding the new ones."""
        found = await self.session.scalar(
            select(Import.id)
            .where(
                Import.connection_id == connection_id,
                Import.kind == "import",
                Import.state == "succeeded",
            )
            .limit(1)
        )
        return found is not None

    async def mark(self, connection_id: str) -> datetime | None:
        """The newest mark of the connection's succeeded runs (full or catch-up): what changed
        in amoCRM before it is in the mirror."""
        value = await self.session.scalar(
            select(func.max(Import.started_at)).where(
                Import.connection_id == connection_id, Import.state == "succeeded"
            )
        )
        return value if isinstance(value, datetime) else None

    async def catchup_due(
        self, *, finished_before: datetime, limit: int
    ) -> list[tuple[str, str, datetime]]:
        """Active connections whose last catch-up finished before ``finished_before`` (or that
        never had one), with no catch-up and no import under way: ``(connection id, owner,
        connected at)``."""
        recent = exists().where(
            Import.connection_id == Connection.id,
            or_(
                Import.state.in_(IMPORT_UNFINISHED),
                and_(Import.kind == "catchup", Import.finished_at >= finished_before),
            ),
        )
        rows = await self.session.execute(
            select(Connection.id, Connection.owner, Connection.created_at)
            .where(Connection.status == "active", ~recent)
            .order_by(Connection.id)
            .limit(limit)
        )
        return [(str(cid), str(owner), created) for cid, owner, created in rows]

    async def purge_catchups(self, *, finished_before: datetime) -> int:
        """Drop finished catch-ups older than ``finished_before``, keeping each connection's
        newest succeeded run (it holds the connection's mark)."""
        newer = aliased(Import)
        kept = exists().where(
            newer.connection_id == Import.connection_id,
            newer.state == "succeeded",
            newer.started_at > Import.started_at,
        )
        result = await self.session.execute(
            delete(Import).where(
                Import.kind == "catchup",
                Import.finished_at.is_not(None),
                Import.finished_at < finished_before,
                kept,
            )
        )
        return int(getattr(result, "rowcount", 0) or 0)

    # --- the bulk reads of one page ----------------------------------------------------------
    async def lead_links(self, lead_ids: Iterable[str]) -> list[LeadLink]:
        wanted = list(dict.fromkeys(lead_ids))
        if not wanted:
            return []
        rows = await self.session.execute(
            select(LeadContact.lead_id, LeadContact.contact_id, LeadContact.is_main, Contact.amo_id)
            .join(Contact, Contact.id == LeadContact.contact_id)
            .where(LeadContact.lead_id.in_(wanted))
        )
        return [
            LeadLink(str(lead), str(contact), bool(main), amo_id)
            for lead, contact, main, amo_id in rows
        ]

    async def contacts_awaiting_create(
        self, connection_id: str, keys: Iterable[str]
    ) -> dict[str, Contact]:
        """The connection's contacts not known by amoCRM id yet, by the marker their create
        carries."""
        wanted = sorted(set(keys))
        if not wanted:
            return {}
        rows = await self.session.scalars(
            select(Contact).where(
                Contact.connection_id == connection_id,
                Contact.amo_id.is_(None),
                Contact.create_key.in_(wanted),
            )
        )
        return {row.create_key: row for row in rows if row.create_key}

    async def set_main(self, lead_id: str, contact_id: str, is_main: bool) -> None:
        row = await self.session.get(LeadContact, (lead_id, contact_id))
        if row is not None:
            row.is_main = is_main

    async def add_links(self, links: Sequence[LeadContact]) -> None:
        if links:
            self.session.add_all(links)
            await self.session.flush()

    async def insert_rows(
        self, model: type[Lead] | type[Contact], rows: list[dict[str, Any]]
    ) -> None:
        """New mirror rows in one multi-row INSERT (an import's page), past the ORM's unit of
        work: each row gives every column."""
        if rows:  # the table, not the entity: Core's executemany, no ORM bookkeeping per row
            table = cast("Table", model.__table__)
            await self.session.execute(insert(table), rows)
