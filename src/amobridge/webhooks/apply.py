"""One parsed delivery applied to the lead mirror, inside the caller's unit of work.

**Order.** amoCRM's ``updated_at`` (else ``last_modified``) orders the changes of an entity: an
event older than what the mirror holds (``amo_updated_at``) is *stale* and changes nothing, so a
redelivery or a retry that overtook a newer change never overwrites it. A delete carries only the
id: it marks the row deleted; only a ``restore`` or ``add`` newer than the row undeletes it.

**Echo suppression.** A change amobridge pushed comes back as a webhook: its ``updated_at`` is the
one the push stored, and its values are the mirror's. Each field is compared with the mirror (in
normalised form: amoCRM sends every value as a string), so such an event changes nothing and is
counted as an *echo* — no field is written, no push is queued, nothing is announced. Nothing a
webhook writes is marked dirty, so nothing applied here is ever pushed back to amoCRM.

**Local changes not pushed yet** (``dirty`` fields): amoCRM's ``updated_at`` decides. A local
change made after the amoCRM change wins (it stays dirty and is pushed); an amoCRM change newer
than the local one replaces it, and the field is no longer dirty.

Leads and contacts the mirror does not know are added (``sync_state`` ``synced``), unless they
are the mirror's own rows whose create has not come back yet: a lead by the marker its create
carries, a contact by its e-mail or phone. Companies, tasks, notes and the rest are not mirrored:
counted as ignored.

**Announced.** Each lead change that reached the mirror (added, changed, moved, deleted, or our
own create come back first) is handed to ``on_lead`` in the same unit of work: the events to
the host app (``amobridge.notify``) are written with it. Echoes and stale events are not.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from amobridge.amo.webhooks import ContactEvent, LeadEvent, WebhookCustomField, WebhookPayload
from amobridge.storage.tables import Contact, Lead, utcnow
from amobridge.sync.repository import ContactRepository, LeadRepository
from amobridge.sync.views import fold

# The push's marker field (see sync/catalogue.py): kept out of the mirror's custom fields.
MARKER_CODE = "AMOBRIDGE_REF"
MARKER_NAME = "amobridge ref"
MAX_CHANGES_LISTED = 50
# (session, lead row, what happened, the fields changed, (pipeline_id, status_id) before): called
# for every lead change applied; "created" (new to the mirror), "adopted" (our own create, whose
# webhook came before the push stored its id), "delete", or amoCRM's action of an update.
LeadListener = Callable[
    [AsyncSession, Lead, str, list[str], tuple[int | None, int | None] | None], Awaitable[None]
]
MAX_BIGINT = 2**63 - 1
MAX_TEXT = 10_000
MAX_EMAIL = 254
MAX_LINKS = 1000
_LEAD_ACTIONS = ("add", "update", "status", "responsible", "restore", "delete")
_CONTACT_ACTIONS = ("add", "update", "responsible", "restore", "delete")


@dataclass
class Outcome:
    """What one delivery did: stored as the delivery's ``result``."""

    applied: int = 0  # events that changed the mirror
    created: int = 0  # of them, rows the mirror did not have
    echo: int = 0  # events that brought nothing new (amobridge's own change, or a repeat)
    stale: int = 0  # events older than what the mirror holds
    ignored: int = 0  # entities the mirror does not keep
    skipped: list[str] = field(default_factory=list)  # items that could not be read
    changes: list[dict[str, Any]] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        return {
            "applied": self.applied,
            "created": self.created,
            "echo": self.echo,
            "stale": self.stale,
            "ignored": self.ignored,
            "skipped": list(self.skipped),
            "changes": list(self.changes),
        }

    def changed(self, entity: str, row: Lead | Contact, action: str, fields: list[str]) -> None:
        self.applied += 1
        if len(self.changes) < MAX_CHANGES_LISTED:
            self.changes.append(
                {
                    "entity": entity,
                    "id": row.id,
                    "amo_id": row.amo_id,
                    "action": action,
                    "fields": fields,
                }
            )


def amo_time(value: int | None) -> datetime | None:
    if value is None or value <= 0:
        return None
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):  # a hostile number of seconds
        return None


def _version(event: LeadEvent | ContactEvent) -> datetime | None:
    return amo_time(event.updated_at or event.last_modified)


# --- values from the internet: what the columns can hold ------------------------------------------


