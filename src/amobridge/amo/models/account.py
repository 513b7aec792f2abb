"""The account (``GET /api/v4/account``) and its users (``GET /api/v4/users``)."""

from __future__ import annotations

from pydantic import Field

from amobridge.amo.models.base import AmoModel, NullableDict


class Account(AmoModel):
    """The account the token belongs to. Parts asked for with ``with=`` are on ``embedded``."""

    id: int
    name: str | None = None
    subdomain: str | None = None
    current_user_id: int | None = None
    created_at: int | None = None
    created_by: int | None = None
    updated_at: int | None = None
    updated_by: int | None = None
    country: str | None = None
    currency: str | None = None
    currency_symbol: str | None = None
    customers_mode: str | None = None
    is_unsorted_on: bool | None = None
    is_loss_reason_enabled: bool | None = None
    is_helpbot_enabled: bool | None = None
    is_technical_account: bool | None = None
    contact_name_display_order: int | None = None
    mobile_feature_version: int | None = None
    amojo_id: str | None = None
    uuid: str | None = None
    version: int | None = None
    embedded: NullableDict = Field(default_factory=dict, alias="_embedded")
    links: NullableDict = Field(default_factory=dict, alias="_links")


class User(AmoModel):
    id: int
    name: str | None = None
    email: str | None = None
    lang: str | None = None
    rights: NullableDict = Field(default_factory=dict)
    embedded: NullableDict = Field(default_factory=dict, alias="_embedded")
    links: NullableDict = Field(default_factory=dict, alias="_links")

    @property
    def is_admin(self) -> bool | None:
        """``rights.is_admin``, when amoCRM sent it."""
        value = self.rights.get("is_admin")
        return value if isinstance(value, bool) else None
