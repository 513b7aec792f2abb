"""Notes: ``/api/v4/{leads|contacts|companies}/notes`` and ``/{type}/{id}/notes``.

``POST`` takes an array of ``{entity_id (not on the per-entity path), note_type, params,
created_by?, responsible_user_id?, created_at?, request_id?}`` and answers
``_embedded.notes[{id, entity_id, request_id, _links}]``. Supported ``note_type``\\s and their
required ``params``: ``common`` (text), ``call_in``/``call_out`` (uniq, duration, source, phone;
link optional), ``service_message``/``extended_service_message`` (service, text),
``message_cashier`` (status, text), ``geolocation`` (text, address, longitude, latitude),
``sms_in``/``sms_out`` (text, phone). Any other type → ``NotSupportedChoice`` at ``note_type``
(amoCRM does this for e.g. ``mail_message``). Each note is reported to the webhook dispatcher as
an :class:`EntityChange` with action ``note``.

``GET`` lists are paged; ``filter[id]``, ``filter[entity_id]``, ``filter[note_type]``,
``filter[updated_at]``; ``order[id|updated_at]``; 204 when empty.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from amobridge.sandbox.api.common import api
from amobridge.sandbox.api.query import ListQuery, base_url, in_range, link, page_body
from amobridge.sandbox.api.serialize import href, note_json, webhook_snapshot
from amobridge.sandbox.api.validate import (
    EXTRA_FIELDS,
    Payload,
    Problems,
    RequestId,
    UInt,
    body_array,
    parse_item,
    read_body,
    reported,
    request_id_of,
)
from amobridge.sandbox.events import EntityChange
from amobridge.sandbox.http import ApiContext, hal, no_content
from amobridge.sandbox.state import Account, EntityType, Note

if TYPE_CHECKING:
    from amobridge.sandbox.app import Sandbox

NOTE_PARAMS: dict[str, tuple[str, ...]] = {
    "common": ("text",),
    "call_in": ("uniq", "duration", "source", "phone"),
    "call_out": ("uniq", "duration", "source", "phone"),
    "service_message": ("service", "text"),
    "extended_service_message": ("service", "text"),
    "message_cashier": ("status", "text"),
    "geolocation": ("text", "address", "longitude", "latitude"),
    "sms_in": ("text", "phone"),
    "sms_out": ("text", "phone"),
}
_INT_PARAMS = frozenset({"duration"})


class NoteIn(Payload):
    entity_id: UInt | None = None
    note_type: str
    params: dict[str, Any]
    created_by: UInt | None = None
    responsible_user_id: UInt | None = None
    created_at: UInt | None = None
    updated_at: UInt | None = None
    is_need_to_trigger_digital_pipeline: bool | None = None
    request_id: RequestId = None


def add_notes(
    sandbox: Sandbox,
    account: Account,
    user_id: int,
    entity_type: EntityType,
    items: list[Any],
    entity_id: int | None = None,
) -> list[tuple[Note, str]]:
    """Check every item, then create the notes and report them (raises ValidationFailed)."""
    problems = Problems()
    planned: list[tuple[NoteIn, int, str]] = []
    entities = account.entities(entity_type)
    for index, raw in enumerate(items):
        rid = request_id_of(raw, index)
        check = problems.item(rid)
        item = parse_item(NoteIn, raw, check)
        if item is None:
            continue
        target = entity_id
        if target is None:
            target = item.entity_id
            if target is None:
                if not reported(raw, "entity_id", check):
                    check.missing("entity_id")
                continue
        elif item.entity_id is not None and item.entity_id != entity_id:
            check.error(EXTRA_FIELDS, "entity_id", "This field was not expected.")
        entity = entities.get(target)
        if entity is None or entity.is_deleted:
            check.choice("entity_id")
        required = NOTE_PARAMS.get(item.note_type)
        if required is None:
            check.choice("note_type")
        else:
            for name in required:
                value = item.params.get(name)
                if value is None:
                    check.missing(f"params.{name}")
                elif name in _INT_PARAMS:
                    if isinstance(value, bool) or not isinstance(value, int):
                        check.invalid_type(f"params.{name}", "int")
                elif not isinstance(value, str):
                    check.invalid_type(f"params.{name}", "string")
        for name in ("created_by", "responsible_user_id"):
            user = getattr(item, name)
            if user is not None and user != 0 and user not in account.users:
                check.choice(name)
        if not check.failed:
            planned.append((item, target, rid))
    problems.raise_if_any()
    now = sandbox.clock.now_int()
    created: list[tuple[Note, str]] = []
    changes: list[EntityChange] = []
    for item, target, rid in planned:
        created_at = item.created_at if item.created_at is not None else now
        note = Note(
            id=sandbox.state.ids.next("note"),
            account_id=account.id,
            entity_type=entity_type,
            entity_id=target,
            note_type=item.note_type,
            params=dict(item.params),
            created_by=item.created_by if item.created_by is not None else user_id,
            updated_by=user_id,
            responsible_user_id=(
                item.responsible_user_id if item.responsible_user_id is not None else user_id
            ),
            created_at=created_at,
            updated_at=item.updated_at if item.updated_at is not None else created_at,
        )
        account.notes[note.id] = note
        created.append((note, rid))
        changes.append(
            EntityChange(
                entity_type=entity_type,
                action="note",
                entity_id=target,
                snapshot=webhook_snapshot(account, entity_type, entities[target]),
                note={
                    "id": note.id,
                    "note_type": note.note_type,
                    "params": note.params,
                    "entity_id": note.entity_id,
                    "entity_type": entity_type,
                    "created_by": note.created_by,
                    "responsible_user_id": note.responsible_user_id,
                    "created_at": note.created_at,
                    "updated_at": note.updated_at,
                },
            )
        )
    sandbox.emit(account, changes)
    return created


def _note_routes(entity_type: EntityType) -> list[BaseRoute]:
    prefix = f"/api/v4/{entity_type}"

    async def list_notes(request: Request, ctx: ApiContext) -> Response:
        entity_id: int | None = request.path_params.get("entity_id")
        query = ListQuery.parse(request, ctx.sandbox.config, ("id", "updated_at"))
        ids = query.filters.ints("id")
        entity_ids = query.filters.ints("entity_id")
        types = query.filters.strings("note_type")
        updated = query.filters.range("updated_at")
        rows = [
            n
            for n in ctx.account.notes.values()
            if n.entity_type == entity_type
            and (entity_id is None or n.entity_id == entity_id)
            and (ids is None or n.id in ids)
            and (entity_ids is None or n.entity_id in entity_ids)
            and (types is None or n.note_type in types)
            and (updated is None or in_range(n.updated_at, updated))
        ]
        query.sort(
            rows,
            {"id": lambda n: n.id, "updated_at": lambda n: (n.updated_at, n.id)},
            "id",
        )
        page, has_next = query.window(rows)
        if not page:
            return no_content()
        base = base_url(request)
        return hal(
            page_body(
                request, query, "notes", [note_json(ctx.account, n, base) for n in page], has_next
            )
        )

    async def get_note(request: Request, ctx: ApiContext) -> Response:
        note = ctx.account.notes.get(request.path_params["note_id"])
        entity_id = request.path_params.get("entity_id")
        if (
            note is None
            or note.entity_type != entity_type
            or (entity_id is not None and note.entity_id != entity_id)
        ):
            return no_content()
        return hal(note_json(ctx.account, note, base_url(request)))

    async def post_notes(request: Request, ctx: ApiContext) -> Response:
        items = body_array(await read_body(request), ctx.sandbox.config.batch_limit)
        entity_id: int | None = request.path_params.get("entity_id")
        created = add_notes(ctx.sandbox, ctx.account, ctx.user_id, entity_type, items, entity_id)
        base = base_url(request)
        return hal(
            {
                "_links": link(f"{base}{request.url.path}"),
                "_embedded": {
                    "notes": [
                        {
                            "id": note.id,
                            "entity_id": note.entity_id,
                            "request_id": rid,
                            "_links": href(base, f"{entity_type}/{note.entity_id}/notes/{note.id}"),
                        }
                        for note, rid in created
                    ]
                },
            }
        )

    return [
        Route(f"{prefix}/notes", api(list_notes), methods=["GET"]),
        Route(f"{prefix}/notes", api(post_notes), methods=["POST"]),
        Route(f"{prefix}/notes/{{note_id:int}}", api(get_note), methods=["GET"]),
        Route(f"{prefix}/{{entity_id:int}}/notes", api(list_notes), methods=["GET"]),
        Route(f"{prefix}/{{entity_id:int}}/notes", api(post_notes), methods=["POST"]),
        Route(f"{prefix}/{{entity_id:int}}/notes/{{note_id:int}}", api(get_note), methods=["GET"]),
    ]


def routes() -> list[BaseRoute]:
    found: list[BaseRoute] = []
    for entity_type in ("leads", "contacts", "companies"):
        found.extend(_note_routes(entity_type))
    return found
