"""Typed models of amoCRM's entities: tolerant of its nulls, keeping fields they do not name."""

from amobridge.amo.models.account import Account, User
from amobridge.amo.models.base import (
    AmoInput,
    AmoModel,
    ComplexCreated,
    CreatedEntity,
    EntityLink,
    EntityType,
    Page,
    UpdatedEntity,
)
from amobridge.amo.models.companies import Company, CompanyCreate, CompanyUpdate
from amobridge.amo.models.contacts import Contact, ContactCreate, ContactUpdate
from amobridge.amo.models.custom_fields import (
    CustomField,
    CustomFieldClear,
    CustomFieldEnum,
    CustomFieldType,
    CustomFieldValue,
    CustomFieldValueItem,
    EmailType,
    PhoneType,
    email_field,
    field_value,
    phone_field,
)
from amobridge.amo.models.leads import ComplexLeadCreate, Lead, LeadCreate, LeadUpdate
from amobridge.amo.models.notes import Note, NoteCreate, NoteType
from amobridge.amo.models.pipelines import LOST_STATUS_ID, WON_STATUS_ID, Pipeline, Status
from amobridge.amo.models.tags import Tag, TagCreate, TagRef
from amobridge.amo.models.webhooks import WebhookSubscription

__all__ = [
    "LOST_STATUS_ID",
    "WON_STATUS_ID",
    "Account",
    "AmoInput",
    "AmoModel",
    "Company",
    "CompanyCreate",
    "CompanyUpdate",
    "ComplexCreated",
    "ComplexLeadCreate",
    "Contact",
    "ContactCreate",
    "ContactUpdate",
    "CreatedEntity",
    "CustomField",
    "CustomFieldClear",
    "CustomFieldEnum",
    "CustomFieldType",
    "CustomFieldValue",
    "CustomFieldValueItem",
    "EmailType",
    "EntityLink",
    "EntityType",
    "Lead",
    "LeadCreate",
    "LeadUpdate",
    "Note",
    "NoteCreate",
    "NoteType",
    "Page",
    "PhoneType",
    "Pipeline",
    "Status",
    "Tag",
    "TagCreate",
    "TagRef",
    "UpdatedEntity",
    "User",
    "WebhookSubscription",
    "email_field",
    "field_value",
    "phone_field",
]
