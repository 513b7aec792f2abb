"""The one entity resource: leads, contacts and companies are the same endpoints in amoCRM,
parametrised by an :class:`EntityKind` (its payload model, its JSON shape, what ``query`` searches
and its own filters). What only one kind has stays with it: ``/leads/complex`` and the lead
filters in ``leads.py``, a manager's shorthands in ``ui.py``.

- ``GET /api/v4/{type}``: paged (``query.py``); ``query`` matches the id, the kind's ``searched``
  attributes (names; leads: also the price) and every custom field value (phones, e-mails…) as
  case-insensitive substrings; filters ``id``, ``name``, ``responsible_user_id``, ``created_by``,
  ``updated_by``, ``created_at``/``updated_at``/``closest_task_at`` ranges plus the kind's own;
  ``order`` by ``created_at``, ``updated_at`` or ``id`` (default: id ascending); 204 when nothing
  matches.
- ``GET /api/v4/{type}/{id}``: 204 when missing or deleted; ``with`` as for lists (leads:
  ``contacts``; contacts: ``leads``; companies: ``leads``, ``contacts``).
- ``POST /api/v4/{type}``: JSON array ≤ ``batch_limit`` → ``_embedded.{type}[{id, request_id,
  _links}]``.
- ``PATCH /api/v4/{type}``: array, each with ``id`` → ``_embedded.{type}[{id, updated_at,
  _links}]``; ``PATCH /api/v4/{type}/{id}``: one object → ``{id, updated_at, _links}``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from amobridge.sandbox.api.common import api
from amobridge.sandbox.api.entities import CompanyIn, ContactIn, EntityIn, LeadIn, Plan, Writer
from amobridge.sandbox.api.leads import lead_filters
from amobridge.sandbox.api.query import (
    Filters,
    ListQuery,
    Predicate,
    base_url,
    link,
    one_of,
    page_body,
    within,
)
from amobridge.sandbox.api.serialize import company_json, contact_json, href, lead_json
from amobridge.sandbox.api.validate import (
    EXTRA_FIELDS,
    Checker,
    body_array,
    read_body,
    reported,
    single_object,
)
from amobridge.sandbox.http import ApiContext, hal, no_content
from amobridge.sandbox.state import Account, Entity, EntityType

Serializer = Callable[[Account, Any, str, Collection[str]], dict[str, Any]]

# attrgetter, not lambdas: a page of a large account sorts every entity, and each key is one
# C call instead of a Python frame.
ORDER_KEYS: dict[str, Callable[[Any], Any]] = {
    "id": attrgetter("id"),
    "created_at": attrgetter("created_at", "id"),
    "updated_at": attrgetter("updated_at", "id"),
}


def no_filters(filters: Filters, account: Account) -> list[Predicate]:
    return []


@dataclass(frozen=True)
class EntityKind:
    """What makes one entity type itself; the endpoints are the same for all three."""

    entity_type: EntityType
    model: type[EntityIn]
    """The API's create/update payload (its validator)."""
    serialize: Serializer
    """Its JSON shape, ``(account, entity, base, with_)``."""
    searched: tuple[str, ...]
    """Attributes ``query`` searches besides the id and every custom field value."""
    filters: Callable[[Filters, Account], list[Predicate]] = no_filters
    """The kind's own ``filter[…]``: predicates for those present."""


LEADS = EntityKind("leads", LeadIn, lead_json, ("name", "price"), lead_filters)
# A contact's phones and e-mails are custom field values, so ``query`` finds them as plain
# case-insensitive substrings (amoCRM does not document how it matches phones; amobridge
# normalises them itself before it searches).
CONTACTS = EntityKind("contacts", ContactIn, contact_json, ("name", "first_name", "last_name"))
COMPANIES = EntityKind("companies", CompanyIn, company_json, ("name",))
KINDS: dict[EntityType, EntityKind] = {k.entity_type: k for k in (LEADS, CONTACTS, COMPANIES)}


def common_filters(filters: Filters) -> list[Predicate]:
    found: list[Predicate] = []
    for name in ("id", "responsible_user_id", "created_by", "updated_by"):
        wanted = filters.ints(name)
        if wanted is not None:
            found.append(one_of(name, wanted))
    names = filters.strings("name")
    if names is not None:
        found.append(lambda e: e.name in names)
    for name in ("created_at", "updated_at", "closest_task_at"):
        bounds = filters.range(name)
        if bounds is not None:
            found.append(within(name, bounds))
    return found


def matches_query(entity: Entity, needle: str, searched: tuple[str, ...]) -> bool:
    if needle == str(entity.id):
        return True
    for attribute in searched:
        if needle in str(getattr(entity, attribute)).casefold():
            return True
    for item in entity.custom_fields_values or ():
        for value in item["values"]:
            if needle in str(value["value"]).casefold():
                return True
    return False


