"""Answers and parameters of the webhook routes, with the examples the OpenAPI document shows."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Query
from pydantic import BaseModel, Field

from amobridge.params import (
    Page,
    cursor_query,
    id_path,
    limit_query,
    owner_filter,
    state_filter,
)
from amobridge.storage.tables import WebhookDelivery, WebhookSubscription

DeliveryState = Literal["received", "processed", "failed", "duplicate"]
SubscriptionState = Literal["pending", "active", "failed", "unsubscribed", "none"]

STATE_DESCRIPTION = (
    "`received` (stored, waiting to be applied), `processed` (applied to the mirror: `result` "
    "says what changed), `failed` (could not be read or applied: `error` says why; replay it "
    "once fixed) or `duplicate` (a redelivery of `duplicate_of`: stored once, never applied)"
)


class Accepted(BaseModel):
    """What amoCRM gets back (it reads only the status): the delivery is committed."""

    accepted: bool = Field(description="Always true: the body is stored")
    delivery_id: int = Field(description="The stored delivery")
    duplicate_of: int | None = Field(
        description="Set for a redelivery: the delivery it repeats (it is not applied again)"
    )


class DeliveryOut(BaseModel):
    """One received webhook body and what became of it."""

    id: int = Field(description="The delivery's id (newer deliveries have larger ids)")
    connection_id: str = Field(description="The connection whose URL secret it came to")
    owner: str = Field(description="That connection's owner")
    received_at: datetime = Field(description="When it was stored (before it was answered)")
    state: DeliveryState = Field(description=STATE_DESCRIPTION)
    content_type: str | None = Field(description="As sent (amoCRM: form-urlencoded)")
    headers: dict[str, str] = Field(
        description="The request headers kept: amoCRM's request id, the user agent"
    )
    body_hash: str = Field(description="SHA-256 of the body: a redelivery has the same")
    body: str | None = Field(
        description="The body as text (bytes that are no UTF-8 shown as �); null for a duplicate"
    )
    body_base64: str | None = Field(
        description="The exact bytes, base64, when the body is not valid UTF-8 (else null)"
    )
    size: int = Field(description="The body's length in bytes")
    duplicate_of: int | None = Field(description="The delivery a duplicate repeats")
    attempts: int = Field(description="How often it was applied (a replay counts)")
    error: str | None = Field(description="Why it failed")
    result: dict[str, Any] | None = Field(
        description="What applying it did: `applied` (changed the mirror), `created`, `echo` "
        "(brought nothing new: amobridge's own change coming back), `stale` (older than the "
        "mirror), `ignored` (entities the mirror does not keep), `skipped` (items that could "
        "not be read) and `changes`"
    )
    processed_at: datetime | None = Field(description="When it was applied or failed")


class DeliveryPage(Page[DeliveryOut]):
    pass


class SubscriptionOut(BaseModel):
    """What amobridge knows of the owner's webhook subscription in amoCRM."""

    owner: str
    connection_id: str | None = Field(description="null: the owner has no connection")
    state: SubscriptionState = Field(
        description="`pending` (the subscribe job is queued), `active`, `failed` (amoCRM "
        "refused: see `last_error`), `unsubscribed` (disconnected) or `none` (never subscribed: "
        "AMOBRIDGE_WEBHOOKS__AUTO_SUBSCRIBE is off, or the connection predates it)"
    )
    destination: str | None = Field(
        description="Where amoCRM sends, its secret shortened (the full URL is never shown)"
    )
    amo_webhook_id: int | None
    settings: list[str] = Field(description="The events subscribed")
    subscribed_at: datetime | None
    checked_at: datetime | None = Field(description="When amoCRM was last asked about it")
    restored_at: datetime | None = Field(
        description="When amobridge last found it disabled or removed and subscribed it again"
    )
    restores: int = Field(description="How often that happened")
    last_error: str | None


