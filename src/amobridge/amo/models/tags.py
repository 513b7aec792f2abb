"""Tags of leads, contacts, companies and customers (``/api/v4/{entity_type}/tags``)."""

from __future__ import annotations

from typing import Any

from pydantic import model_validator

from amobridge.amo.models.base import AmoInput, AmoModel


class Tag(AmoModel):
    id: int
    name: str | None = None
    color: str | None = None


class TagRef(AmoInput):
    """A tag in a request (``tags_to_add``, ``tags_to_delete``, ``_embedded.tags``): by id or name.

    Where a request model takes tags, a plain string means a name and an int means an id.
    """

    id: int | None = None
    name: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_scalar(cls, data: Any) -> Any:
        if isinstance(data, bool):
            return data  # let validation reject it
        if isinstance(data, int):
            return {"id": data}
        if isinstance(data, str):
            return {"name": data}
        return data

    @model_validator(mode="after")
    def _names_a_tag(self) -> TagRef:
        if self.id is None and not self.name:
            raise ValueError("a tag needs an id or a name")
        return self


class TagCreate(AmoInput):
    """A new tag: ``POST /api/v4/{entity_type}/tags``."""

    name: str
    color: str | None = None
    request_id: str | None = None
