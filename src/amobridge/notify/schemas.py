"""Bodies and parameters of the event routes (``/event-subscriptions``, ``/event-deliveries``),
with the examples the OpenAPI document shows, and an example body of every event type."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Path, Query
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from amobridge.notify.service import Endpoint
from amobridge.params import (
    Page,
    cursor_query,
    id_path,
    limit_query,
    state_filter,
)
from amobridge.storage.tables import Event, EventDelivery, EventDeliveryAttempt

EventType = Literal[
    "lead.created",
    "lead.updated",
    "lead.stage_changed",
    "lead.deleted",
    "lead.sync_failed",
    "connection.reauth_required",
    "connection.disconnected",
]
TypeFilter = Literal[
    "lead.created",
    "lead.updated",
    "lead.stage_changed",
    "lead.deleted",
    "lead.sync_failed",
    "connection.reauth_required",
    "connection.disconnected",
    "lead.*",
    "connection.*",
]
DeliveryState = Literal["pending", "delivered", "failed", "cancelled"]
Source = Literal["api", "settings", "legacy"]


def _endpoint_url(value: str) -> str:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
        usable = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        usable = False
    if not usable or any(ord(char) < 0x21 for char in value):
        raise ValueError("must be an absolute http:// or https:// URL with a host, no spaces")
    return value


class SubscriptionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    url: Annotated[str, AfterValidator(_endpoint_url)] = Field(
        max_length=2000, description="The host app's endpoint events are POSTed to"
    )
    types: list[TypeFilter] | None = Field(
        default=None,
        max_length=20,
        description="The event types it gets (`lead.*`, `connection.*` for a family); "
        "null or absent: every type",
    )
    description: str | None = Field(
        default=None, max_length=255, description="A note for the operator"
    )


class SubscriptionOut(BaseModel):
    """An endpoint of the host app (never its secret: that is shown once, at creation)."""

    id: str = Field(
        description="Its id; `settings` is AMOBRIDGE_EVENTS__URL, `legacy-reauth` "
        "AMOBRIDGE_HOOKS__REAUTH_CALLBACK_URL"
    )
    url: str
    types: list[str] | None = Field(description="The event types it gets; null: every type")
    description: str | None
    source: Source = Field(
        description="`api` (POST /event-subscriptions), `settings` or `legacy` (from the "
        "settings: change them there)"
    )
    created_at: datetime | None = Field(description="null for the settings' endpoints")


class SubscriptionCreated(SubscriptionOut):
    secret: str = Field(
        description="The signing secret (`whsec_…`) for its Standard Webhooks verifier. Shown "
        "this once: store it now; amobridge keeps it encrypted and never shows it again"
    )


class SubscriptionList(BaseModel):
    items: list[SubscriptionOut]


class AttemptOut(BaseModel):
    """One POST to the host app, as the delivery log keeps it."""

    attempt: int = Field(description="The job's attempt number (1 is the first)")
    started_at: datetime
    status_code: int | None = Field(description="The HTTP status; null when none came")
    duration_ms: int
    error: str | None = Field(
        description="What went wrong (a timeout, a network error, or the status with the "
        "start of the answer's body); null when delivered"
    )


class DeliveryOut(BaseModel):
    """One event to one endpoint."""

    id: int
    event_id: str = Field(description="The event's id: the `webhook-id` header of every attempt")
    event_type: EventType
    owner: str | None
    subscription_id: str
    url: str = Field(description="Where it goes (the endpoint's URL when last attempted)")
    state: DeliveryState = Field(
        description="`pending` (queued or waiting for a retry, see `next_attempt_at`), "
        "`delivered` (a 2xx came), `failed` (out of attempts: `POST "
        "/event-deliveries/{id}/retry`) or `cancelled` (its subscription was deleted)"
    )
    attempts: int = Field(description="POSTs made so far")
    job_id: int | None = Field(description="The `notify.deliver` job that sends it (GET /jobs)")
    last_status: int | None = Field(description="The HTTP status of the last attempt")
    last_error: str | None
    next_attempt_at: datetime | None = Field(description="When a pending one is tried next")
    created_at: datetime
    updated_at: datetime
    delivered_at: datetime | None


class EventOut(BaseModel):
    id: str
    type: EventType
    timestamp: datetime = Field(description="When the change committed")
    data: dict[str, Any]


class DeliveryDetail(DeliveryOut):
    event: EventOut
    log: list[AttemptOut] = Field(description="Every attempt, oldest first")


class DeliveryPage(Page[DeliveryOut]):
    pass


def subscription_out(endpoint: Endpoint) -> dict[str, Any]:
    return {
        "id": endpoint.id,
        "url": endpoint.url,
        "types": list(endpoint.types) if endpoint.types is not None else None,
        "description": endpoint.description,
        "source": endpoint.source,
        "created_at": endpoint.created_at,
    }


def delivery_out(row: EventDelivery) -> dict[str, Any]:
    return {
        "id": row.id,
        "event_id": row.event_id,
        "event_type": row.event_type,
        "owner": row.owner,
        "subscription_id": row.subscription_id,
        "url": row.url,
        "state": row.state,
        "attempts": row.attempts,
        "job_id": row.job_id,
        "last_status": row.last_status,
        "last_error": row.last_error,
        "next_attempt_at": row.next_attempt_at,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "delivered_at": row.delivered_at,
    }


def delivery_detail(
    row: EventDelivery, event: Event, attempts: list[EventDeliveryAttempt]
) -> dict[str, Any]:
    return {
        **delivery_out(row),
        "event": {
            "id": event.id,
            "type": event.type,
            "timestamp": event.created_at,
            "data": event.data,
        },
        "log": [
            {
                "attempt": a.attempt,
                "started_at": a.started_at,
                "status_code": a.status_code,
                "duration_ms": a.duration_ms,
                "error": a.error,
            }
            for a in attempts
        ],
    }


# --- parameters ----------------------------------------------------------------------------------

TypeQuery = Annotated[
    EventType | None,
    Query(
        alias="type",
        description="Only deliveries of this event type",
        openapi_examples={"stage": {"summary": "Stage changes", "value": "lead.stage_changed"}},
    ),
]
StateQuery = Annotated[DeliveryState | None, state_filter("deliveries")]
SubscriptionQuery = Annotated[
    str | None,
    Query(
        alias="subscription",
        min_length=1,
        max_length=32,
        description="Only deliveries to this subscription",
        openapi_examples={"settings": {"summary": "AMOBRIDGE_EVENTS__URL", "value": "settings"}},
    ),
]
OwnerQuery = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=255,
        description="Only deliveries of this owner's events",
        openapi_examples={"owner": {"summary": "An owner", "value": "user-42"}},
    ),
]
CursorQuery = Annotated[str | None, cursor_query(max_length=19)]
LimitQuery = Annotated[int, limit_query("Deliveries")]
DeliveryIdPath = Annotated[int, id_path("delivery")]
SubscriptionIdPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=32,
        description="The subscription's id",
        openapi_examples={
            "id": {"summary": "A subscription", "value": "6c1f0e3c9a7d4e2f8c6b1a0d9e8f7a6b"}
        },
    ),
]


# --- example events (the docs show the same) -----------------------------------------------------

_OWNER = "user-42"
_CONNECTION = "9f0c2b7e4d1a4c5e8b3a6f2d1e0c9b8a"
_LEAD = {
    "id": "01HZX3QK5W8E2M7R4T6Y9U1I0P",
    "amo_id": 31415926,
    "external_id": "order-1001",
    "name": "Заявка с сайта",
    "price": 15000,
    "pipeline_id": 6000001,
    "stage_id": 50000003,
    "responsible_user_id": 9000001,
    "tags": ["site"],
    "state": "synced",
    "deleted": False,
    "amo_updated_at": "2026-05-01T09:30:02Z",
    "updated_at": "2026-05-01T09:30:02Z",
}
_BASE = {"owner": _OWNER, "connection_id": _CONNECTION}
EVENT_EXAMPLES: dict[str, dict[str, Any]] = {
    "lead.created": {
        **_BASE,
        "lead": _LEAD,
        "source": "amobridge",
    },
    "lead.updated": {
        **_BASE,
        "lead": {**_LEAD, "price": 18000},
        "changed": ["price"],
        "source": "amocrm",
    },
    "lead.stage_changed": {
        **_BASE,
        "lead": {**_LEAD, "stage_id": 142},
        "from": {"pipeline_id": 6000001, "stage_id": 50000003},
        "to": {"pipeline_id": 6000001, "stage_id": 142},
        "source": "amocrm",
    },
    "lead.deleted": {
        **_BASE,
        "lead": {**_LEAD, "deleted": True},
        "source": "amocrm",
    },
    "lead.sync_failed": {
        **_BASE,
        "lead": {**_LEAD, "amo_id": None, "state": "failed"},
        "operation": "create",
        "error": "amoCRM refused the item: price: the value must be a number",
    },
    "connection.reauth_required": {
        **_BASE,
        "reason": "amoCRM refused the refresh token (Token has been revoked)",
        "fix": "https://connect.example.com/amocrm/auth?owner=user-42",
    },
    "connection.disconnected": {
        **_BASE,
        "domain": "mycompany.amocrm.ru",
        "by": "api",
        "fix": "https://connect.example.com/amocrm/auth?owner=user-42",
    },
}

_SUBSCRIPTION = {
    "id": "6c1f0e3c9a7d4e2f8c6b1a0d9e8f7a6b",
    "url": "https://app.example.com/hooks/amobridge",
    "types": ["lead.*"],
    "description": "CRM changes for the app",
    "source": "api",
    "created_at": "2026-05-01T09:00:00Z",
}
SUBSCRIPTION_CREATE_EXAMPLES: dict[str, dict[str, Any]] = {
    "leads": {
        "summary": "Lead events only",
        "value": {
            "url": "https://app.example.com/hooks/amobridge",
            "types": ["lead.*"],
            "description": "CRM changes for the app",
        },
    },
    "all": {"summary": "Every event", "value": {"url": "https://app.example.com/hooks/all"}},
}
SUBSCRIPTION_CREATED_EXAMPLES: dict[str, dict[str, Any]] = {
    "created": {
        "summary": "Created: store the secret now",
        "value": {**_SUBSCRIPTION, "secret": "whsec_BwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyAhIiMkJSY="},
    }
}
SUBSCRIPTION_LIST_EXAMPLES: dict[str, dict[str, Any]] = {
    "list": {
        "summary": "The settings' endpoint and one added through the API",
        "value": {
            "items": [
                {
                    "id": "settings",
                    "url": "https://app.example.com/hooks/events",
                    "types": None,
                    "description": None,
                    "source": "settings",
                    "created_at": None,
                },
                _SUBSCRIPTION,
            ]
        },
    }
}
_DELIVERY = {
    "id": 1042,
    "event_id": "evt_5b1f0e3c9a7d4e2f8c6b1a0d9e8f7a6b",
    "event_type": "lead.stage_changed",
    "owner": _OWNER,
    "subscription_id": "settings",
    "url": "https://app.example.com/hooks/events",
    "state": "delivered",
    "attempts": 3,
    "job_id": 2087,
    "last_status": 200,
    "last_error": None,
    "next_attempt_at": None,
    "created_at": "2026-05-01T09:30:02Z",
    "updated_at": "2026-05-01T09:33:05Z",
    "delivered_at": "2026-05-01T09:33:05Z",
}
_FAILED = {
    **_DELIVERY,
    "id": 1043,
    "event_type": "lead.created",
    "state": "failed",
    "attempts": 8,
    "last_status": 503,
    "last_error": "HTTP 503: upstream unavailable",
    "delivered_at": None,
}
_LOG = [
    {
        "attempt": 1,
        "started_at": "2026-05-01T09:30:02Z",
        "status_code": 500,
        "duration_ms": 41,
        "error": "HTTP 500: Internal Server Error",
    },
    {
        "attempt": 2,
        "started_at": "2026-05-01T09:30:33Z",
        "status_code": None,
        "duration_ms": 10004,
        "error": "no answer within 10 s (AMOBRIDGE_EVENTS__TIMEOUT_SECONDS)",
    },
    {
        "attempt": 3,
        "started_at": "2026-05-01T09:33:05Z",
        "status_code": 200,
        "duration_ms": 37,
        "error": None,
    },
]
DELIVERY_PAGE_EXAMPLES: dict[str, dict[str, Any]] = {
    "page": {
        "summary": "A page of deliveries",
        "value": {"items": [_FAILED, _DELIVERY], "next_cursor": "1042"},
    }
}
DELIVERY_EXAMPLES: dict[str, dict[str, Any]] = {
    "delivered": {
        "summary": "Delivered on the third attempt",
        "value": {
            **_DELIVERY,
            "event": {
                "id": _DELIVERY["event_id"],
                "type": "lead.stage_changed",
                "timestamp": "2026-05-01T09:30:02Z",
                "data": EVENT_EXAMPLES["lead.stage_changed"],
            },
            "log": _LOG,
        },
    }
}
RETRIED_EXAMPLES: dict[str, dict[str, Any]] = {
    "retried": {
        "summary": "Queued again",
        "value": {
            **_FAILED,
            "state": "pending",
            "job_id": 2101,
            "next_attempt_at": "2026-05-02T08:00:00Z",
            "updated_at": "2026-05-02T08:00:00Z",
        },
    }
}
