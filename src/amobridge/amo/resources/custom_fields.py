"""``/api/v4/{entity_type}/custom_fields``: field definitions, and finding one by code or name."""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator

from amobridge.amo.models.base import EntityType, Page
from amobridge.amo.models.custom_fields import CustomField
from amobridge.amo.models.pipelines import normalise_name
from amobridge.amo.resources.base import (
    DEFAULT_PAGE_LIMIT,
    AmoLookupError,
    Resource,
    check_entity_type,
)


class CustomFieldsResource(Resource):
    async def list(
        self, entity_type: EntityType, *, page: int = 1, limit: int = DEFAULT_PAGE_LIMIT
    ) -> Page[CustomField]:
        """One page of the field definitions of ``entity_type``."""
        path = f"{check_entity_type(entity_type)}/custom_fields"
        return await self._page(path, "custom_fields", CustomField, page=page, limit=limit)

    async def iterate(
        self, entity_type: EntityType, *, limit: int = DEFAULT_PAGE_LIMIT
    ) -> AsyncIterator[CustomField]:
        """Every field definition of ``entity_type``."""

        async def fetch(number: int) -> Page[CustomField]:
            return await self.list(entity_type, page=number, limit=limit)

        async for field in self._iterate(fetch):
            yield field

    async def all(self, entity_type: EntityType) -> builtins.list[CustomField]:
        return [field async for field in self.iterate(entity_type)]

    async def get(self, entity_type: EntityType, field_id: int) -> CustomField | None:
        """One field definition; None when it does not exist."""
        path = f"{check_entity_type(entity_type)}/custom_fields/{int(field_id)}"
        return await self._get(path, CustomField)

    async def find(self, entity_type: EntityType, field: int | str) -> CustomField:
        """The field ``field`` of ``entity_type``: an id, a code (``PHONE``) or a name.

        Raises :class:`AmoLookupError` listing the fields when none matches.
        """
        fields = await self.all(entity_type)
        if isinstance(field, int) and not isinstance(field, bool):
            found = next((f for f in fields if f.id == field), None)
        else:
            wanted = normalise_name(str(field))
            found = next(
                (f for f in fields if f.code and normalise_name(f.code) == wanted), None
            ) or next((f for f in fields if f.name and normalise_name(f.name) == wanted), None)
        if found is None:
            listed = ", ".join(
                f"{f.name!r} (id {f.id}{', code ' + f.code if f.code else ''})" for f in fields
            )
            raise AmoLookupError(
                f"no custom field {field!r} on {entity_type}; its fields: {listed or 'none'}",
                wanted=field,
                available=[f.name or "" for f in fields],
            )
        return found
