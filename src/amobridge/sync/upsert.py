"""amoCRM's leads and contacts, as its API lists them, written into the mirror inside the
caller's unit of work (one page of an import or a catch-up).

**amoCRM's ``updated_at`` decides.** An entity older than what the mirror holds
(``amo_updated_at``) changes nothing (*stale*): a page read before a webhook or a push never
overwrites what they stored. Otherwise each field is compared with the mirror; a field changed
locally and not pushed yet (``dirty``) keeps the local value when the local change is newer
than amoCRM's ``updated_at`` — it stays dirty, the row stays ``pending`` and its update job is
queued (again, if it had none) — and takes amoCRM's value when amoCRM's change is newer (the
field is no longer dirty). Nothing written here is marked dirty, so nothing read from amoCRM is
pushed back to it.

Entities the mirror does not know are added (``synced``), unless they are its own rows whose
create has not stored the amoCRM id yet: those carry their create key in the push's marker
field (``AMOBRIDGE_REF``) and are adopted. A lead's contacts (``with=contacts``) become its
links to the mirror's contacts; links to contacts amoCRM no longer lists are dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncSession

from amobridge.amo.models.contacts import Contact as AmoContact
from amobridge.amo.models.custom_fields import CustomFieldValue
from amobridge.amo.models.leads import Lead as AmoLead
from amobridge.amo.phones import normalize_email, normalize_phone
from amobridge.storage.tables import Contact, Lead, LeadContact, new_id, utcnow
from amobridge.sync import kinds
from amobridge.sync.repository import ContactRepository, ImportRepository, LeadRepository
from amobridge.sync.service import Queue
from amobridge.sync.views import fold

MARKER_CODE = "AMOBRIDGE_REF"  # the push's marker field (catalogue.py): never mirrored
MAX_TEXT = 10_000


@dataclass
class PageCounts:
    """What one page did."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    stale: int = 0
    kept_local: int = 0  # rows whose newer local change won and is pushed again

    def add(self, other: PageCounts) -> None:
        for name in ("created", "updated", "unchanged", "stale", "kept_local"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def public(self) -> dict[str, int]:
        return {
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "stale": self.stale,
            "kept_local": self.kept_local,
        }


def amo_time(value: int | None) -> datetime | None:
    if value is None or value <= 0:
        return None
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _clean(value: str | None) -> str | None:
    return None if value is None else value.replace("\x00", "")[:MAX_TEXT]


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "" if value is None else str(value).strip()


def _values_key(values: Iterable[dict[str, Any]]) -> tuple[tuple[str, str], ...]:
    return tuple((_text(v.get("enum_id")), _text(v.get("value"))) for v in values)


def _is_marker(item: CustomFieldValue, marker_id: int | None) -> bool:
    return (item.field_code or "").upper() == MARKER_CODE or (
        marker_id is not None and item.field_id == marker_id
    )


def mirror_fields(
    values: Sequence[CustomFieldValue], marker_id: int | None
) -> dict[int, dict[str, Any]]:
    """An entity's custom field values in the mirror's shape, by field id (marker left out)."""
    out: dict[int, dict[str, Any]] = {}
    for item in values:
        if item.field_id is None or _is_marker(item, marker_id):
            continue
        found: list[dict[str, Any]] = []
        for value in item.values:
            entry: dict[str, Any] = {"value": value.value}
            if value.enum_id is not None:
                entry["enum_id"] = value.enum_id
            found.append(entry)
        out[item.field_id] = {
            "field_id": item.field_id,
            "field_name": _clean(item.field_name),
            "values": found,
        }
    return out


def marker_of(values: Sequence[CustomFieldValue], marker_id: int | None) -> str | None:
    for item in values:
        if _is_marker(item, marker_id):
            first = item.first
            return str(first) if first else None
    return None


def _tags(entity: AmoLead | AmoContact) -> list[str]:
    return list(dict.fromkeys((_clean(t.name) or "")[:255] for t in entity.tags if t.name))


class _Writer:
    """amoCRM's values into one row, field by field (the module docstring's rule)."""

    def __init__(self, row: Lead | Contact, version: datetime | None) -> None:
        self.row = row
        self.version = version
        self.dirty = dict(row.dirty or {})
        self.changed: list[str] = []
        self.kept: list[str] = []

    def local_wins(self, key: str) -> bool:
        if key not in self.dirty:
            return False
        local = self.row.local_updated_at
        if self.version is None or (local is not None and local > self.version):
            self.kept.append(key)
            return True
        return False

    def set(self, name: str, value: Any, *, same: bool, key: str | None = None) -> bool:
        dirty_key = key or name
        if same:
            return False
        if self.local_wins(dirty_key):
            return False
        setattr(self.row, name, value)
        self.dirty.pop(dirty_key, None)
        self.changed.append(name)
        return True

    def scalar(self, name: str, value: Any) -> None:
        if value is not None:
            self.set(name, value, same=getattr(self.row, name) == value)

    def custom_fields(self, given: dict[int, dict[str, Any]]) -> None:
        assert isinstance(self.row, Lead)
        current = {int(item["field_id"]): item for item in self.row.custom_fields or []}
        merged: dict[int, dict[str, Any]] = {}
        touched = False
        for field_id in dict.fromkeys([*current, *given]):
            ours, theirs = current.get(field_id), given.get(field_id)
            if (
                ours is not None
                and theirs is not None
                and _values_key(ours["values"]) == _values_key(theirs["values"])
            ):
                merged[field_id] = ours
                continue
            if self.local_wins(f"cf:{field_id}"):
                if ours is not None:
                    merged[field_id] = ours
                continue
            touched = True
            self.dirty.pop(f"cf:{field_id}", None)
            if theirs is not None:
                merged[field_id] = theirs
        if touched:
            self.row.custom_fields = list(merged.values())
            self.changed.append("custom_fields")

    def finish(self) -> list[str]:
        if self.dirty != dict(self.row.dirty or {}):
            self.row.dirty = self.dirty
        return self.changed


@dataclass
class MirrorUpsert:
    """Writes pages of amoCRM entities into one connection's mirror."""

    phone_region: str
    queue: Queue

    async def contacts(
        self,
        session: AsyncSession,
        *,
        connection_id: str,
        owner: str,
        items: Sequence[AmoContact],
        marker_id: int | None,
    ) -> PageCounts:
        counts = PageCounts()
        repo = ContactRepository(session)
        imports = ImportRepository(session)
        rows = await repo.by_amo_ids(connection_id, [i.id for i in items], for_update=True)
        markers = {i.id: marker_of(i.custom_fields_values, marker_id) for i in items}
        waiting = await imports.contacts_awaiting_create(
            connection_id, [m for m in markers.values() if m]
        )
        fresh: list[dict[str, Any]] = []
        for item in items:
            emails = [e for e in map(normalize_email, item.emails) if e and len(e) <= 254]
            phones = [p for p in (normalize_phone(v, self.phone_region) for v in item.phones) if p]
            emails, phones = list(dict.fromkeys(emails)), list(dict.fromkeys(phones))
            version = amo_time(item.updated_at)
            row = rows.get(item.id)
            if row is None:
                marker = markers[item.id]
                row = waiting.pop(marker, None) if marker else None
                if row is None:
                    fresh.append(_new_contact(connection_id, owner, item, version, emails, phones))
                    counts.created += 1
                    continue
                row.amo_id = item.id  # our own create, come back before its push stored the id
            if _is_stale(row.amo_updated_at, version):
                counts.stale += 1
                continue
            writer = _Writer(row, version)
            name = _clean(item.name)
            if name is not None and writer.set("name", name, same=name == row.name):
                row.name_folded = fold(name)
            if writer.set("emails", emails, same=set(emails) == set(row.emails or [])):
                row.email = emails[0] if emails else None
            if writer.set("phones", phones, same=set(phones) == set(row.phones or [])):
                row.phone = phones[0] if phones else None
            tags = _tags(item)
            writer.set("tags", tags, same=set(tags) == set(row.tags or []))
            if row.deleted:
                row.deleted = False
                writer.changed.append("deleted")
            await self._settle(session, "contacts", row, writer, version, counts)
        await repo.flush()
        await imports.insert_rows(Contact, fresh)
        return counts

    async def leads(
        self,
        session: AsyncSession,
        *,
        connection_id: str,
        owner: str,
        items: Sequence[AmoLead],
        marker_id: int | None,
    ) -> PageCounts:
        counts = PageCounts()
        repo = LeadRepository(session)
        rows = await repo.by_amo_ids(connection_id, [i.id for i in items], for_update=True)
        markers = {i.id: marker_of(i.custom_fields_values, marker_id) for i in items}
        waiting = await repo.awaiting_create(connection_id, [m for m in markers.values() if m])
        fresh: list[dict[str, Any]] = []
        linked: list[tuple[str, AmoLead, bool]] = []  # lead id, its entity, whether it is new
        for item in items:
            version = amo_time(item.updated_at)
            row = rows.get(item.id)
            if row is None:
                marker = markers[item.id]
                row = waiting.pop(marker, None) if marker else None
                if row is None:
                    values = _new_lead(connection_id, owner, item, version, marker_id)
                    fresh.append(values)
                    counts.created += 1
                    linked.append((values["id"], item, True))
                    continue
                row.amo_id = item.id
            if _is_stale(row.amo_updated_at, version):
                counts.stale += 1
                continue
            writer = _Writer(row, version)
            name = _clean(item.name)
            if name is not None and writer.set("name", name, same=name == row.name):
                row.name_folded = fold(name)
            writer.scalar("price", item.price)
            writer.scalar("pipeline_id", item.pipeline_id)
            writer.scalar("status_id", item.status_id)
            writer.scalar("responsible_user_id", item.responsible_user_id)
            writer.custom_fields(mirror_fields(item.custom_fields_values, marker_id))
            tags = _tags(item)
            writer.set("tags", tags, same=set(tags) == set(row.tags or []))
            if row.deleted:
                row.deleted = False
                writer.changed.append("deleted")
            await self._settle(session, "leads", row, writer, version, counts)
            linked.append((row.id, item, False))
        await repo.flush()
        await ImportRepository(session).insert_rows(Lead, fresh)
        await self._link(session, connection_id, linked)
        return counts

    async def _settle(
        self,
        session: AsyncSession,
        entity: Literal["leads", "contacts"],
        row: Lead | Contact,
        writer: _Writer,
        version: datetime | None,
        counts: PageCounts,
    ) -> None:
        changed = writer.finish()
        if version is not None and (row.amo_updated_at is None or version > row.amo_updated_at):
            row.amo_updated_at = version
        if row.dirty:
            if writer.kept:
                counts.kept_local += 1
                await self._push_again(session, entity, row)
        elif row.sync_state != "synced" and row.amo_id is not None:
            row.sync_state, row.last_error = "synced", None
        if changed:
            row.synced_at = utcnow()
            counts.updated += 1
        else:
            counts.unchanged += 1

    async def _push_again(
        self, session: AsyncSession, entity: Literal["leads", "contacts"], row: Lead | Contact
    ) -> None:
        """The local change won: it is pushed (by the row's waiting update job, or a new one)."""
        row.sync_state = "pending"
        kind = kinds.LEAD_UPDATE if entity == "leads" else kinds.CONTACT_UPDATE
        name = "lead" if entity == "leads" else "contact"
        await self.queue.enqueue(
            session,
            kind=kind,
            payload={f"{name}_id": row.id},
            owner=row.owner,
            connection_id=row.connection_id,
            ordering_key=f"{name}:{row.id}",
            dedup_key=kinds.update_dedup_key(kind, row.id),
        )

    async def _link(
        self,
        session: AsyncSession,
        connection_id: str,
        linked: list[tuple[str, AmoLead, bool]],
    ) -> None:
        """Each lead's links to the mirror's contacts as amoCRM lists them."""
        wanted_ids = [c for _, item, _ in linked for c in item.contact_ids]
        existing = [lead_id for lead_id, _, new in linked if not new]
        if not wanted_ids and not existing:
            return
        contacts = await ContactRepository(session).by_amo_ids(connection_id, wanted_ids)
        imports = ImportRepository(session)
        current: dict[str, dict[str, tuple[bool, int | None]]] = {}
        for link in await imports.lead_links(existing):
            current.setdefault(link.lead_id, {})[link.contact_id] = (
                link.is_main,
                link.contact_amo_id,
            )
        leads = LeadRepository(session)
        new: list[LeadContact] = []
        for lead_id, item, _ in linked:
            main = item.main_contact_id
            wanted = {
                contacts[c].id: c == main for c in dict.fromkeys(item.contact_ids) if c in contacts
            }
            have = current.get(lead_id, {})
            for contact_id, (is_main, amo_id) in have.items():
                # A contact the mirror has not pushed yet stays linked: amoCRM cannot list it.
                if contact_id not in wanted and amo_id is not None:
                    await leads.unlink(lead_id, contact_id)
                elif contact_id in wanted and wanted[contact_id] != is_main:
                    await imports.set_main(lead_id, contact_id, wanted[contact_id])
                elif contact_id not in wanted and is_main and any(wanted.values()):
                    await imports.set_main(lead_id, contact_id, False)
            new.extend(
                LeadContact(lead_id=lead_id, contact_id=contact_id, is_main=is_main)
                for contact_id, is_main in wanted.items()
                if contact_id not in have
            )
        await imports.add_links(new)


def _is_stale(stored: datetime | None, version: datetime | None) -> bool:
    if stored is None:
        return False
    return version is None or version < stored


def _new_lead(
    connection_id: str, owner: str, item: AmoLead, version: datetime | None, marker_id: int | None
) -> dict[str, Any]:
    """A ``leads`` row for an entity the mirror does not have (every column given: it is
    inserted in bulk, without the ORM's defaults)."""
    now = utcnow()
    name = _clean(item.name)
    return {
        **_new_row(connection_id, owner, item, version, name, now),
        "price": item.price,
        "pipeline_id": item.pipeline_id,
        "status_id": item.status_id,
        "responsible_user_id": item.responsible_user_id,
        "custom_fields": list(mirror_fields(item.custom_fields_values, marker_id).values()),
        "unresolved": None,
    }


def _new_contact(
    connection_id: str,
    owner: str,
    item: AmoContact,
    version: datetime | None,
    emails: list[str],
    phones: list[str],
) -> dict[str, Any]:
    now = utcnow()
    return {
        **_new_row(connection_id, owner, item, version, _clean(item.name), now),
        "email": emails[0] if emails else None,
        "phone": phones[0] if phones else None,
        "emails": emails,
        "phones": phones,
    }


def _new_row(
    connection_id: str,
    owner: str,
    item: AmoLead | AmoContact,
    version: datetime | None,
    name: str | None,
    now: datetime,
) -> dict[str, Any]:
    return {
        "id": new_id(),
        "owner": owner,
        "connection_id": connection_id,
        "amo_id": item.id,
        "name": name,
        "name_folded": fold(name),
        "tags": _tags(item),
        "external_id": None,
        "sync_state": "synced",
        "last_error": None,
        "create_key": None,
        "pushed_at": None,
        "version": 1,
        "dirty": {},
        "amo_updated_at": version,
        "synced_at": now,
        "local_updated_at": now,
        "created_at": amo_time(item.created_at) or now,
        "updated_at": now,
        "deleted": False,
    }
