"""Custom fields: ``/api/v4/{leads|contacts|companies}/custom_fields`` and the
``custom_fields_values`` of entity writes.

A write names a field by ``field_id`` or ``field_code`` (``PHONE``, ``EMAIL``) and gives
``values``; enum fields take ``enum_id``, ``enum_code`` or the option's ``value``. An unknown field
or option is ``NotSupportedChoice`` at its path (``custom_fields_values.0.field_id``,
``custom_fields_values.0.values.0.value``). Values are stored, and read back, as
``{"field_id", "field_name", "field_code", "field_type", "values": [{"value", "enum_id"?,
"enum_code"?}]}``; sending a field with ``"values": null`` or ``[]`` clears it, fields not sent
keep their values. Value rules: text-like fields take strings (numbers become strings); numeric
fields numbers or numeric strings (stored as strings); ``checkbox`` booleans; dates unix
seconds; single-value fields at most one value.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from amobridge.sandbox.api.common import api
from amobridge.sandbox.api.query import ListQuery, base_url, link, page_links
from amobridge.sandbox.api.serialize import custom_field_json
from amobridge.sandbox.api.validate import (
    Checker,
    Payload,
    Problems,
    RequestId,
    UInt,
    body_array,
    parse_item,
    read_body,
    request_id_of,
)
from amobridge.sandbox.http import ApiContext, hal, no_content
from amobridge.sandbox.state import Account, CustomField, CustomFieldEnum, EntityType

if TYPE_CHECKING:
    from amobridge.sandbox.app import Sandbox

ENUM_TYPES = frozenset({"select", "multiselect", "radiobutton", "category"})
MULTI_TYPES = frozenset({"multiselect", "multitext", "category"})
TEXT_TYPES = frozenset({"text", "textarea", "url", "streetaddress"})
NUMBER_TYPES = frozenset({"numeric", "price"})
DATE_TYPES = frozenset({"date", "date_time", "birthday"})
CREATABLE_TYPES = ENUM_TYPES | TEXT_TYPES | NUMBER_TYPES | DATE_TYPES | {"checkbox", "multitext"}


class ValueIn(Payload):
    value: Any = None
    enum_id: UInt | None = None
    enum_code: str | None = None


class FieldValuesIn(Payload):
    field_id: UInt | None = None
    field_code: str | None = None
    # What GET returns, so a read-modify-write round trip is accepted; ignored.
    field_name: str | None = None
    field_type: str | None = None
    values: list[ValueIn] | None = None


StoredField = dict[str, Any]


def find_field(
    account: Account, entity_type: EntityType, item: FieldValuesIn
) -> CustomField | None:
    fields = account.custom_fields[entity_type]
    if item.field_id is not None:
        return fields.get(item.field_id)
    if item.field_code is not None:
        code = item.field_code.upper()
        return next((f for f in fields.values() if f.code and f.code.upper() == code), None)
    return None


def resolve_values(
    account: Account, entity_type: EntityType, items: list[FieldValuesIn], check: Checker
) -> list[tuple[int, StoredField | None]]:
    """Check ``custom_fields_values`` and turn it into (field id, stored item or None to clear)."""
    resolved: list[tuple[int, StoredField | None]] = []
    for i, item in enumerate(items):
        path = f"custom_fields_values.{i}"
        if item.field_id is None and item.field_code is None:
            check.missing(f"{path}.field_id")
            continue
        cf = find_field(account, entity_type, item)
        if cf is None:
            check.choice(f"{path}.field_id" if item.field_id is not None else f"{path}.field_code")
            continue
        if not item.values:
            resolved.append((cf.id, None))
            continue
        if len(item.values) > 1 and cf.type not in MULTI_TYPES:
            check.out_of_range(
                f"{path}.values", "This collection should contain 1 element or less."
            )
            continue
        values = []
        for j, value in enumerate(item.values):
            stored = _value(cf, value, check, f"{path}.values.{j}")
            if stored is not None:
                values.append(stored)
        if len(values) == len(item.values):
            resolved.append(
                (
                    cf.id,
                    {
                        "field_id": cf.id,
                        "field_name": cf.name,
                        "field_code": cf.code,
                        "field_type": cf.type,
                        "values": values,
                    },
                )
            )
    return resolved


def _enum(cf: CustomField, value: ValueIn) -> CustomFieldEnum | None:
    enums = cf.enums or []
    if value.enum_id is not None:
        return next((e for e in enums if e.id == value.enum_id), None)
    if value.enum_code is not None:
        code = value.enum_code.upper()
        return next((e for e in enums if (e.code or "").upper() == code), None)
    if isinstance(value.value, str):
        return next((e for e in enums if e.value == value.value), None)
    return None


def _value(cf: CustomField, value: ValueIn, check: Checker, path: str) -> dict[str, Any] | None:
    raw = value.value
    if cf.type in ENUM_TYPES:
        enum = _enum(cf, value)
        if enum is None:
            which = (
                "enum_id"
                if value.enum_id is not None
                else ("enum_code" if value.enum_code is not None else "value")
            )
            check.choice(f"{path}.{which}")
            return None
        return {"value": enum.value, "enum_id": enum.id, "enum_code": enum.code}
    if cf.type == "multitext":
        text = _text(raw)
        if text is None or not text.strip():
            check.invalid_type(f"{path}.value", "string")
            return None
        if value.enum_id is None and value.enum_code is None:
            enum = cf.enums[0] if cf.enums else None
        else:
            enum = _enum(cf, value)
            if enum is None:
                check.choice(
                    f"{path}.enum_id" if value.enum_id is not None else f"{path}.enum_code"
                )
                return None
        if enum is None:
            return {"value": text}
        return {"value": text, "enum_id": enum.id, "enum_code": enum.code}
    if cf.type in NUMBER_TYPES:
        number = _number(raw)
        if number is None:
            check.invalid_type(f"{path}.value", "numeric")
            return None
        return {"value": number}
    if cf.type == "checkbox":
        if not isinstance(raw, bool):
            check.invalid_type(f"{path}.value", "bool")
            return None
        return {"value": raw}
    if cf.type in DATE_TYPES:
        if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
            check.invalid_type(f"{path}.value", "int")
            return None
        return {"value": raw}
    text = _text(raw)
    if text is None:
        check.invalid_type(f"{path}.value", "string")
        return None
    return {"value": text}


def _text(raw: Any) -> str | None:
    if isinstance(raw, str):
        return raw
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return str(raw)
    return None


def _number(raw: Any) -> str | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return str(raw)
    if isinstance(raw, float):
        return repr(raw) if math.isfinite(raw) else None
    if isinstance(raw, str):
        try:
            parsed = float(raw.strip().replace(",", "."))
        except ValueError:
            return None
        return raw.strip() if math.isfinite(parsed) else None
    return None


def merge_values(
    current: list[StoredField] | None, changes: list[tuple[int, StoredField | None]]
) -> list[StoredField] | None:
    """The entity's new ``custom_fields_values``: sent fields replace or clear, others stay.
    Always a new list (readers may hold the old one)."""
    if not changes:
        return current
    by_id: dict[int, StoredField] = {item["field_id"]: item for item in current or ()}
    for field_id, stored in changes:
        if stored is None:
            by_id.pop(field_id, None)
        else:
            by_id[field_id] = stored
    return list(by_id.values()) or None


def field_value(entity_values: list[StoredField] | None, code: str) -> list[str]:
    """The string values of the field with ``code`` (e.g. every e-mail of a contact)."""
    found: list[str] = []
    for item in entity_values or ():
        if item.get("field_code") == code:
            found.extend(str(v["value"]) for v in item["values"])
    return found


# --- /api/v4/{entity}/custom_fields ------------------------------------------------------------


class EnumIn(Payload):
    value: str = Field(min_length=1)
    sort: UInt | None = None
    code: str | None = None


class CustomFieldIn(Payload):
    name: str = Field(min_length=1)
    type: str
    code: str | None = None
    sort: UInt | None = None
    is_api_only: bool | None = None
    enums: list[EnumIn] | None = None
    request_id: RequestId = None
    # Accepted as amoCRM's UI settings; the sandbox does not act on them.
    group_id: str | None = None
    remind: str | None = None
    required_statuses: list[Any] | None = None
    settings: Any = None


def _fields_routes(entity_type: EntityType) -> list[BaseRoute]:
    prefix = f"/api/v4/{entity_type}/custom_fields"

    async def list_custom_fields(request: Request, ctx: ApiContext) -> Response:
        """Paged, with ``_total_items`` and ``_page_count``; ``filter[id]``, ``filter[type]``."""
        query = ListQuery.parse(request, ctx.sandbox.config)
        ids = query.filters.ints("id")
        types = query.filters.strings("type")
        rows = [
            f
            for f in ctx.account.custom_fields[entity_type].values()
            if (ids is None or f.id in ids) and (types is None or f.type in types)
        ]
        rows.sort(key=lambda f: (f.sort, f.id))
        page, has_next = query.window(rows)
        if not page:
            return no_content()
        base = base_url(request)
        return hal(
            {
                "_total_items": len(rows),
                "_page": query.page,
                "_page_count": max(1, -(-len(rows) // query.limit)),
                "_links": page_links(request, query, has_next),
                "_embedded": {
                    "custom_fields": [custom_field_json(ctx.account, f, base) for f in page]
                },
            }
        )

    async def get_custom_field(request: Request, ctx: ApiContext) -> Response:
        cf = ctx.account.custom_fields[entity_type].get(request.path_params["field_id"])
        if cf is None:
            return no_content()
        return hal(custom_field_json(ctx.account, cf, base_url(request)))

    async def add_custom_fields(request: Request, ctx: ApiContext) -> Response:
        """``[{name, type, code?, sort?, enums?: [{value, sort?}], request_id?}]``."""
        items = body_array(await read_body(request), ctx.sandbox.config.batch_limit)
        problems = Problems()
        planned: list[tuple[CustomFieldIn, str]] = []
        codes = {(f.code or "").upper() for f in ctx.account.custom_fields[entity_type].values()}
        for index, raw in enumerate(items):
            rid = request_id_of(raw, index)
            check = problems.item(rid)
            model = parse_item(CustomFieldIn, raw, check)
            if model is None:
                continue
            if model.type not in CREATABLE_TYPES:
                check.choice("type")
            if model.type in ENUM_TYPES | {"multitext"} and not model.enums:
                check.missing("enums")
            if model.code is not None:
                if not model.code.strip() or model.code.upper() in codes:
                    check.choice("code")
                codes.add(model.code.upper())
            if not check.failed:
                planned.append((model, rid))
        problems.raise_if_any()
        base = base_url(request)
        created = []
        for model, rid in planned:
            cf = create_custom_field(ctx.sandbox, ctx.account, entity_type, model)
            created.append({**custom_field_json(ctx.account, cf, base), "request_id": rid})
        return hal(
            {
                "_total_items": len(created),
                "_links": link(f"{base}{prefix}"),
                "_embedded": {"custom_fields": created},
            }
        )

    return [
        Route(prefix, api(list_custom_fields), methods=["GET"]),
        Route(prefix, api(add_custom_fields), methods=["POST"]),
        Route(f"{prefix}/{{field_id:int}}", api(get_custom_field), methods=["GET"]),
    ]


def create_custom_field(
    sandbox: Sandbox, account: Account, entity_type: EntityType, model: CustomFieldIn
) -> CustomField:
    ids = sandbox.state.ids
    enums = (
        [
            CustomFieldEnum(
                id=ids.next("enum"),
                value=e.value,
                sort=e.sort if e.sort is not None else (i + 1) * 10,
                code=e.code,
            )
            for i, e in enumerate(model.enums)
        ]
        if model.enums
        else None
    )
    field_id = ids.next("field")
    cf = CustomField(
        id=field_id,
        name=model.name,
        type=model.type,
        entity_type=entity_type,
        sort=model.sort if model.sort is not None else 500,
        code=model.code.upper() if model.code else None,
        is_api_only=bool(model.is_api_only),
        enums=enums,
    )
    account.custom_fields[entity_type][field_id] = cf
    return cf


def routes() -> list[BaseRoute]:
    found: list[BaseRoute] = []
    for entity_type in ("leads", "contacts", "companies"):
        found.extend(_fields_routes(entity_type))
    return found
