"""Creating, updating and deleting leads, contacts and companies: one implementation for the API
(``POST``/``PATCH /api/v4/…``, ``/leads/complex``) and the control API (a manager's edits in
amoCRM's UI).

A request is checked whole before anything is written (a :class:`Writer` plans every item, then
applies them), so an invalid item leaves the account untouched. Each change is reported once, after
the request's writes, as an :class:`EntityChange` for the webhook dispatcher.

amoCRM's rules: all create fields are optional; a lead without a status lands in the first open
stage of the main pipeline (``pipeline_id`` alone: that pipeline's first open stage); 142 and 143
exist in every pipeline (``pipeline_id`` disambiguates, else the lead's own or the main
pipeline); moving to 142/143 sets ``closed_at``, leaving them clears it. A lead without a name is
named ``Сделка #{id}`` (``Lead #{id}`` on amocrm.com/kommo.com), as amoCRM does; a contact
without a name takes ``first_name last_name``. ``responsible_user_id`` and ``created_by`` default
to the token's user. References to users, statuses, pipelines, fields, tags and linked entities
must exist (``NotSupportedChoice``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import Field

from amobridge.sandbox.api.fields import FieldValuesIn, StoredField, merge_values, resolve_values
from amobridge.sandbox.api.serialize import webhook_snapshot
from amobridge.sandbox.api.tags import TagIn, TagRef, drop_tags, resolve_tags, tag_ids
from amobridge.sandbox.api.validate import (
    Checker,
    Payload,
    Problems,
    RequestId,
    UInt,
    parse_item,
    request_id_of,
)
from amobridge.sandbox.events import ChangeAction, EntityChange
from amobridge.sandbox.state import (
    LOST_STATUS_ID,
    WON_STATUS_ID,
    Account,
    Company,
    Contact,
    Entity,
    EntityType,
    Lead,
    Status,
)

if TYPE_CHECKING:
    from amobridge.sandbox.app import Sandbox

CLOSED = (WON_STATUS_ID, LOST_STATUS_ID)
_KIND = {"leads": "lead", "contacts": "contact", "companies": "company"}


# --- payloads ----------------------------------------------------------------------------------


class LinkIn(Payload):
    id: UInt
    is_main: bool | None = None


class EntityIn(Payload):
    id: UInt | None = None
    name: str | None = None
    responsible_user_id: UInt | None = None
    group_id: UInt | None = None
    created_by: UInt | None = None
    updated_by: UInt | None = None
    created_at: UInt | None = None
    updated_at: UInt | None = None
    custom_fields_values: list[FieldValuesIn] | None = None
    tags_to_add: list[TagIn] | None = None
    tags_to_delete: list[TagIn] | None = None
    request_id: RequestId = None


class LeadEmbeddedIn(Payload):
    tags: list[TagIn] | None = None
    contacts: list[LinkIn] | None = None
    companies: list[LinkIn] | None = Field(None, max_length=1)


class LeadFieldsIn(EntityIn):
    price: UInt | None = None
    status_id: UInt | None = None
    pipeline_id: UInt | None = None
    loss_reason_id: UInt | None = None
    closed_at: UInt | None = None


class LeadIn(LeadFieldsIn):
    embedded: LeadEmbeddedIn | None = Field(None, alias="_embedded")


class ContactEmbeddedIn(Payload):
    tags: list[TagIn] | None = None
    companies: list[LinkIn] | None = Field(None, max_length=1)


class ContactIn(EntityIn):
    first_name: str | None = None
    last_name: str | None = None
    embedded: ContactEmbeddedIn | None = Field(None, alias="_embedded")


class CompanyEmbeddedIn(Payload):
    tags: list[TagIn] | None = None


class CompanyIn(EntityIn):
    embedded: CompanyEmbeddedIn | None = Field(None, alias="_embedded")


# --- plans -------------------------------------------------------------------------------------


@dataclass
class Plan:
    """One checked item, ready to apply."""

    entity_type: EntityType
    item: EntityIn
    request_id: str
    target: Any = None  # the entity to update; None to create
    custom_fields: list[tuple[int, StoredField | None]] = field(default_factory=list)
    tags_set: list[TagRef] | None = None
    tags_add: list[TagRef] = field(default_factory=list)
    tags_delete: list[TagRef] = field(default_factory=list)
    status: Status | None = None
    contacts: list[tuple[int, bool]] = field(default_factory=list)  # (id, is_main)
    company_id: int | None = None
    # /leads/complex and the control API's "contact" shorthand: entities made with the lead.
    new_contact: Plan | None = None
    new_company: Plan | None = None
    result: Any = None


Pending = tuple[EntityType, ChangeAction, Any, dict[str, int], dict[str, Any] | None]
ItemT = TypeVar("ItemT", bound=EntityIn)
PlanOne = Callable[[ItemT, Any, Checker], Plan | None]
"""Plans one parsed item (given the raw item too), or None when it was refused through the
checker."""


class Writer:
    """Plans and applies one request's writes for ``account`` as user ``user_id``."""

    def __init__(self, sandbox: Sandbox, account: Account, user_id: int) -> None:
        self.sandbox = sandbox
        self.account = account
        self.user_id = user_id
        self.now = sandbox.clock.now_int()
        self.problems = Problems()
        self._pending: list[Pending] = []

    # --- planning -------------------------------------------------------------------------------
    def plan_each(
        self, items: list[Any], model: type[ItemT], plan_one: PlanOne[ItemT]
    ) -> list[Plan]:
        """Parse and plan every raw item under its own ``request_id``. Every item is checked, so
        one reply reports every problem; the refused ones are left out of the plans."""
        plans: list[Plan] = []
        for index, raw in enumerate(items):
            check = self.problems.item(request_id_of(raw, index))
            item = parse_item(model, raw, check)
            plan = plan_one(item, raw, check) if item is not None else None
            if plan is not None:
                plans.append(plan)
        return plans

    def plan(
        self,
        entity_type: EntityType,
        item: EntityIn,
        check: Checker,
        *,
        target: Any = None,
    ) -> Plan:
        """Check ``item`` against the account (violations go to ``check``)."""
        plan = Plan(entity_type, item, check.request_id, target)
        self._check_common(plan, check)
        embedded = getattr(item, "embedded", None)
        if embedded is not None and embedded.tags is not None:
            plan.tags_set = resolve_tags(
                self.account, entity_type, embedded.tags, check, "_embedded.tags"
            )
        if isinstance(item, LeadFieldsIn):
            self._check_status(plan, item, check)
        if isinstance(item, LeadIn) and item.embedded is not None:
            self._check_links(plan, item.embedded.contacts, item.embedded.companies, check)
        elif isinstance(item, ContactIn) and item.embedded is not None:
            self._check_links(plan, None, item.embedded.companies, check)
        return plan

    def _check_common(self, plan: Plan, check: Checker) -> None:
        item = plan.item
        limit = self.sandbox.config.name_max_length
        if item.name is not None and limit is not None and len(item.name) > limit:
            check.out_of_range(
                "name", f"This value is too long. It should have {limit} characters or less."
            )
        users = self.account.users
        if item.responsible_user_id is not None and item.responsible_user_id not in users:
            check.choice("responsible_user_id")
        for name in ("created_by", "updated_by"):
            user = getattr(item, name)
            if user is not None and user != 0 and user not in users:
                check.choice(name)
        if item.custom_fields_values is not None:
            plan.custom_fields = resolve_values(
                self.account, plan.entity_type, item.custom_fields_values, check
            )
        if item.tags_to_add:
            plan.tags_add = resolve_tags(
                self.account, plan.entity_type, item.tags_to_add, check, "tags_to_add"
            )
        if item.tags_to_delete:
            plan.tags_delete = resolve_tags(
                self.account, plan.entity_type, item.tags_to_delete, check, "tags_to_delete"
            )

    def _check_status(self, plan: Plan, item: LeadFieldsIn, check: Checker) -> None:
        account = self.account
        lead: Lead | None = plan.target
        if item.pipeline_id is not None and item.pipeline_id not in account.pipelines:
            check.choice("pipeline_id")
            return
        if item.status_id is not None:
            pipeline_id = item.pipeline_id
            if pipeline_id is None and item.status_id in CLOSED:
                pipeline_id = lead.pipeline_id if lead else account.main_pipeline().id
            status = account.find_status(item.status_id, pipeline_id)
            if status is None:
                check.choice("status_id")
            plan.status = status
        elif item.pipeline_id is not None:
            if lead is None or lead.pipeline_id != item.pipeline_id:
                plan.status = account.pipelines[item.pipeline_id].first_open_status()
        elif lead is None:
            plan.status = account.main_pipeline().first_open_status()

    def _check_links(
        self,
        plan: Plan,
        contacts: list[LinkIn] | None,
        companies: list[LinkIn] | None,
        check: Checker,
    ) -> None:
        for i, ref in enumerate(contacts or ()):
            contact = self.account.contacts.get(ref.id)
            if contact is None or contact.is_deleted:
                check.choice(f"_embedded.contacts.{i}.id")
            else:
                plan.contacts.append((ref.id, bool(ref.is_main)))
        for i, ref in enumerate(companies or ()):
            company = self.account.companies.get(ref.id)
            if company is None or company.is_deleted:
                check.choice(f"_embedded.companies.{i}.id")
            else:
                plan.company_id = ref.id

    def find_target(self, entity_type: EntityType, entity_id: int | None, check: Checker) -> Any:
        """The live entity an update names, or None after reporting ``id``."""
        if entity_id is None:
            check.missing("id")
            return None
        entity = self.account.entities(entity_type).get(entity_id)
        if entity is None or entity.is_deleted:
            check.choice("id")
            return None
        return entity

    # --- applying -------------------------------------------------------------------------------
    def commit(self, plans: list[Plan]) -> None:
        """Write every plan and report the changes, or write nothing: :class:`ValidationFailed`
        when any item had a problem."""
        self.problems.raise_if_any()
        for plan in plans:
            self.apply(plan)
        self.emit()

    def apply(self, plan: Plan) -> Any:
        """Create or update the entity of ``plan`` (and the entities made with it)."""
        entity = self._create(plan) if plan.target is None else self._update(plan)
        plan.result = entity
        contact = company = None
        if plan.new_contact is not None:
            contact = self.apply(plan.new_contact)
            plan.contacts.insert(0, (contact.id, True))
        if plan.new_company is not None:
            company = self.apply(plan.new_company)
            plan.company_id = company.id
        if contact is not None and company is not None:
            set_company(self.account, contact, company)
        self._link(plan, entity)
        return entity

    def _create(self, plan: Plan) -> Entity:
        item = plan.item
        account = self.account
        entity_id = self.sandbox.state.ids.next(_KIND[plan.entity_type])
        created_by = item.created_by if item.created_by is not None else self.user_id
        created_at = item.created_at if item.created_at is not None else self.now
        common: dict[str, Any] = {
            "id": entity_id,
            "account_id": account.id,
            "name": (item.name or "").strip(),
            "responsible_user_id": (
                item.responsible_user_id if item.responsible_user_id is not None else self.user_id
            ),
            "created_by": created_by,
            "updated_by": item.updated_by if item.updated_by is not None else created_by,
            "created_at": created_at,
            "updated_at": item.updated_at if item.updated_at is not None else created_at,
            "group_id": item.group_id or 0,
            "custom_fields_values": merge_values(None, plan.custom_fields),
            "tag_ids": self._tags(plan, []),
        }
        entity: Entity
        if isinstance(item, LeadFieldsIn):
            status = plan.status
            assert status is not None
            if not common["name"]:
                word = "Сделка" if account.base_domain == "amocrm.ru" else "Lead"
                common["name"] = f"{word} #{entity_id}"
            closed_at = item.closed_at
            if closed_at is None and status.id in CLOSED:
                closed_at = self.now
            entity = Lead(
                **common,
                price=item.price or 0,
                status_id=status.id,
                pipeline_id=status.pipeline_id,
                loss_reason_id=item.loss_reason_id,
                closed_at=closed_at if status.id in CLOSED else None,
            )
            account.leads[entity_id] = entity
        elif isinstance(item, ContactIn):
            first, last = (item.first_name or "").strip(), (item.last_name or "").strip()
            if not common["name"]:
                common["name"] = f"{first} {last}".strip()
            entity = Contact(**common, first_name=first, last_name=last)
            account.contacts[entity_id] = entity
        else:
            entity = Company(**common)
            account.companies[entity_id] = entity
        self._pending.append((plan.entity_type, "add", entity, {}, None))
        return entity

    def _update(self, plan: Plan) -> Entity:
        item = plan.item
        entity: Entity = plan.target
        old_responsible = entity.responsible_user_id
        olds: dict[str, int] = {}
        if item.name is not None:
            entity.name = item.name.strip()
        if item.responsible_user_id is not None:
            entity.responsible_user_id = item.responsible_user_id
        if item.group_id is not None:
            entity.group_id = item.group_id
        if item.created_at is not None:
            entity.created_at = item.created_at
        if item.created_by is not None:
            entity.created_by = item.created_by
        entity.updated_by = item.updated_by if item.updated_by is not None else self.user_id
        entity.updated_at = item.updated_at if item.updated_at is not None else self.now
        entity.custom_fields_values = merge_values(entity.custom_fields_values, plan.custom_fields)
        entity.tag_ids = self._tags(plan, entity.tag_ids)
        if isinstance(entity, Lead):
            assert isinstance(item, LeadFieldsIn)
            self._update_lead(entity, item, plan.status, olds)
        elif isinstance(entity, Contact):
            assert isinstance(item, ContactIn)
            if item.first_name is not None:
                entity.first_name = item.first_name.strip()
            if item.last_name is not None:
                entity.last_name = item.last_name.strip()
        if entity.responsible_user_id != old_responsible:
            olds["old_responsible_user_id"] = old_responsible
        self._pending.append((plan.entity_type, "update", entity, olds, None))
        return entity

    def _update_lead(
        self, lead: Lead, item: LeadFieldsIn, status: Status | None, olds: dict[str, int]
    ) -> None:
        if item.price is not None:
            lead.price = item.price
        if item.loss_reason_id is not None:
            lead.loss_reason_id = item.loss_reason_id
        if status is not None and (status.id, status.pipeline_id) != (
            lead.status_id,
            lead.pipeline_id,
        ):
            olds["old_status_id"] = lead.status_id
            if status.pipeline_id != lead.pipeline_id:
                olds["old_pipeline_id"] = lead.pipeline_id
            was_closed = lead.status_id in CLOSED
            lead.status_id = status.id
            lead.pipeline_id = status.pipeline_id
            if status.id in CLOSED and not was_closed:
                lead.closed_at = self.now
            elif status.id not in CLOSED:
                lead.closed_at = None
        if item.closed_at is not None and lead.status_id in CLOSED:
            lead.closed_at = item.closed_at

    def _tags(self, plan: Plan, current: list[int]) -> list[int]:
        if plan.tags_set is None and not plan.tags_add and not plan.tags_delete:
            return current
        sandbox, account, kind = self.sandbox, self.account, plan.entity_type
        ids = current if plan.tags_set is None else tag_ids(sandbox, account, kind, plan.tags_set)
        added = tag_ids(sandbox, account, kind, plan.tags_add)
        ids = [*ids, *(t for t in added if t not in ids)]
        return drop_tags(account, kind, ids, plan.tags_delete)

    def _link(self, plan: Plan, entity: Any) -> None:
        account = self.account
        if isinstance(entity, Lead):
            for contact_id, is_main in plan.contacts:
                link_lead_contact(account, entity, account.contacts[contact_id], main=is_main)
            if plan.company_id is not None:
                set_company(account, entity, account.companies[plan.company_id])
        elif isinstance(entity, Contact) and plan.company_id is not None:
            set_company(account, entity, account.companies[plan.company_id])

    def delete(self, entity_type: EntityType, entity: Entity) -> None:
        """Mark ``entity`` deleted (the UI's delete): the API stops showing it."""
        snapshot = webhook_snapshot(self.account, entity_type, entity)
        entity.is_deleted = True
        entity.updated_at = self.now
        entity.updated_by = self.user_id
        self._pending.append((entity_type, "delete", entity, {}, snapshot))

    # --- reporting ------------------------------------------------------------------------------
    def emit(self) -> list[EntityChange]:
        """Report this request's changes (snapshots taken now, after every write)."""
        changes = [
            EntityChange(
                entity_type=entity_type,
                action=action,
                entity_id=entity.id,
                snapshot=snapshot or webhook_snapshot(self.account, entity_type, entity),
                old_status_id=olds.get("old_status_id"),
                old_pipeline_id=olds.get("old_pipeline_id"),
                old_responsible_user_id=olds.get("old_responsible_user_id"),
            )
            for entity_type, action, entity, olds, snapshot in self._pending
        ]
        self._pending.clear()
        self.sandbox.emit(self.account, changes)
        return changes


# --- links -------------------------------------------------------------------------------------


def link_lead_contact(account: Account, lead: Lead, contact: Contact, *, main: bool) -> None:
    """Link both ways; the main contact comes first in ``lead.contact_ids``."""
    if contact.id in lead.contact_ids:
        if main and lead.contact_ids[0] != contact.id:
            lead.contact_ids.remove(contact.id)
            lead.contact_ids.insert(0, contact.id)
    elif main:
        lead.contact_ids.insert(0, contact.id)
    else:
        lead.contact_ids.append(contact.id)
    if lead.id not in contact.lead_ids:
        contact.lead_ids.append(lead.id)


def set_company(account: Account, entity: Lead | Contact, company: Company) -> None:
    """Make ``company`` the one company of a lead or contact, keeping the company's lists right."""
    owned = company.lead_ids if isinstance(entity, Lead) else company.contact_ids
    previous = account.companies.get(entity.company_id) if entity.company_id else None
    if previous is not None and previous.id != company.id:
        old = previous.lead_ids if isinstance(entity, Lead) else previous.contact_ids
        if entity.id in old:
            old.remove(entity.id)
    entity.company_id = company.id
    if entity.id not in owned:
        owned.append(entity.id)
