"""Contacts (``/api/v4/contacts``) and what a request may set on one."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from amobridge.amo.models.base import (
    AmoInput,
    AmoModel,
    EntityLink,
    Links,
    NullableList,
    NullableObject,
)
from amobridge.amo.models.custom_fields import CustomFieldInput, WithContactInfo
from amobridge.amo.models.tags import Tag, TagRef


class ContactEmbedded(AmoModel):
    tags: NullableList[Tag] = Field(default_factory=list)
    companies: NullableList[EntityLink] = Field(default_factory=list)
    leads: NullableList[EntityLink] = Field(default_factory=list)  # only with ``with=leads``


class Contact(WithContactInfo):
    """A contact; :attr:`phones` and :attr:`emails` read its PHONE / EMAIL values."""

    first_name: str | None = None
    last_name: str | None = None
    is_unsorted: bool | None = None
    embedded: Annotated[ContactEmbedded, NullableObject] = Field(
        default_factory=ContactEmbedded, alias="_embedded"
    )

    @property
    def tags(self) -> list[Tag]:
        return self.embedded.tags

    @property
    def company_id(self) -> int | None:
        return self.embedded.companies[0].id if self.embedded.companies else None

    @property
    def lead_ids(self) -> list[int]:
        """Linked leads (amoCRM embeds them only when asked with ``with=leads``)."""
        return [link.id for link in self.embedded.leads]


class ContactCreate(AmoInput):
    """A new contact. Build phone / e-mail values with ``phone_field`` / ``email_field``.
    ``tags`` (names or ids) and ``companies`` (one id: the contact's company) go under
    ``_embedded``."""

    embedded_fields = ("tags", "companies")

    name: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    responsible_user_id: int | None = None
    created_by: int | None = None
    updated_by: int | None = None
    created_at: int | None = None
    updated_at: int | None = None
    custom_fields_values: list[CustomFieldInput] | None = None
    tags_to_add: list[TagRef] | None = None
    tags: list[TagRef] | None = None
    companies: Links | None = None
    request_id: str | None = None


class ContactUpdate(AmoInput):
    """Changes to the contact ``id`` (only the fields you set are sent); ``tags`` replaces every
    tag."""

    embedded_fields = ("tags",)

    id: int | None = None
    name: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    responsible_user_id: int | None = None
    updated_by: int | None = None
    updated_at: int | None = None
    custom_fields_values: list[CustomFieldInput] | None = None
    tags: list[TagRef] | None = None
    tags_to_add: list[TagRef] | None = None
    tags_to_delete: list[TagRef] | None = None
    request_id: str | None = None
