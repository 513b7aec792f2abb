"""Custom fields: their definitions, the values on entities, and helpers to read and build them.

A value on an entity is ``{field_id, field_name, field_code, field_type, values: [{value, enum_id,
enum_code}]}``. Requests name a field by ``field_id`` or ``field_code`` (``PHONE``, ``EMAIL``) and
an option by ``enum_id`` or ``enum_code`` (phones: WORK, MOB, HOME, …; e-mails: WORK, PRIV, OTHER).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Discriminator, Field, model_validator
from pydantic import Tag as Variant

from amobridge.amo.models.base import AmoModel, NullableDict, NullableList


class CustomFieldType(StrEnum):
    """amoCRM's field types. A type not listed here is kept as a plain string."""

    TEXT = "text"
    NUMERIC = "numeric"
    CHECKBOX = "checkbox"
    SELECT = "select"
    MULTISELECT = "multiselect"
    MULTITEXT = "multitext"
    DATE = "date"
    DATE_TIME = "date_time"
    BIRTHDAY = "birthday"
    URL = "url"
    TEXTAREA = "textarea"
    RADIOBUTTON = "radiobutton"
    STREETADDRESS = "streetaddress"
    SMART_ADDRESS = "smart_address"
    LEGAL_ENTITY = "legal_entity"
    PRICE = "price"
    CATEGORY = "category"
    ITEMS = "items"
    TRACKING_DATA = "tracking_data"
    LINKED_ENTITY = "linked_entity"
    CHAINED_LIST = "chained_list"
    MONETARY = "monetary"
    FILE = "file"
    PAYER = "payer"
    SUPPLIER = "supplier"


class PhoneType(StrEnum):
    """``enum_code`` of a PHONE value."""

    WORK = "WORK"
    WORKDD = "WORKDD"
    MOB = "MOB"
    FAX = "FAX"
    HOME = "HOME"
    OTHER = "OTHER"


class EmailType(StrEnum):
    """``enum_code`` of an EMAIL value."""

    WORK = "WORK"
    PRIV = "PRIV"
    OTHER = "OTHER"


PHONE = "PHONE"
EMAIL = "EMAIL"


class CustomFieldEnum(AmoModel):
    """One option of a select / multiselect / multitext field."""

    id: int
    value: str | None = None
    sort: int | None = None
    code: str | None = None


class CustomField(AmoModel):
    """A field definition, from ``GET /api/v4/{entity_type}/custom_fields``."""

    id: int
    name: str | None = None
    type: CustomFieldType | str | None = Field(default=None, union_mode="left_to_right")
    code: str | None = None
    sort: int | None = None
    entity_type: str | None = None
    account_id: int | None = None
    group_id: str | int | None = None
    is_api_only: bool | None = None
    is_predefined: bool | None = None
    is_deletable: bool | None = None
    enums: NullableList[CustomFieldEnum] = Field(default_factory=list)
    required_statuses: NullableList[Any] = Field(default_factory=list)
    settings: NullableDict = Field(default_factory=dict)

    def enum(self, value_or_code: str) -> CustomFieldEnum | None:
        """The option whose ``code`` or ``value`` is ``value_or_code`` (case-insensitive)."""
        wanted = value_or_code.casefold()
        for option in self.enums:
            if option.code is not None and option.code.casefold() == wanted:
                return option
        for option in self.enums:
            if option.value is not None and option.value.casefold() == wanted:
                return option
        return None


class CustomFieldValueItem(AmoModel):
    """One value of a field: ``{value, enum_id, enum_code}`` (plus e.g. ``subtype`` for addresses)."""

    value: Any = None
    enum_id: int | None = None
    enum_code: str | None = None


def _value_items(value: Any) -> Any:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [
            item if isinstance(item, dict | CustomFieldValueItem) else {"value": item}
            for item in value
        ]
    return value


class CustomFieldValue(AmoModel):
    """A field's values on an entity; build one for a request with :func:`field_value`,
    :func:`phone_field` or :func:`email_field`."""

    field_id: int | None = None
    field_name: str | None = None
    field_code: str | None = None
    field_type: CustomFieldType | str | None = Field(default=None, union_mode="left_to_right")
    values: Annotated[list[CustomFieldValueItem], BeforeValidator(_value_items)] = Field(
        default_factory=list
    )

    @model_validator(mode="after")
    def _names_a_field(self) -> CustomFieldValue:
        if self.field_id is None and self.field_code is None and self.field_name is None:
            raise ValueError("a custom field value needs field_id or field_code")
        return self

    def matches(self, field: int | str) -> bool:
        """True when this is the field ``field``: an id, or a code / name (case-insensitive)."""
        if isinstance(field, int):
            return self.field_id == field
        return _same(self.field_code, field) or _same(self.field_name, field)

    @property
    def first(self) -> Any:
        """The first value, or None."""
        return self.values[0].value if self.values else None


