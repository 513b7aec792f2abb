"""Tags: ``/api/v4/{leads|contacts|companies}/tags`` and the tags of entity writes.

A write names a tag by ``id`` (must exist: ``NotSupportedChoice``) or ``name`` (found
case-insensitively, created when new). ``_embedded.tags`` sets an entity's tags (on update it
replaces them; ``[]`` clears), ``tags_to_add`` adds, ``tags_to_delete`` removes. ``POST …/tags``
with a name that exists answers the existing tag.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from amobridge.sandbox.api.common import api
from amobridge.sandbox.api.query import ListQuery, base_url, link, page_body
from amobridge.sandbox.api.serialize import tag_json
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
from amobridge.sandbox.state import Account, EntityType, Tag

if TYPE_CHECKING:
    from amobridge.sandbox.app import Sandbox


class TagIn(Payload):
    id: UInt | None = None
    name: str | None = None
    color: str | None = None


@dataclass(frozen=True)
class TagRef:
    """A checked tag reference: an existing tag's id, or a name to find or create."""

    id: int | None
    name: str | None
    color: str | None = None


def find_tag(account: Account, entity_type: EntityType, name: str) -> Tag | None:
    key = name.strip().casefold()
    return next((t for t in account.tags[entity_type].values() if t.name.casefold() == key), None)


def resolve_tags(
    account: Account, entity_type: EntityType, items: list[TagIn], check: Checker, path: str
) -> list[TagRef]:
    refs: list[TagRef] = []
    for i, item in enumerate(items):
        if item.id is not None:
            if item.id not in account.tags[entity_type]:
                check.choice(f"{path}.{i}.id")
                continue
            refs.append(TagRef(item.id, None))
        elif item.name is not None and item.name.strip():
            tag = find_tag(account, entity_type, item.name)
            refs.append(
                TagRef(tag.id, None) if tag else TagRef(None, item.name.strip(), item.color)
            )
        else:
            check.missing(f"{path}.{i}.name")
    return refs


def tag_ids(
    sandbox: Sandbox, account: Account, entity_type: EntityType, refs: list[TagRef]
) -> list[int]:
    """The ids of ``refs``, creating the tags named for the first time."""
    found: list[int] = []
    for ref in refs:
        tag_id = ref.id
        if tag_id is None:
            assert ref.name is not None
            existing = find_tag(account, entity_type, ref.name)
            tag_id = existing.id if existing else create_tag(sandbox, account, entity_type, ref).id
        if tag_id not in found:
            found.append(tag_id)
    return found


def create_tag(sandbox: Sandbox, account: Account, entity_type: EntityType, ref: TagRef) -> Tag:
    assert ref.name is not None
    tag = Tag(id=sandbox.state.ids.next("tag"), name=ref.name, color=ref.color)
    account.tags[entity_type][tag.id] = tag
    return tag


def drop_tags(
    account: Account, entity_type: EntityType, current: list[int], refs: list[TagRef]
) -> list[int]:
    """``current`` without the tags of ``refs`` (names that match no tag remove nothing)."""
    drop: set[int] = set()
    for ref in refs:
        if ref.id is not None:
            drop.add(ref.id)
        elif ref.name is not None:
            tag = find_tag(account, entity_type, ref.name)
            if tag is not None:
                drop.add(tag.id)
    return [t for t in current if t not in drop]


# --- /api/v4/{entity}/tags ---------------------------------------------------------------------


class TagCreateIn(Payload):
    name: str = Field(min_length=1)
    color: str | None = None
    request_id: RequestId = None


def _tag_routes(entity_type: EntityType) -> list[BaseRoute]:
    prefix = f"/api/v4/{entity_type}/tags"

    async def list_tags(request: Request, ctx: ApiContext) -> Response:
        """Paged; ``filter[id]``, ``filter[name]``, ``query`` (substring of the name); 204 empty."""
        query = ListQuery.parse(request, ctx.sandbox.config)
        ids = query.filters.ints("id")
        names = query.filters.strings("name")
        search = query.search
        rows = [
            t
            for t in ctx.account.tags[entity_type].values()
            if (ids is None or t.id in ids)
            and (names is None or t.name in names)
            and (search is None or search in t.name.casefold())
        ]
        page, has_next = query.window(rows)
        if not page:
            return no_content()
        return hal(page_body(request, query, "tags", [tag_json(t) for t in page], has_next))

    async def add_tags(request: Request, ctx: ApiContext) -> Response:
        """``[{name, color?, request_id?}]`` → ``_embedded.tags[{id, name, color, request_id}]``."""
        items = body_array(await read_body(request), ctx.sandbox.config.batch_limit)
        problems = Problems()
        planned: list[tuple[TagCreateIn, str]] = []
        for index, raw in enumerate(items):
            rid = request_id_of(raw, index)
            model = parse_item(TagCreateIn, raw, problems.item(rid))
            if model is not None:
                planned.append((model, rid))
        problems.raise_if_any()
        created = []
        for model, rid in planned:
            tag = find_tag(ctx.account, entity_type, model.name) or create_tag(
                ctx.sandbox, ctx.account, entity_type, TagRef(None, model.name, model.color)
            )
            created.append({**tag_json(tag), "request_id": rid})
        return hal(
            {
                "_links": link(f"{base_url(request)}{prefix}"),
                "_embedded": {"tags": created},
            }
        )

    return [
        Route(prefix, api(list_tags), methods=["GET"]),
        Route(prefix, api(add_tags), methods=["POST"]),
    ]


def routes() -> list[BaseRoute]:
    found: list[BaseRoute] = []
    for entity_type in ("leads", "contacts", "companies"):
        found.extend(_tag_routes(entity_type))
    return found
