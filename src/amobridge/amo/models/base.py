"""Model bases, amoCRM's null quirks, pages and write results.

amoCRM's replies are loose: any field may be ``null``, lists come as ``null`` instead of ``[]``, and
PHP encodes an empty object as ``[]``. Reply models (:class:`AmoModel`) therefore default every
field, coerce those quirks to empty values, and **keep unknown fields** (``extra="allow"``): a field
amoCRM adds tomorrow is on ``model_extra`` rather than lost. Request models (:class:`AmoInput`)
forbid unknown fields, so a typo fails before anything is sent, and send only what was set.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

T = TypeVar("T")

# The entity types whose tags, notes and custom fields live under ``/api/v4/{entity_type}/…``.
EntityType = Literal["leads", "contacts", "companies", "customers"]


def _none_as_empty_list(value: Any) -> Any:
    return [] if value is None else value


def _none_as_empty_dict(value: Any) -> Any:
    # PHP's json_encode writes an empty associative array as ``[]``.
    if value is None or (isinstance(value, list) and not value):
        return {}
    return value


NullableList = Annotated[list[T], BeforeValidator(_none_as_empty_list)]
"""A list that reads ``null`` as ``[]``."""

NullableDict = Annotated[dict[str, Any], BeforeValidator(_none_as_empty_dict)]
"""An object that reads ``null`` and PHP's empty ``[]`` as ``{}``."""

NullableObject = BeforeValidator(_none_as_empty_dict)
"""Put on a nested model field: ``null`` / ``[]`` become the model's defaults."""


class AmoModel(BaseModel):
    """A model of something amoCRM sent: tolerant, and keeps unknown fields on ``model_extra``."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class AmoInput(BaseModel):
    """A request body: unknown fields are a typo, and only the fields you set are sent."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    # Fields amoCRM expects under ``_embedded`` (``contacts=[…]`` is sent as ``_embedded.contacts``).
    embedded_fields: ClassVar[tuple[str, ...]] = ()

    def to_api(self) -> dict[str, Any]:
        """The JSON object amoCRM expects (fields never set are left out; an explicit None is sent)."""
        body = self.model_dump(mode="json", by_alias=True, exclude_unset=True)
        embedded = {name: body.pop(name) for name in self.embedded_fields if name in body}
        if embedded:
            body["_embedded"] = embedded
        return body


class EntityLink(AmoModel):
    """A link to another entity, as in a lead's ``_embedded.contacts[{id, is_main}]``."""

    id: int
    is_main: bool | None = None
    links: NullableDict = Field(default_factory=dict, alias="_links")


def _as_str_list(value: Any) -> Any:
    if value is None:
        return []
    if isinstance(value, str | int):
        return [str(value)]
    return value


def link_list(value: Any) -> Any:
    """Let ``contacts=[1, 2]`` mean ``[{"id": 1}, {"id": 2}]``."""
    if isinstance(value, list | tuple):
        return [{"id": item} if isinstance(item, int) else item for item in value]
    return value


Links = Annotated[list[EntityLink], BeforeValidator(link_list)]
"""Links in a request: ``[1, 2]`` or ``[EntityLink(id=1, is_main=True)]``."""


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list endpoint. amoCRM sends no total count: only whether a next page exists."""

    items: list[T]
    page: int
    has_next: bool

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


class CreatedEntity(AmoModel):
    """One entry of a create reply: ``{id, request_id, _links}``, matched to its input."""

    id: int
    request_id: str | None = None
    links: NullableDict = Field(default_factory=dict, alias="_links")


class UpdatedEntity(AmoModel):
    """One entry of an update reply: ``{id, updated_at, _links}``."""

    id: int
    updated_at: int | None = None
    links: NullableDict = Field(default_factory=dict, alias="_links")


class ComplexCreated(AmoModel):
    """One entry of ``POST /leads/complex``'s bare-array reply."""

    id: int
    contact_id: int | None = None
    company_id: int | None = None
    request_id: Annotated[list[str], BeforeValidator(_as_str_list)] = Field(default_factory=list)
    merged: bool | None = None