def _int(value: int | None) -> int | None:
    """A BIGINT column's value, or None for a number no amoCRM id or sum can be."""
    return value if value is not None and -MAX_BIGINT <= value <= MAX_BIGINT else None


def _usable_id(value: int | None) -> bool:
    return value is not None and 0 < value <= MAX_BIGINT


def _clean(value: str | None) -> str | None:
    """Text without NUL (PostgreSQL refuses it in text), cut to a sane length."""
    if value is None:
        return None
    return value.replace("\x00", "")[:MAX_TEXT]


# --- values as compared: amoCRM sends strings, the mirror keeps what the host app gave ------------


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "" if value is None else str(value).strip()


def _field_key(values: Iterable[dict[str, Any]]) -> tuple[tuple[str, str], ...]:
    return tuple(
        (_text(item.get("enum_id")), _text(item.get("value")))
        if item.get("enum_id") is not None
        else ("", _text(item.get("value")))
        for item in values
    )


def _is_marker(item: WebhookCustomField) -> bool:
    return (item.code or "").upper() == MARKER_CODE or (item.name or "").strip().lower() == (
        MARKER_NAME
    )


def mirror_fields(fields: list[WebhookCustomField]) -> dict[int, dict[str, Any]]:
    """A webhook's custom fields in the mirror's shape, by field id (the marker left out)."""
    out: dict[int, dict[str, Any]] = {}
    for item in fields:
        if item.id is None or _is_marker(item):
            continue
        values: list[dict[str, Any]] = []
        for value in item.values:
            entry: dict[str, Any] = {"value": _clean(value.value)}
            if isinstance(value.enum, int) and _int(value.enum) is not None:
                entry["enum_id"] = value.enum
            values.append(entry)
        if _int(item.id) is None:
            continue
        out[item.id] = {"field_id": item.id, "field_name": _clean(item.name), "values": values}
    return out


def marker_keys(fields: list[WebhookCustomField]) -> list[str]:
    return [v.value for item in fields if _is_marker(item) for v in item.values if v.value]


def _tag_names(event: LeadEvent | ContactEvent) -> list[str]:
    return list(dict.fromkeys((_clean(tag.name) or "")[:255] for tag in event.tags if tag.name))


class _Writer:
    """Writes amoCRM's values into one row, field by field, the way the module docstring says."""

    def __init__(self, row: Lead | Contact, version: datetime | None) -> None:
        self.row = row
        self.version = version
        self.dirty = dict(row.dirty or {})
        self.changed: list[str] = []

    def _local_wins(self, key: str) -> bool:
        if key not in self.dirty:
            return False
        local = self.row.local_updated_at
        return self.version is None or (local is not None and local > self.version)

    def set(self, name: str, value: Any, *, key: str | None = None, same: bool = False) -> None:
        dirty_key = key or name
        if same or self._local_wins(dirty_key):
            return
        setattr(self.row, name, value)
        self.dirty.pop(dirty_key, None)
        self.changed.append(name)

    def scalar(self, name: str, value: Any) -> None:
        if value is None:
            return
        self.set(name, value, same=getattr(self.row, name) == value)

    def finish(self) -> list[str]:
        if self.dirty != dict(self.row.dirty or {}):
            self.row.dirty = self.dirty
        return self.changed


def _write_custom_fields(writer: _Writer, row: Lead, given: dict[int, dict[str, Any]]) -> None:
    current = {int(item["field_id"]): item for item in row.custom_fields or []}
    merged: dict[int, dict[str, Any]] = {}
    touched = False
    for field_id in dict.fromkeys([*current, *given]):
        ours, theirs = current.get(field_id), given.get(field_id)
        if (
            ours is not None
            and theirs is not None
            and _field_key(ours["values"]) == _field_key(theirs["values"])
        ):
            merged[field_id] = ours
            continue
        if writer._local_wins(f"cf:{field_id}"):
            if ours is not None:
                merged[field_id] = ours
            continue
        touched = True
        writer.dirty.pop(f"cf:{field_id}", None)
        if theirs is not None:
            merged[field_id] = theirs
    if touched:
        row.custom_fields = list(merged.values())
        writer.changed.append("custom_fields")


