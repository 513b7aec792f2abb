"""``/api/v4/{entity_type}/notes``: notes on leads, contacts, companies or customers."""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

from amobridge.amo.models.base import CreatedEntity, EntityType, Page
from amobridge.amo.models.notes import Note, NoteCreate, NoteType
from amobridge.amo.resources.base import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_PAGE_LIMIT,
    OrderDirection,
    Resource,
    check_entity_type,
    input_bodies,
    timestamp,
)


def _notes_path(entity_type: EntityType, entity_id: int | None) -> str:
    check_entity_type(entity_type)
    if entity_id is None:
        return f"{entity_type}/notes"
    return f"{entity_type}/{int(entity_id)}/notes"


def _note_params(
    note_type: NoteType | str | Sequence[NoteType | str] | None,
    updated_from: int | datetime | None,
    updated_to: int | datetime | None,
    order: tuple[str, OrderDirection] | None,
) -> dict[str, Any]:
    flt: dict[str, Any] = {}
    if note_type is not None:
        flt["note_type"] = [note_type] if isinstance(note_type, str) else list(note_type)
    if updated_from is not None or updated_to is not None:
        flt["updated_at"] = {
            "from": None if updated_from is None else timestamp(updated_from),
            "to": None if updated_to is None else timestamp(updated_to),
        }
    params: dict[str, Any] = {"filter": flt or None}
    if order is not None:
        field, direction = order
        if field not in ("id", "updated_at") or direction not in ("asc", "desc"):
            raise ValueError('order notes by ("id" | "updated_at", "asc" | "desc")')
        params["order"] = {field: direction}
    return params


class NotesResource(Resource):
    async def list(
        self,
        entity_type: EntityType,
        entity_id: int | None = None,
        *,
        page: int = 1,
        limit: int = DEFAULT_PAGE_LIMIT,
        note_type: NoteType | str | Sequence[NoteType | str] | None = None,
        updated_from: int | datetime | None = None,
        updated_to: int | datetime | None = None,
        order: tuple[str, OrderDirection] | None = None,
    ) -> Page[Note]:
        """One page of the notes of one entity (``entity_id``) or of every ``entity_type``."""
        path = _notes_path(entity_type, entity_id)
        params = _note_params(note_type, updated_from, updated_to, order)
        return await self._page(path, "notes", Note, page=page, limit=limit, params=params)

    async def iterate(
        self,
        entity_type: EntityType,
        entity_id: int | None = None,
        *,
        limit: int = DEFAULT_PAGE_LIMIT,
        note_type: NoteType | str | Sequence[NoteType | str] | None = None,
        updated_from: int | datetime | None = None,
        updated_to: int | datetime | None = None,
        order: tuple[str, OrderDirection] | None = None,
    ) -> AsyncIterator[Note]:
        """Every matching note, page after page."""
        path = _notes_path(entity_type, entity_id)
        params = _note_params(note_type, updated_from, updated_to, order)

        async def fetch(number: int) -> Page[Note]:
            return await self._page(path, "notes", Note, page=number, limit=limit, params=params)

        async for note in self._iterate(fetch):
            yield note

    async def get(self, entity_type: EntityType, note_id: int) -> Note | None:
        """One note; None when it does not exist."""
        return await self._get(f"{check_entity_type(entity_type)}/notes/{int(note_id)}", Note)

    async def create(
        self,
        entity_type: EntityType,
        notes: Sequence[NoteCreate],
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> builtins.list[CreatedEntity]:
        """Add notes (each names its ``entity_id``); results in input order.

        ``await amo.notes.create("leads", [NoteCreate.common(lead_id, "Called back")])``.
        """
        path = _notes_path(entity_type, None)
        return await self._create(
            path, "notes", input_bodies(NoteCreate, notes), chunk_size=chunk_size
        )