class CustomFieldClear(AmoModel):
    """Clears a field on update: sends ``{"field_id": …, "values": null}``."""

    field_id: int | None = None
    field_code: str | None = None
    values: Literal[None] = None

    @model_validator(mode="after")
    def _names_a_field(self) -> CustomFieldClear:
        if self.field_id is None and self.field_code is None:
            raise ValueError("clearing a custom field needs field_id or field_code")
        return self

    def model_post_init(self, context: Any, /) -> None:
        # ``"values": null`` is the whole point: send it even though it is the default.
        self.__pydantic_fields_set__.add("values")


def _set_or_clear(value: Any) -> str:
    if isinstance(value, CustomFieldClear):
        return "clear"
    if isinstance(value, dict) and "values" in value and value["values"] is None:
        return "clear"  # a plain ``{"field_id": 1, "values": None}`` clears, as in amoCRM
    return "set"


# What request models accept in ``custom_fields_values``: values to set, or fields to clear.
CustomFieldInput = Annotated[
    Annotated[CustomFieldValue, Variant("set")] | Annotated[CustomFieldClear, Variant("clear")],
    Discriminator(_set_or_clear),
]


def field_value(
    field: int | str,
    *values: Any,
    enum_id: int | None = None,
    enum_code: str | None = None,
) -> CustomFieldValue:
    """Values for the field ``field`` (an id, or a code such as ``"PHONE"``) for a request.

    ``field_value(512345, "Сайт")``; ``field_value(512346, enum_id=7001)`` picks a select option.
    """
    items: list[CustomFieldValueItem] = []
    for value in values:
        item: dict[str, Any] = {"value": value}
        if enum_id is not None:
            item["enum_id"] = enum_id
        if enum_code is not None:
            item["enum_code"] = enum_code
        items.append(CustomFieldValueItem.model_validate(item))
    if not values and (enum_id is not None or enum_code is not None):
        option: dict[str, Any] = {}
        if enum_id is not None:
            option["enum_id"] = enum_id
        if enum_code is not None:
            option["enum_code"] = enum_code
        items.append(CustomFieldValueItem.model_validate(option))
    if not items:
        raise ValueError("field_value needs at least one value (use CustomFieldClear to clear)")
    if isinstance(field, bool):
        raise TypeError("field must be a field id or a field code")
    key = "field_id" if isinstance(field, int) else "field_code"
    return CustomFieldValue.model_validate({key: field, "values": items})


def phone_field(*phones: str, enum_code: PhoneType | str = PhoneType.WORK) -> CustomFieldValue:
    """The PHONE field with ``phones`` (``values[{value, enum_code}]``), e.g. for a new contact."""
    return field_value(PHONE, *phones, enum_code=str(enum_code))


def email_field(*emails: str, enum_code: EmailType | str = EmailType.WORK) -> CustomFieldValue:
    """The EMAIL field with ``emails``."""
    return field_value(EMAIL, *emails, enum_code=str(enum_code))


class WithCustomFields(AmoModel):
    """An entity with ``custom_fields_values`` (``null`` reads as ``[]``)."""

    custom_fields_values: NullableList[CustomFieldValue] = Field(default_factory=list)

    def custom_field(self, field: int | str) -> CustomFieldValue | None:
        """The values of field ``field`` (an id, or a code / name, case-insensitive), if any.

        A code wins over a name: ``"PHONE"`` finds the PHONE field even if another is named so.
        """
        if isinstance(field, int):
            return next((cf for cf in self.custom_fields_values if cf.field_id == field), None)
        by_code = (cf for cf in self.custom_fields_values if _same(cf.field_code, field))
        by_name = (cf for cf in self.custom_fields_values if _same(cf.field_name, field))
        return next(by_code, None) or next(by_name, None)

    def custom_field_values(self, field: int | str) -> list[Any]:
        """Every value of field ``field`` (``[]`` when the entity has none)."""
        found = self.custom_field(field)
        return [item.value for item in found.values] if found else []

    def custom_field_value(self, field: int | str) -> Any:
        """The first value of field ``field``, or None."""
        found = self.custom_field(field)
        return found.first if found else None


class CrmEntity(WithCustomFields):
    """What leads, contacts and companies share in amoCRM's replies."""

    id: int
    name: str | None = None
    responsible_user_id: int | None = None
    group_id: int | None = None
    created_by: int | None = None
    updated_by: int | None = None
    created_at: int | None = None
    updated_at: int | None = None
    closest_task_at: int | None = None
    is_deleted: bool | None = None
    account_id: int | None = None
    links: NullableDict = Field(default_factory=dict, alias="_links")


class WithContactInfo(CrmEntity):
    """Contacts and companies: their PHONE and EMAIL multitext values."""

    @property
    def phones(self) -> list[str]:
        """Every phone number, as stored (not normalised), in amoCRM's order."""
        return _strings(self.custom_field_values(PHONE))

    @property
    def emails(self) -> list[str]:
        """Every e-mail address, as stored."""
        return _strings(self.custom_field_values(EMAIL))


def _same(known: str | None, wanted: str) -> bool:
    return known is not None and known.casefold() == wanted.casefold()


def _strings(values: list[Any]) -> list[str]:
    return [str(value) for value in values if value is not None and str(value).strip()]
