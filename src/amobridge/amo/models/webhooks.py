"""Webhook subscriptions (``/api/v4/webhooks``): where amoCRM POSTs changes, and which ones."""

from __future__ import annotations

from pydantic import Field

from amobridge.amo.models.base import AmoModel, NullableDict, NullableList


class WebhookSubscription(AmoModel):
    """``settings`` lists events such as ``add_lead``, ``update_contact``, ``status_lead``."""

    id: int | None = None
    destination: str
    settings: NullableList[str] = Field(default_factory=list)
    sort: int | None = None
    disabled: bool | None = None
    account_id: int | None = None
    created_by: int | None = None
    created_at: int | None = None
    updated_at: int | None = None
    links: NullableDict = Field(default_factory=dict, alias="_links")
