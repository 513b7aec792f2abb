"""``/api/v4/{entity_type}/tags``: the tags of leads, contacts, companies or customers."""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Sequence

from amobridge.amo.models.base import EntityType, Page
from amobridge.amo.models.tags import Tag, TagCreate
from amobridge.amo.resources.base import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_PAGE_LIMIT,
    Resource,
    check_entity_type,
    input_bodies,
    parse_model,
)


class TagsResource(Resource):
    async def list(
        self,
        entity_type: EntityType,
        *,
        page: int = 1,
        limit: int = DEFAULT_PAGE_LIMIT,
        query: str | None = None,
        ids: Sequence[int] | None = None,
    ) -> Page[Tag]:
        """One page of the tags of ``entity_type``; ``query`` searches their names."""
        path = f"{check_entity_type(entity_type)}/tags"
        params = {"query": query or None, "filter": {"id": list(ids)} if ids else None}
        return await self._page(path, "tags", Tag, page=page, limit=limit, params=params)

    async def iterate(
        self,
        entity_type: EntityType,
        *,
        limit: int = DEFAULT_PAGE_LIMIT,
        query: str | None = None,
    ) -> AsyncIterator[Tag]:
        """Every tag of ``entity_type``, page after page."""

        async def fetch(number: int) -> Page[Tag]:
            return await self.list(entity_type, page=number, limit=limit, query=query)

        async for tag in self._iterate(fetch):
            yield tag

    async def create(
        self,
        entity_type: EntityType,
        tags: Sequence[TagCreate | str],
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> builtins.list[Tag]:
        """Create tags (a string is a name); the created tags, in input order."""
        path = f"{check_entity_type(entity_type)}/tags"
        if isinstance(tags, str):
            raise TypeError("pass a list of tags")
        items = [TagCreate(name=tag) if isinstance(tag, str) else tag for tag in tags]
        replies = await self._send_creates(
            path,
            input_bodies(TagCreate, items),
            chunk_size=chunk_size,
            maximum=250,
            reply_key="tags",
        )
        return [parse_model(Tag, reply, method="POST", path=path) for reply in replies]
