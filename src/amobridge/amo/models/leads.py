"""Leads (``/api/v4/leads``) and what a request may set on one."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, model_validator

from amobridge.amo.models.base import (
    AmoInput,
    AmoModel,
    EntityLink,
    Links,
    NullableList,
    NullableObject,
)
from amobridge.amo.models.companies import CompanyCreate
from amobridge.amo.models.contacts import ContactCreate
from amobridge.amo.models.custom_fields import CrmEntity, CustomFieldInput
from amobridge.amo.models.pipelines import LOST_STATUS_ID, WON_STATUS_ID
from amobridge.amo.models.tags import Tag, TagRef


class LeadEmbedded(AmoModel):
    tags: NullableList[Tag] = Field(default_factory=list)
    contacts: NullableList[EntityLink] = Field(default_factory=list)  # only with ``with=contacts``
    companies: NullableList[EntityLink] = Field(default_factory=list)


class Lead(CrmEntity):
    price: int | None = None
    status_id: int | None = None
    pipeline_id: int | None = None
    loss_reason_id: int | None = None
    closed_at: int | None = None
    score: int | None = None
    labor_cost: int | None = None
    embedded: Annotated[LeadEmbedded, NullableObject] = Field(
        default_factory=LeadEmbedded, alias="_embedded"
    )

    @property
    def tags(self) -> list[Tag]:
        return self.embedded.tags

    @property
    def contact_ids(self) -> list[int]:
        """Linked contacts (amoCRM embeds them only when asked with ``with=contacts``)."""
        return [link.id for link in self.embedded.contacts]

    @property
    def main_contact_id(self) -> int | None:
        """The contact marked ``is_main``, else the first linked one."""
        contacts = self.embedded.contacts
        main = next((link for link in contacts if link.is_main), None)
        return main.id if main else (contacts[0].id if contacts else None)

    @property
    def company_id(self) -> int | None:
        return self.embedded.companies[0].id if self.embedded.companies else None

    @property
    def is_won(self) -> bool:
        return self.status_id == WON_STATUS_ID

    @property
    def is_lost(self) -> bool:
        return self.status_id == LOST_STATUS_ID


class _LeadWrite(AmoInput):
    name: str | None = None
    price: int | None = None
    status_id: int | None = None
    pipeline_id: int | None = None
    responsible_user_id: int | None = None
    loss_reason_id: int | None = None
    updated_by: int | None = None
    updated_at: int | None = None
    closed_at: int | None = None
    custom_fields_values: list[CustomFieldInput] | None = None
    tags_to_add: list[TagRef] | None = None
    request_id: str | None = None


class LeadCreate(_LeadWrite):
    """A new lead. Every field is optional; without a status it lands in the main pipeline's first
    stage. ``contacts`` / ``companies`` link existing ones (ids or :class:`EntityLink`) and
    ``tags`` sets the tags (names or ids), all sent under ``_embedded``."""

    embedded_fields = ("tags", "contacts", "companies")

    created_by: int | None = None
    created_at: int | None = None
    tags: list[TagRef] | None = None
    contacts: Links | None = None
    companies: Links | None = None


class LeadUpdate(_LeadWrite):
    """Changes to the lead ``id`` (only the fields you set are sent). ``tags`` replaces every
    tag (``[]`` clears them); ``tags_to_add`` / ``tags_to_delete`` change only those named."""

    embedded_fields = ("tags",)

    id: int | None = None
    tags: list[TagRef] | None = None
    tags_to_delete: list[TagRef] | None = None


class ComplexLeadCreate(_LeadWrite):
    """A lead created together with (at most) one new contact and one new company, in one
    ``POST /leads/complex`` (amoCRM may merge the contact into an existing duplicate).
    ``contact_id`` links an existing contact instead of creating one."""

    created_by: int | None = None
    created_at: int | None = None
    tags: list[TagRef] | None = None
    contact: ContactCreate | None = None
    contact_id: int | None = None
    company: CompanyCreate | None = None

    @model_validator(mode="after")
    def _one_contact(self) -> ComplexLeadCreate:
        if self.contact is not None and self.contact_id is not None:
            raise ValueError("give contact (to create one) or contact_id (to link one), not both")
        return self

    def to_api(self) -> dict[str, Any]:
        body = super().to_api()
        body.pop("contact", None)
        body.pop("contact_id", None)
        body.pop("company", None)
        embedded: dict[str, Any] = {}
        tags = body.pop("tags", None)
        if tags is not None:
            embedded["tags"] = tags
        if self.contact is not None:
            embedded["contacts"] = [self.contact.to_api()]
        elif self.contact_id is not None:
            embedded["contacts"] = [{"id": self.contact_id}]
        if self.company is not None:
            embedded["companies"] = [self.company.to_api()]
        if embedded:
            body["_embedded"] = embedded
        return body