def select(kind: EntityKind, account: Account, query: ListQuery) -> list[Any]:
    predicates = common_filters(query.filters)
    if query.filters:
        predicates += kind.filters(query.filters, account)
    needle = query.search
    rows = [e for e in account.entities(kind.entity_type).values() if not e.is_deleted]
    for predicate in predicates:  # one pass per filter: no generator per entity
        rows = [e for e in rows if predicate(e)]
    if needle is not None:
        rows = [e for e in rows if matches_query(e, needle, kind.searched)]
    query.sort(rows, ORDER_KEYS, "id")
    return rows


def refuse_id(item: EntityIn, check: Checker) -> None:
    """Creating: an ``id`` is the server's to give."""
    if item.id is not None:
        check.error(EXTRA_FIELDS, "id", "This field was not expected.")


def entity_routes(kind: EntityKind) -> list[BaseRoute]:
    entity_type, model = kind.entity_type, kind.model
    prefix = f"/api/v4/{entity_type}"

    async def list_entities(request: Request, ctx: ApiContext) -> Response:
        query = ListQuery.parse(request, ctx.sandbox.config, ORDER_KEYS)
        rows, has_next = query.window(select(kind, ctx.account, query))
        if not rows:
            return no_content()
        base = base_url(request)
        items = [kind.serialize(ctx.account, e, base, query.with_) for e in rows]
        return hal(page_body(request, query, entity_type, items, has_next))

    async def get_entity(request: Request, ctx: ApiContext) -> Response:
        entity = ctx.account.entities(entity_type).get(request.path_params["entity_id"])
        if entity is None or entity.is_deleted:
            return no_content()
        raw_with = request.query_params.get("with")
        with_ = raw_with.split(",") if raw_with else ()
        return hal(kind.serialize(ctx.account, entity, base_url(request), with_))

    async def add_entities(request: Request, ctx: ApiContext) -> Response:
        items = body_array(await read_body(request), ctx.sandbox.config.batch_limit)
        writer = Writer(ctx.sandbox, ctx.account, ctx.user_id)

        def plan_new(item: EntityIn, raw: Any, check: Checker) -> Plan:
            refuse_id(item, check)
            return writer.plan(entity_type, item, check)

        plans = writer.plan_each(items, model, plan_new)
        writer.commit(plans)
        base = base_url(request)
        added = [
            {
                "id": p.result.id,
                "request_id": p.request_id,
                "_links": href(base, f"{entity_type}/{p.result.id}"),
            }
            for p in plans
        ]
        return hal({"_links": link(f"{base}{prefix}"), "_embedded": {entity_type: added}})

    async def update_entities(request: Request, ctx: ApiContext) -> Response:
        items = body_array(await read_body(request), ctx.sandbox.config.batch_limit)
        writer = Writer(ctx.sandbox, ctx.account, ctx.user_id)

        def plan_update(item: EntityIn, raw: Any, check: Checker) -> Plan | None:
            if item.id is None and reported(raw, "id", check):
                return None
            target = writer.find_target(entity_type, item.id, check)
            return None if target is None else writer.plan(entity_type, item, check, target=target)

        plans = writer.plan_each(items, model, plan_update)
        writer.commit(plans)
        base = base_url(request)
        updated = [_updated(base, entity_type, p) for p in plans]
        return hal({"_links": link(f"{base}{prefix}"), "_embedded": {entity_type: updated}})

    async def update_entity(request: Request, ctx: ApiContext) -> Response:
        raw = single_object(await read_body(request))
        writer = Writer(ctx.sandbox, ctx.account, ctx.user_id)

        def plan_update(item: EntityIn, raw: Any, check: Checker) -> Plan | None:
            target = writer.find_target(entity_type, request.path_params["entity_id"], check)
            return None if target is None else writer.plan(entity_type, item, check, target=target)

        plans = writer.plan_each([raw], model, plan_update)
        writer.commit(plans)
        return hal(_updated(base_url(request), entity_type, plans[0]))

    list_entities.__name__ = f"list_{entity_type}"
    return [
        Route(prefix, api(list_entities), methods=["GET"]),
        Route(prefix, api(add_entities), methods=["POST"]),
        Route(prefix, api(update_entities), methods=["PATCH"]),
        Route(f"{prefix}/{{entity_id:int}}", api(get_entity), methods=["GET"]),
        Route(f"{prefix}/{{entity_id:int}}", api(update_entity), methods=["PATCH"]),
    ]


def routes() -> list[BaseRoute]:
    return [route for kind in KINDS.values() for route in entity_routes(kind)]


def _updated(base: str, entity_type: EntityType, plan: Plan) -> dict[str, Any]:
    entity = plan.result
    return {
        "id": entity.id,
        "updated_at": entity.updated_at,
        "_links": href(base, f"{entity_type}/{entity.id}"),
    }
