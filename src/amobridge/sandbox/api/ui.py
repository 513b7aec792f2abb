"""Edits a manager makes in amoCRM's UI, through the control API (``/_sandbox/accounts/{id}/…``).

They go through the same :class:`Writer` as API writes (same checks, same webhooks), acting as the
account's admin user unless the body names ``created_by``/``updated_by``:

- ``POST …/{leads|contacts|companies}``: one object (→ 201 the entity) or an array (→ 201 a list),
  the API's fields plus shorthands: a lead's ``contact: {id}`` links a contact, ``contact: {name?,
  first_name?, last_name?, phone?, email?}`` creates one and links it as main; a contact's
  ``phone``/``email`` fill its PHONE/EMAIL fields (WORK).
- ``PATCH …/{type}/{id}``: one object → the entity.
- ``DELETE …/{type}/{id}``: marks it deleted (the API stops showing it) → 204.
- ``GET …/{type}`` (every entity, deleted ones too) and ``GET …/{type}/{id}``.
- ``POST …/{type}/{id}/notes``: a note or a list of notes (as the API's) → 201.

Entities are shown as the API shows them with every ``with`` part. Validation failures answer 422
``{"detail": "Request validation failed", "validation-errors": […]}`` (the API's groups).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from amobridge.sandbox.api.entities import ContactIn, EntityIn, LeadIn, Plan, Writer
from amobridge.sandbox.api.fields import FieldValuesIn, ValueIn
from amobridge.sandbox.api.notes import add_notes
from amobridge.sandbox.api.resource import KINDS, EntityKind, refuse_id
from amobridge.sandbox.api.serialize import note_json
from amobridge.sandbox.api.validate import (
    Checker,
    Payload,
    UInt,
    ValidationFailed,
    read_body,
)
from amobridge.sandbox.control import ControlError, control_endpoint, get_account
from amobridge.sandbox.http import ApiProblem
from amobridge.sandbox.state import Account, EntityType

if TYPE_CHECKING:
    from amobridge.sandbox.app import Sandbox

ALL_WITH = ("contacts", "leads")


class ContactShorthandIn(Payload):
    id: UInt | None = None
    name: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    phone: str | None = None
    email: str | None = None


class UiLeadIn(LeadIn):
    contact: ContactShorthandIn | None = None


class UiContactIn(ContactIn):
    phone: str | None = None
    email: str | None = None


UI_MODELS: dict[EntityType, type[EntityIn]] = {"leads": UiLeadIn, "contacts": UiContactIn}
"""The API's payloads plus a manager's shorthands, where a kind has any."""


def _ui_model(kind: EntityKind) -> type[EntityIn]:
    return UI_MODELS.get(kind.entity_type, kind.model)


def _shown(account: Account, kind: EntityKind, entity: Any) -> dict[str, Any]:
    return kind.serialize(account, entity, _base(account), ALL_WITH)


def _contact_fields(phone: str | None, email: str | None) -> list[FieldValuesIn]:
    found = []
    for code, value in (("PHONE", phone), ("EMAIL", email)):
        if value:
            found.append(
                FieldValuesIn(field_code=code, values=[ValueIn(value=value, enum_code="WORK")])
            )
    return found


def _with_contact_fields(item: UiContactIn) -> ContactIn:
    extra = _contact_fields(item.phone, item.email)
    if not extra:
        return item
    return item.model_copy(
        update={"custom_fields_values": [*(item.custom_fields_values or ()), *extra]}
    )


def _plan(
    writer: Writer, entity_type: EntityType, item: EntityIn, check: Checker, target: Any = None
) -> Plan:
    if isinstance(item, UiContactIn):
        item = _with_contact_fields(item)
    plan = writer.plan(entity_type, item, check, target=target)
    if isinstance(item, UiLeadIn) and item.contact is not None:
        shorthand = item.contact
        nested = check.nested("contact")
        if shorthand.id is not None:
            if writer.find_target("contacts", shorthand.id, nested) is not None:
                plan.contacts.insert(0, (shorthand.id, True))
        else:
            contact = ContactIn(
                name=shorthand.name,
                first_name=shorthand.first_name,
                last_name=shorthand.last_name,
                custom_fields_values=_contact_fields(shorthand.phone, shorthand.email) or None,
            )
            plan.new_contact = writer.plan("contacts", contact, nested)
    return plan


async def _body(request: Request) -> Any:
    try:
        return await read_body(request)
    except ApiProblem as exc:
        detail = json.loads(bytes(exc.response.body)).get("detail", "invalid request body")
        raise ControlError(400, str(detail)) from None


def _invalid(exc: ValidationFailed) -> Response:
    return JSONResponse(
        {"detail": "Request validation failed", "validation-errors": exc.groups},
        status_code=422,
    )


def _base(account: Account) -> str:
    return f"https://{account.host}"


def _target(request: Request, account: Account, entity_type: EntityType) -> Any:
    try:
        entity_id = int(request.path_params["entity_id"])
    except ValueError:
        entity_id = None
    entity = account.entities(entity_type).get(entity_id) if entity_id is not None else None
    if entity is None:
        raise ControlError(404, f"no {entity_type} {request.path_params['entity_id']}")
    return entity


async def create_entities(request: Request, sandbox: Sandbox, kind: EntityKind) -> Response:
    account = get_account(sandbox, request.path_params["account_id"])
    data = await _body(request)
    items = data if isinstance(data, list) else [data]
    if not items or len(items) > sandbox.config.batch_limit:
        raise ControlError(422, f"send 1 to {sandbox.config.batch_limit} items")
    writer = Writer(sandbox, account, account.admin_user_id)

    def plan_new(item: EntityIn, raw: Any, check: Checker) -> Plan:
        refuse_id(item, check)
        return _plan(writer, kind.entity_type, item, check)

    plans = writer.plan_each(items, _ui_model(kind), plan_new)
    try:
        writer.commit(plans)
    except ValidationFailed as exc:
        return _invalid(exc)
    shown = [_shown(account, kind, p.result) for p in plans]
    return JSONResponse(shown if isinstance(data, list) else shown[0], status_code=201)


async def list_entities(request: Request, sandbox: Sandbox, kind: EntityKind) -> Response:
    account = get_account(sandbox, request.path_params["account_id"])
    return JSONResponse(
        [_shown(account, kind, e) for e in account.entities(kind.entity_type).values()]
    )


async def show_entity(request: Request, sandbox: Sandbox, kind: EntityKind) -> Response:
    account = get_account(sandbox, request.path_params["account_id"])
    entity = _target(request, account, kind.entity_type)
    return JSONResponse(_shown(account, kind, entity))


async def update_entity(request: Request, sandbox: Sandbox, kind: EntityKind) -> Response:
    account = get_account(sandbox, request.path_params["account_id"])
    entity = _target(request, account, kind.entity_type)
    data = await _body(request)
    if not isinstance(data, dict):
        raise ControlError(400, "request body must be a JSON object")
    writer = Writer(sandbox, account, account.admin_user_id)

    def plan_update(item: EntityIn, raw: Any, check: Checker) -> Plan | None:
        if entity.is_deleted:
            check.choice("id")
            return None
        return _plan(writer, kind.entity_type, item, check, target=entity)

    plans = writer.plan_each([data], _ui_model(kind), plan_update)
    try:
        writer.commit(plans)
    except ValidationFailed as exc:
        return _invalid(exc)
    return JSONResponse(_shown(account, kind, entity))


async def delete_entity(request: Request, sandbox: Sandbox, kind: EntityKind) -> Response:
    account = get_account(sandbox, request.path_params["account_id"])
    entity = _target(request, account, kind.entity_type)
    if entity.is_deleted:
        raise ControlError(404, f"{kind.entity_type} {entity.id} is already deleted")
    writer = Writer(sandbox, account, account.admin_user_id)
    writer.delete(kind.entity_type, entity)
    writer.emit()
    return Response(status_code=204)


async def create_notes(request: Request, sandbox: Sandbox, kind: EntityKind) -> Response:
    account = get_account(sandbox, request.path_params["account_id"])
    entity_type = kind.entity_type
    entity = _target(request, account, entity_type)
    data = await _body(request)
    items = data if isinstance(data, list) else [data]
    if not items or len(items) > sandbox.config.batch_limit:
        raise ControlError(422, f"send 1 to {sandbox.config.batch_limit} notes")
    try:
        created = add_notes(sandbox, account, account.admin_user_id, entity_type, items, entity.id)
    except ValidationFailed as exc:
        return _invalid(exc)
    shown = [note_json(account, note, _base(account)) for note, _ in created]
    return JSONResponse(shown if isinstance(data, list) else shown[0], status_code=201)


UiHandler = Callable[[Request, "Sandbox", EntityKind], Awaitable[Response]]


def _bind(handler: UiHandler, kind: EntityKind) -> Callable[[Request], Awaitable[Response]]:
    async def bound(request: Request, sandbox: Sandbox) -> Response:
        return await handler(request, sandbox, kind)

    bound.__name__ = f"{handler.__name__}_{kind.entity_type}"
    return control_endpoint(bound)


def routes() -> list[BaseRoute]:
    found: list[BaseRoute] = []
    for kind in KINDS.values():
        root = f"/_sandbox/accounts/{{account_id}}/{kind.entity_type}"
        found += [
            Route(root, _bind(create_entities, kind), methods=["POST"]),
            Route(root, _bind(list_entities, kind), methods=["GET"]),
            Route(root + "/{entity_id}", _bind(show_entity, kind), methods=["GET"]),
            Route(root + "/{entity_id}", _bind(update_entity, kind), methods=["PATCH"]),
            Route(root + "/{entity_id}", _bind(delete_entity, kind), methods=["DELETE"]),
            Route(root + "/{entity_id}/notes", _bind(create_notes, kind), methods=["POST"]),
        ]
    return found
