"""The list/get/add/update endpoints leads, contacts and companies share (§5.1, §5.2).

- ``GET /api/v4/{type}``: paged (``query.py``); ``query`` matches the id, names and every
  custom field value (phones, e-mails…) as case-insensitive substrings (leads: also the price);
  filters ``id``, ``name``, ``responsible_user_id``, ``created_by``, ``updated_by``,
  ``created_at``/``updated_at``/``closest_task_at`` ranges plus the type's own; ``order`` by
  ``created_at``, ``updated_at`` or ``id`` (default: id ascending); 204 when nothing matches.
- ``GET /api/v4/{type}/{id}``: 204 when missing or deleted; ``with`` as for lists.
- ``POST /api/v4/{type}``: JSON array ≤ ``batch_limit`` → ``_embedded.{type}[{id, request_id,
  _links}]``.
- ``PATCH /api/v4/{type}``: array, each with ``id`` → ``_embedded.{type}[{id, updated_at,
  _links}]``; ``PATCH /api/v4/{type}/{id}``: one object → ``{id, updated_at, _links}``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from amobridge.sandbox.api.common import api
from amobridge.sandbox.api.entities import MODELS, Plan, Writer
from amobridge.sandbox.api.query import Filters, ListQuery, base_url, in_range, link, page_body
from amobridge.sandbox.api.serialize import entity_json, href
from amobridge.sandbox.api.validate import (
    EXTRA_FIELDS,
    body_array,
    parse_item,
    read_body,
    reported,
    request_id_of,
    single_object,
)
from amobridge.sandbox.http import ApiContext, hal, no_content
from amobridge.sandbox.state import Account, Entity, EntityType

Predicate = Callable[[Any], bool]

ORDER_KEYS: dict[str, Callable[[Any], Any]] = {
    "id": lambda e: e.id,
    "created_at": lambda e: (e.created_at, e.id),
    "updated_at": lambda e: (e.updated_at, e.id),
}


@dataclass(frozen=True)
class EntitySpec:
    entity_type: EntityType
    # Type-specific filters: predicates for the filters present.
    filters: Callable[[Filters, Account], list[Predicate]]
    # The texts ``query`` searches besides the id and custom field values.
    texts: Callable[[Any], Iterable[str]]


def one_of(attribute: str, wanted: set[int]) -> Predicate:
    return lambda entity: getattr(entity, attribute) in wanted


def within(attribute: str, bounds: tuple[int | None, int | None]) -> Predicate:
    return lambda entity: in_range(getattr(entity, attribute), bounds)


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


def matches_query(entity: Entity, needle: str, texts: Iterable[str]) -> bool:
    if needle == str(entity.id):
        return True
    for text in texts:
        if needle in text.casefold():
            return True
    for item in entity.custom_fields_values or ():
        for value in item["values"]:
            if needle in str(value["value"]).casefold():
                return True
    return False


def select(spec: EntitySpec, account: Account, query: ListQuery) -> list[Any]:
    predicates = common_filters(query.filters)
    if query.filters:
        predicates += spec.filters(query.filters, account)
    needle = query.search
    rows = [
        e
        for e in account.entities(spec.entity_type).values()
        if not e.is_deleted
        and all(p(e) for p in predicates)
        and (needle is None or matches_query(e, needle, spec.texts(e)))
    ]
    query.sort(rows, ORDER_KEYS, "id")
    return rows


def entity_routes(spec: EntitySpec) -> list[BaseRoute]:
    entity_type = spec.entity_type
    model = MODELS[entity_type]
    prefix = f"/api/v4/{entity_type}"

    async def list_entities(request: Request, ctx: ApiContext) -> Response:
        query = ListQuery.parse(request, ctx.sandbox.config, ORDER_KEYS)
        rows, has_next = query.window(select(spec, ctx.account, query))
        if not rows:
            return no_content()
        base = base_url(request)
        items = [entity_json(ctx.account, entity_type, e, base, query.with_) for e in rows]
        return hal(page_body(request, query, entity_type, items, has_next))

    async def get_entity(request: Request, ctx: ApiContext) -> Response:
        entity = ctx.account.entities(entity_type).get(request.path_params["entity_id"])
        if entity is None or entity.is_deleted:
            return no_content()
        raw_with = request.query_params.get("with")
        with_ = raw_with.split(",") if raw_with else ()
        return hal(entity_json(ctx.account, entity_type, entity, base_url(request), with_))

    async def add_entities(request: Request, ctx: ApiContext) -> Response:
        items = body_array(await read_body(request), ctx.sandbox.config.batch_limit)
        writer = Writer(ctx.sandbox, ctx.account, ctx.user_id)
        plans: list[Plan] = []
        for index, raw in enumerate(items):
            check = writer.problems.item(request_id_of(raw, index))
            item = parse_item(model, raw, check)
            if item is None:
                continue
            if item.id is not None:
                check.error(EXTRA_FIELDS, "id", "This field was not expected.")
            plans.append(writer.plan(entity_type, item, check))
        writer.problems.raise_if_any()
        for plan in plans:
            writer.apply(plan)
        writer.emit()
        base = base_url(request)
        return hal(
            {
                "_links": link(f"{base}{prefix}"),
                "_embedded": {
                    entity_type: [
                        {
                            "id": p.result.id,
                            "request_id": p.request_id,
                            "_links": href(base, f"{entity_type}/{p.result.id}"),
                        }
                        for p in plans
                    ]
                },
            }
        )

    async def update_entities(request: Request, ctx: ApiContext) -> Response:
        items = body_array(await read_body(request), ctx.sandbox.config.batch_limit)
        writer = Writer(ctx.sandbox, ctx.account, ctx.user_id)
        plans: list[Plan] = []
        for index, raw in enumerate(items):
            check = writer.problems.item(request_id_of(raw, index))
            item = parse_item(model, raw, check)
            if item is None:
                continue
            if item.id is None and reported(raw, "id", check):
                continue
            target = writer.find_target(entity_type, item.id, check)
            if target is not None:
                plans.append(writer.plan(entity_type, item, check, target=target))
        writer.problems.raise_if_any()
        for plan in plans:
            writer.apply(plan)
        writer.emit()
        base = base_url(request)
        return hal(
            {
                "_links": link(f"{base}{prefix}"),
                "_embedded": {entity_type: [_updated(base, entity_type, p) for p in plans]},
            }
        )

    async def update_entity(request: Request, ctx: ApiContext) -> Response:
        raw = single_object(await read_body(request))
        writer = Writer(ctx.sandbox, ctx.account, ctx.user_id)
        check = writer.problems.item(request_id_of(raw, 0))
        item = parse_item(model, raw, check)
        plan = None
        if item is not None:
            target = writer.find_target(entity_type, request.path_params["entity_id"], check)
            if target is not None:
                plan = writer.plan(entity_type, item, check, target=target)
        writer.problems.raise_if_any()
        assert plan is not None
        writer.apply(plan)
        writer.emit()
        return hal(_updated(base_url(request), entity_type, plan))

    list_entities.__name__ = f"list_{entity_type}"
    return [
        Route(prefix, api(list_entities), methods=["GET"]),
        Route(prefix, api(add_entities), methods=["POST"]),
        Route(prefix, api(update_entities), methods=["PATCH"]),
        Route(f"{prefix}/{{entity_id:int}}", api(get_entity), methods=["GET"]),
        Route(f"{prefix}/{{entity_id:int}}", api(update_entity), methods=["PATCH"]),
    ]


def _updated(base: str, entity_type: EntityType, plan: Plan) -> dict[str, Any]:
    entity = plan.result
    return {
        "id": entity.id,
        "updated_at": entity.updated_at,
        "_links": href(base, f"{entity_type}/{entity.id}"),
    }