class MirrorApplier:
    def __init__(self, *, phone_region: str, on_lead: LeadListener | None = None) -> None:
        self.phone_region = phone_region
        self.on_lead = on_lead

    async def _announce(
        self,
        repo: LeadRepository,
        row: Lead,
        action: str,
        changed: list[str],
        before: tuple[int | None, int | None] | None = None,
    ) -> None:
        if self.on_lead is not None:
            await self.on_lead(repo.session, row, action, changed, before)

    async def apply(
        self, session: AsyncSession, *, connection_id: str, owner: str, payload: WebhookPayload
    ) -> Outcome:
        outcome = Outcome()
        leads_repo = LeadRepository(session)
        contacts_repo = ContactRepository(session)
        leads, contacts = payload.leads, payload.contacts
        outcome.ignored = len(payload.events) - len(leads) - len(contacts)
        lead_rows = await leads_repo.by_amo_ids(
            connection_id,
            [e.id for e in leads if e.id is not None and _usable_id(e.id)],
            for_update=True,
        )
        for lead in leads:
            await self._lead(leads_repo, connection_id, owner, lead, lead_rows, outcome)
        contact_rows = await contacts_repo.by_amo_ids(
            connection_id,
            [e.id for e in contacts if e.id is not None and _usable_id(e.id)],
            for_update=True,
        )
        for contact in contacts:
            await self._contact(
                leads_repo, contacts_repo, connection_id, owner, contact, contact_rows, outcome
            )
        return outcome

    # --- leads -----------------------------------------------------------------------------------
    async def _lead(
        self,
        repo: LeadRepository,
        connection_id: str,
        owner: str,
        event: LeadEvent,
        rows: dict[int, Lead],
        outcome: Outcome,
    ) -> None:
        if event.id is None or not _usable_id(event.id):
            outcome.skipped.append(f"leads[{event.action}]: no id")
            return
        if event.action not in _LEAD_ACTIONS:
            outcome.ignored += 1
            return
        row = rows.get(event.id)
        if event.action == "delete":
            if row is not None and not row.deleted:
                row.deleted = True
                outcome.changed("leads", row, "delete", ["deleted"])
                await self._announce(repo, row, "delete", ["deleted"])
            else:
                outcome.echo += 1
            return
        version = _version(event)
        if row is None:
            keys = marker_keys(event.custom_fields)
            row = (await repo.awaiting_create(connection_id, keys)).get(keys[0]) if keys else None
            if row is None:
                row = _new_lead(connection_id, owner, event, version)
                repo.add(row)
                await repo.flush()
                rows[event.id] = row
                outcome.created += 1
                outcome.changed("leads", row, event.action, ["created"])
                await self._announce(repo, row, "created", ["created"])
                return
            row.amo_id = event.id  # our own create, come back before its push stored the id
            await self._announce(repo, row, "adopted", ["amo_id"])
            rows[event.id] = row
        if _is_stale(row.amo_updated_at, version):
            outcome.stale += 1
            return
        writer = _Writer(row, version)
        name = _clean(event.name)
        if name is not None and name != row.name:
            writer.set("name", name)
            if "name" in writer.changed:
                row.name_folded = fold(name)
        before = (row.pipeline_id, row.status_id)
        writer.scalar("price", _int(event.price))
        writer.scalar("pipeline_id", _int(event.pipeline_id))
        writer.scalar("status_id", _int(event.status_id))
        writer.scalar("responsible_user_id", _int(event.responsible_user_id))
        _write_custom_fields(writer, row, mirror_fields(event.custom_fields))
        tags = _tag_names(event)
        writer.set("tags", tags, same=set(tags) == set(row.tags or []))
        if row.deleted and event.action in ("restore", "add"):
            row.deleted = False
            writer.changed.append("deleted")
        changed = writer.finish()
        _advance(row, version)
        if changed:
            outcome.changed("leads", row, event.action, changed)
            await self._announce(repo, row, event.action, changed, before)
        else:
            outcome.echo += 1

    # --- contacts --------------------------------------------------------------------------------
    async def _contact(
        self,
        leads: LeadRepository,
        repo: ContactRepository,
        connection_id: str,
        owner: str,
        event: ContactEvent,
        rows: dict[int, Contact],
        outcome: Outcome,
    ) -> None:
        if event.id is None or not _usable_id(event.id):
            outcome.skipped.append(f"contacts[{event.action}]: no id")
            return
        if event.action not in _CONTACT_ACTIONS:
            outcome.ignored += 1
            return
        row = rows.get(event.id)
        if event.action == "delete":
            if row is not None and not row.deleted:
                row.deleted = True
                outcome.changed("contacts", row, "delete", ["deleted"])
            else:
                outcome.echo += 1
            return
        version = _version(event)
        emails = [e for e in event.normalized_emails() if len(e) <= MAX_EMAIL]
        phones = [p for p in event.normalized_phones(self.phone_region) if len(p) <= 32]
        if row is None:
            row = await repo.awaiting_create(connection_id, emails=emails, phones=phones)
            if row is None:
                row = _new_contact(connection_id, owner, event, version, emails, phones)
                repo.add(row)
                await repo.flush()
                rows[event.id] = row
                await self._links(leads, connection_id, row, event)
                outcome.created += 1
                outcome.changed("contacts", row, event.action, ["created"])
                return
            row.amo_id = event.id
            rows[event.id] = row
        if _is_stale(row.amo_updated_at, version):
            outcome.stale += 1
            return
        writer = _Writer(row, version)
        name = _clean(event.name)
        if name is not None and name != row.name:
            writer.set("name", name)
            if "name" in writer.changed:
                row.name_folded = fold(name)
        if set(emails) != set(row.emails or []):
            writer.set("emails", emails)
            if "emails" in writer.changed:
                row.email = emails[0] if emails else None
        if set(phones) != set(row.phones or []):
            writer.set("phones", phones)
            if "phones" in writer.changed:
                row.phone = phones[0] if phones else None
        tags = _tag_names(event)
        writer.set("tags", tags, same=set(tags) == set(row.tags or []))
        if row.deleted and event.action in ("restore", "add"):
            row.deleted = False
            writer.changed.append("deleted")
        changed = writer.finish()
        if await self._links(leads, connection_id, row, event):
            changed.append("leads")
        _advance(row, version)
        if changed:
            outcome.changed("contacts", row, event.action, changed)
        else:
            outcome.echo += 1

    async def _links(
        self, leads: LeadRepository, connection_id: str, contact: Contact, event: ContactEvent
    ) -> bool:
        """The contact's links to mirrored leads as amoCRM lists them (``linked_leads_id``, the
        whole set: an empty one is simply absent from the body); True when they changed."""
        ids = [i for i in event.linked_leads_id if 0 < i <= MAX_BIGINT][:MAX_LINKS]
        linked = await leads.by_amo_ids(connection_id, ids)
        wanted = {row.id for row in linked.values()}
        current = await leads.contact_links(contact.id)
        if wanted == set(current):
            return False
        for lead_id in set(current) - wanted:
            await leads.unlink(lead_id, contact.id)
        adding = wanted - set(current)
        with_main = await leads.with_main_contact(adding)
        for lead_id in sorted(adding):
            await leads.link(lead_id, contact.id, is_main=lead_id not in with_main)
        return True