def delivery_out(row: WebhookDelivery) -> dict[str, Any]:
    body = row.body
    text: str | None = None
    raw: str | None = None
    if body is not None:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            text = body.decode("utf-8", "replace")
            raw = base64.b64encode(body).decode()
    return {
        "id": row.id,
        "connection_id": row.connection_id,
        "owner": row.owner,
        "received_at": row.received_at,
        "state": row.state,
        "content_type": row.content_type,
        "headers": dict(row.headers or {}),
        "body_hash": row.body_hash,
        "body": text,
        "body_base64": raw,
        "size": len(body) if body is not None else 0,
        "duplicate_of": row.duplicate_of,
        "attempts": row.attempts,
        "error": row.error,
        "result": row.result,
        "processed_at": row.processed_at,
    }


def subscription_out(
    owner: str,
    connection_id: str | None,
    row: WebhookSubscription | None,
    destination: str | None,
) -> dict[str, Any]:
    return {
        "owner": owner,
        "connection_id": connection_id,
        "state": row.state if row is not None else "none",
        "destination": destination,
        "amo_webhook_id": row.amo_webhook_id if row is not None else None,
        "settings": list(row.settings or []) if row is not None else [],
        "subscribed_at": row.subscribed_at if row is not None else None,
        "checked_at": row.checked_at if row is not None else None,
        "restored_at": row.restored_at if row is not None else None,
        "restores": row.restores if row is not None else 0,
        "last_error": row.last_error if row is not None else None,
    }


# --- parameters ----------------------------------------------------------------------------------

OwnerFilter = Annotated[str | None, owner_filter("deliveries")]
OwnerQuery = Annotated[
    str | None,
    Query(
        max_length=255,
        description="The owner (an app or admin key must name one; a user's token is its own)",
        openapi_examples={"owner": {"summary": "An owner", "value": "user-42"}},
    ),
]
StateFilter = Annotated[DeliveryState | None, state_filter("deliveries")]
CursorQuery = Annotated[str | None, cursor_query()]
LimitQuery = Annotated[int, limit_query("Deliveries")]
DeliveryIdPath = Annotated[int, id_path("delivery")]


# --- examples ------------------------------------------------------------------------------------

FORM_EXAMPLE = (
    "account%5Bsubdomain%5D=acme&account%5Bid%5D=30739638"
    "&account%5B_links%5D%5Bself%5D=https%3A%2F%2Facme.amocrm.ru"
    "&leads%5Bstatus%5D%5B0%5D%5Bid%5D=1190401&leads%5Bstatus%5D%5B0%5D%5Bstatus_id%5D=142"
    "&leads%5Bstatus%5D%5B0%5D%5Bold_status_id%5D=53861254"
    "&leads%5Bstatus%5D%5B0%5D%5Bpipeline_id%5D=6254262"
    "&leads%5Bstatus%5D%5B0%5D%5Bupdated_at%5D=1672189300"
)
FORM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "amoCRM's form fields with PHP-style bracket keys, every value a string: "
    "account[id], account[subdomain], then {entity}[{action}][{i}][{field}]",
    "additionalProperties": {"type": "string"},
}
FORM_FIELDS_EXAMPLE = {
    "account[subdomain]": "acme",
    "account[id]": "30739638",
    "leads[status][0][id]": "1190401",
    "leads[status][0][status_id]": "142",
    "leads[status][0][pipeline_id]": "6254262",
    "leads[status][0][updated_at]": "1672189300",
}
ACCEPTED_EXAMPLES = {
    "stored": {
        "summary": "Stored, to be applied",
        "value": {"accepted": True, "delivery_id": 1042, "duplicate_of": None},
    },
    "duplicate": {
        "summary": "A redelivery: stored once, applied once",
        "value": {"accepted": True, "delivery_id": 1043, "duplicate_of": 1042},
    },
}

