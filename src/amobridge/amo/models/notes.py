"""Notes on leads, contacts, companies and customers (``/api/v4/{entity_type}/notes``)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import Field

from amobridge.amo.models.base import AmoInput, AmoModel, NullableDict


class NoteType(StrEnum):
    """amoCRM's note types. A type not listed here is kept as a plain string."""

    COMMON = "common"
    CALL_IN = "call_in"
    CALL_OUT = "call_out"
    SERVICE_MESSAGE = "service_message"
    EXTENDED_SERVICE_MESSAGE = "extended_service_message"
    MESSAGE_CASHIER = "message_cashier"
    GEOLOCATION = "geolocation"
    SMS_IN = "sms_in"
    SMS_OUT = "sms_out"
    ATTACHMENT = "attachment"
    INVOICE_PAID = "invoice_paid"
    KEY_ACTION_COMPLETED = "key_action_completed"


class Note(AmoModel):
    id: int
    entity_id: int | None = None
    note_type: NoteType | str | None = Field(default=None, union_mode="left_to_right")
    params: NullableDict = Field(default_factory=dict)
    responsible_user_id: int | None = None
    group_id: int | None = None
    created_by: int | None = None
    updated_by: int | None = None
    created_at: int | None = None
    updated_at: int | None = None
    account_id: int | None = None
    links: NullableDict = Field(default_factory=dict, alias="_links")

    @property
    def text(self) -> str | None:
        """``params.text`` (common and service notes), if present."""
        value = self.params.get("text")
        return value if isinstance(value, str) else None


class NoteCreate(AmoInput):
    """A new note on the entity ``entity_id``; :meth:`common` builds a plain text note."""

    entity_id: int
    note_type: NoteType | str = Field(union_mode="left_to_right")
    params: dict[str, Any]
    created_by: int | None = None
    responsible_user_id: int | None = None
    is_need_to_trigger_digital_pipeline: bool | None = None
    request_id: str | None = None

    @classmethod
    def common(cls, entity_id: int, text: str) -> NoteCreate:
        return cls(entity_id=entity_id, note_type=NoteType.COMMON, params={"text": text})