def _is_stale(stored: datetime | None, version: datetime | None) -> bool:
    """Older than what the mirror holds (an event without a time cannot be ordered: it is
    applied only to a row that has none either)."""
    if stored is None:
        return False
    return version is None or version < stored


def _advance(row: Lead | Contact, version: datetime | None) -> None:
    if version is not None and (row.amo_updated_at is None or version > row.amo_updated_at):
        row.amo_updated_at = version


def _new_lead(connection_id: str, owner: str, event: LeadEvent, version: datetime | None) -> Lead:
    now = utcnow()
    return Lead(
        owner=owner,
        connection_id=connection_id,
        amo_id=event.id,
        name=_clean(event.name),
        name_folded=fold(_clean(event.name)),
        price=_int(event.price),
        pipeline_id=_int(event.pipeline_id),
        status_id=_int(event.status_id),
        responsible_user_id=_int(event.responsible_user_id),
        custom_fields=list(mirror_fields(event.custom_fields).values()),
        tags=_tag_names(event),
        sync_state="synced",
        version=1,
        dirty={},
        amo_updated_at=version,
        synced_at=now,
        local_updated_at=now,
        deleted=False,
    )


def _new_contact(
    connection_id: str,
    owner: str,
    event: ContactEvent,
    version: datetime | None,
    emails: list[str],
    phones: list[str],
) -> Contact:
    now = utcnow()
    return Contact(
        owner=owner,
        connection_id=connection_id,
        amo_id=event.id,
        name=_clean(event.name),
        name_folded=fold(_clean(event.name)),
        email=emails[0] if emails else None,
        phone=phones[0] if phones else None,
        emails=emails,
        phones=phones,
        tags=_tag_names(event),
        sync_state="synced",
        version=1,
        dirty={},
        amo_updated_at=version,
        synced_at=now,
        local_updated_at=now,
        deleted=False,
    )