_DELIVERY: dict[str, Any] = {
    "id": 1042,
    "connection_id": "9f0c2b7e4d1a4c5e8b3a6f2d1e0c9b8a",
    "owner": "user-42",
    "received_at": "2026-05-01T09:30:00Z",
    "content_type": "application/x-www-form-urlencoded",
    "headers": {
        "x-amocrm-requestid": "4c1f3f9e-8d1b-4a55-9a43-3b8f0d0c2e71",
        "user-agent": "amoCRM-Webhooks/3.0",
    },
    "body_hash": "5b1f0e3c9a7d4e2f8c6b1a0d9e8f7a6b5b1f0e3c9a7d4e2f8c6b1a0d9e8f7a6b",
    "body": "account[subdomain]=acme&account[id]=30739638&leads[status][0][id]=1190401"
    "&leads[status][0][status_id]=142&leads[status][0][updated_at]=1672189300",
    "body_base64": None,
    "size": 146,
    "duplicate_of": None,
    "attempts": 1,
    "error": None,
    "processed_at": "2026-05-01T09:30:01Z",
}
PROCESSED_EXAMPLE = {
    **_DELIVERY,
    "state": "processed",
    "result": {
        "applied": 1,
        "created": 0,
        "echo": 0,
        "stale": 0,
        "ignored": 0,
        "skipped": [],
        "changes": [
            {
                "entity": "leads",
                "id": "01HZX3",
                "amo_id": 1190401,
                "action": "status",
                "fields": ["status_id"],
            }
        ],
    },
}
ECHO_EXAMPLE = {
    **_DELIVERY,
    "id": 1044,
    "state": "processed",
    "result": {
        "applied": 0,
        "created": 0,
        "echo": 1,
        "stale": 0,
        "ignored": 0,
        "skipped": [],
        "changes": [],
    },
}
FAILED_EXAMPLE = {
    **_DELIVERY,
    "id": 1045,
    "state": "failed",
    "body": "a=1&a=1&…",
    "size": 80_004,
    "error": "WebhookParseError: webhook body has more than 20000 fields",
    "result": None,
}
DUPLICATE_EXAMPLE = {
    **_DELIVERY,
    "id": 1043,
    "state": "duplicate",
    "body": None,
    "duplicate_of": 1042,
    "attempts": 0,
    "result": None,
    "processed_at": None,
}
RECEIVED_EXAMPLE = {**FAILED_EXAMPLE, "state": "received", "error": None, "processed_at": None}

DELIVERY_EXAMPLES = {
    "processed": {"summary": "Applied to the mirror", "value": PROCESSED_EXAMPLE},
    "echo": {"summary": "amobridge's own change, come back", "value": ECHO_EXAMPLE},
    "failed": {"summary": "Could not be read: kept, replayable", "value": FAILED_EXAMPLE},
    "duplicate": {"summary": "A redelivery", "value": DUPLICATE_EXAMPLE},
}
PAGE_EXAMPLES = {
    "page": {
        "summary": "A page, more to come",
        "value": {"items": [FAILED_EXAMPLE, PROCESSED_EXAMPLE], "next_cursor": "1042"},
    },
    "last": {"summary": "The last page", "value": {"items": [], "next_cursor": None}},
}
REPLAYED_EXAMPLES = {
    "replayed": {"summary": "Queued to be applied again", "value": RECEIVED_EXAMPLE}
}
SUBSCRIPTION_EXAMPLES = {
    "active": {
        "summary": "Subscribed",
        "value": {
            "owner": "user-42",
            "connection_id": "9f0c2b7e4d1a4c5e8b3a6f2d1e0c9b8a",
            "state": "active",
            "destination": "https://connect.example.com/webhooks/amocrm/q2V7…",
            "amo_webhook_id": 9001,
            "settings": ["add_lead", "update_lead", "status_lead"],
            "subscribed_at": "2026-05-01T09:30:00Z",
            "checked_at": "2026-05-01T10:30:00Z",
            "restored_at": None,
            "restores": 0,
            "last_error": None,
        },
    }
}
