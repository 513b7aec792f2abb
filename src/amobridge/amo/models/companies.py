"""Companies (``/api/v4/companies``) and what a request may set on one."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from amobridge.amo.models.base import (
    AmoInput,
    AmoModel,
    EntityLink,
    NullableList,
    NullableObject,
)
from amobridge.amo.models.custom_fields import CustomFieldInput, WithContactInfo
from amobridge.amo.models.tags import Tag, TagRef


class CompanyEmbedded(AmoModel):
    tags: NullableList[Tag] = Field(default_factory=list)
    contacts: NullableList[EntityLink] = Field(default_factory=list)
    leads: NullableList[EntityLink] = Field(default_factory=list)


class Company(WithContactInfo):
    embedded: Annotated[CompanyEmbedded, NullableObject] = Field(
        default_factory=CompanyEmbedded, alias="_embedded"
    )

    @property
    def tags(self) -> list[Tag]:
        return self.embedded.tags

    @property
    def contact_ids(self) -> list[int]:
        return [link.id for link in self.embedded.contacts]


class CompanyCreate(AmoInput):
    """A new company; ``tags`` (names or ids) go under ``_embedded``."""

    embedded_fields = ("tags",)

    name: str | None = None
    responsible_user_id: int | None = None
    created_by: int | None = None
    updated_by: int | None = None
    created_at: int | None = None
    updated_at: int | None = None
    custom_fields_values: list[CustomFieldInput] | None = None
    tags: list[TagRef] | None = None
    tags_to_add: list[TagRef] | None = None
    request_id: str | None = None


class CompanyUpdate(AmoInput):
    """Changes to the company ``id``; ``tags`` replaces every tag."""

    embedded_fields = ("tags",)

    id: int | None = None
    name: str | None = None
    responsible_user_id: int | None = None
    updated_by: int | None = None
    updated_at: int | None = None
    custom_fields_values: list[CustomFieldInput] | None = None
    tags: list[TagRef] | None = None
    tags_to_add: list[TagRef] | None = None
    tags_to_delete: list[TagRef] | None = None
    request_id: str | None = None
