"""Request and response bodies of the lead and contact routes, with the examples the OpenAPI
document shows. Requests are checked here before any service code runs: lengths, ranges, no
control characters (PostgreSQL refuses a NUL byte in text); names of pipelines, stages and custom
fields are checked by the service against the account's catalogue."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Header, Path, Query
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from amobridge.connect.schemas import OWNER_DESCRIPTION, DateTime, Owner, Plain

MAX_ID = 2**63 - 1  # amoCRM ids are positive 64-bit integers
MAX_PRICE = 10**12


def _no_nul(value: str) -> str:
    # Text of a custom field may hold line breaks; never a NUL or a lone surrogate.
    if any(char == "\x00" or 0xD800 <= ord(char) <= 0xDFFF for char in value):
        raise ValueError("must not contain NUL or unpaired surrogate characters")
    return value


AmoId = Annotated[int, Field(ge=1, le=MAX_ID)]
Name = Annotated[Plain, Field(max_length=255)]
Ref = Annotated[
    AmoId | Annotated[Plain, Field(min_length=1, max_length=255)],
    Field(union_mode="left_to_right"),
]
FieldText = Annotated[str, Field(max_length=4000), AfterValidator(_no_nul)]
Scalar = Annotated[
    bool
    | Annotated[int, Field(ge=-MAX_ID, le=MAX_ID)]
    | Annotated[float, Field(allow_inf_nan=False)]
    | FieldText,
    Field(union_mode="left_to_right"),
]
FieldValue = Scalar | Annotated[list[Scalar], Field(max_length=50)] | None
Tag = Annotated[Plain, Field(min_length=1, max_length=255)]
Tags = Annotated[list[Tag], Field(max_length=50)]
ExternalId = Annotated[Plain, Field(min_length=1, max_length=255)]
CustomFields = Annotated[dict[Annotated[Plain, Field(max_length=255)], FieldValue], Field()]

SyncState = Literal["pending", "synced", "failed"]
ConnectionState = Literal["active", "reauth_required", "disconnected"]

PIPELINE_DESCRIPTION = (
    "A pipeline by amoCRM id or by name (case-insensitive, ё and е alike); "
    "left out: the account's main pipeline"
)
STAGE_DESCRIPTION = (
    "A stage (amoCRM status) of the pipeline, by id or by name; left out: the pipeline's first "
    "open stage. An unknown name is 422 listing the pipeline's stages."
)
CUSTOM_FIELDS_DESCRIPTION = (
    'Values by field id, code or name (`{"Источник": "Сайт"}`); a select field takes the '
    "option's text or id, a date field unix seconds or an ISO date, `null` clears the field"
)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ContactIn(_Body):
    name: Name | None = Field(None, description="The contact's name")
    email: Annotated[Plain, Field(max_length=254)] | None = Field(
        None, description="Compared lower-cased: the key contacts are deduplicated by"
    )
    phone: Annotated[Plain, Field(max_length=64)] | None = Field(
        None,
        description="Any common format (+7 (900) 123-45-67, 89001234567): stored and compared in "
        "E.164",
    )


class LeadCreateBody(_Body):
    owner: Owner | None = Field(None, max_length=255, description=OWNER_DESCRIPTION)
    name: Name | None = Field(None, description="The lead's name")
    price: int | None = Field(None, ge=0, le=MAX_PRICE, description="The deal's budget")
    pipeline: Ref | None = Field(None, description=PIPELINE_DESCRIPTION)
    stage: Ref | None = Field(None, description=STAGE_DESCRIPTION)
    responsible_user_id: AmoId | None = Field(None, description="An amoCRM user id")
    contact: ContactIn | None = Field(
        None,
        description="The lead's main contact: an existing one with the same e-mail or phone is "
        "linked instead of a new one",
    )
    custom_fields: Annotated[CustomFields, Field(max_length=100)] | None = Field(
        None, description=CUSTOM_FIELDS_DESCRIPTION
    )
    tags: Tags | None = Field(None, description="Tag names")
    external_id: ExternalId | None = Field(
        None,
        description="Your id of the lead, unique per owner: a second POST with it answers 200 "
        "with the lead already stored",
    )


class LeadPatchBody(_Body):
    name: Name | None = None
    price: int | None = Field(None, ge=0, le=MAX_PRICE)
    pipeline: Ref | None = Field(None, description=PIPELINE_DESCRIPTION)
    stage: Ref | None = Field(
        None, description="A stage of the pipeline (the lead's own pipeline unless one is given)"
    )
    responsible_user_id: AmoId | None = None
    custom_fields: Annotated[CustomFields, Field(max_length=100)] | None = Field(
        None, description=CUSTOM_FIELDS_DESCRIPTION + "; fields not named keep their values"
    )
    tags: Tags | None = Field(None, description="Replaces the lead's tags (`[]` clears them)")


class ContactCreateBody(_Body):
    owner: Owner | None = Field(None, max_length=255, description=OWNER_DESCRIPTION)
    name: Name | None = None
    email: Annotated[Plain, Field(max_length=254)] | None = None
    phone: Annotated[Plain, Field(max_length=64)] | None = None
    tags: Tags | None = None
    external_id: ExternalId | None = Field(
        None, description="Your id of the contact, unique per owner"
    )


class ContactPatchBody(_Body):
    name: Name | None = None
    email: Annotated[Plain, Field(max_length=254)] | None = Field(
        None, description="Becomes the contact's first e-mail (the others are kept)"
    )
    phone: Annotated[Plain, Field(max_length=64)] | None = Field(
        None, description="Becomes the contact's first phone (the others are kept)"
    )
    tags: Tags | None = Field(None, description="Replaces the contact's tags")


# --- answers -------------------------------------------------------------------------------------


class CustomFieldOut(BaseModel):
    field_id: int
    name: str | None = Field(description="The field's name in amoCRM")
    values: list[Any] = Field(description="The values as sent to amoCRM")


class ContactSummary(BaseModel):
    id: str = Field(description="amobridge's id of the contact")
    amo_id: int | None
    name: str | None
    email: str | None
    phone: str | None


class LeadOut(BaseModel):
    id: str = Field(description="amobridge's id of the lead: stable, opaque")
    owner: str
    state: SyncState = Field(
        description="`pending`: accepted, not yet in amoCRM (or a change not yet pushed); "
        "`synced`; `failed`: amobridge gave up, `last_error` says why"
    )
    amo_id: int | None = Field(description="amoCRM's id, once created there")
    connection: ConnectionState = Field(
        description="The owner's connection: with `reauth_required` or `disconnected` the lead "
        "is kept and pushed once the owner connects again"
    )
    name: str | None
    price: int | None
    pipeline_id: int | None
    pipeline: str | None = Field(description="The pipeline's name")
    stage_id: int | None
    stage: str | None = Field(description="The stage's name")
    responsible_user_id: int | None
    custom_fields: list[CustomFieldOut]
    tags: list[str]
    external_id: str | None
    contact: ContactSummary | None
    unresolved: dict[str, Any] | None = Field(
        description="Names that could not be checked yet (amoCRM was not reachable and nothing "
        "was cached): checked when the lead is pushed"
    )
    last_error: str | None
    created_at: DateTime
    updated_at: DateTime
    amo_updated_at: DateTime | None = Field(description="amoCRM's updated_at after the last push")
    synced_at: DateTime | None


class LeadPage(BaseModel):
    items: list[LeadOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null: done")


class ContactOut(BaseModel):
    id: str
    owner: str
    state: SyncState
    amo_id: int | None
    connection: ConnectionState
    name: str | None
    email: str | None
    phone: str | None
    emails: list[str]
    phones: list[str]
    tags: list[str]
    external_id: str | None
    last_error: str | None
    created_at: DateTime
    updated_at: DateTime
    amo_updated_at: DateTime | None
    synced_at: DateTime | None


class ContactPage(BaseModel):
    items: list[ContactOut]
    next_cursor: str | None


# --- parameters ----------------------------------------------------------------------------------

IdempotencyKeyHeader = Annotated[
    Plain | None,
    Header(
        alias="Idempotency-Key",
        max_length=255,
        description="Any unique string (a UUID): a retried POST with the same key gets the first "
        "answer again (same status and body) and creates nothing; the same key with another "
        "body is 422 `idempotency_key_reused`. Remembered AMOBRIDGE_SYNC__IDEMPOTENCY_TTL_HOURS.",
        openapi_examples={
            "uuid": {"summary": "A UUID", "value": "6f1b0d2e-8a4c-4f7e-9b1a-2c3d4e5f6a7b"}
        },
    ),
]
LeadIdPath = Annotated[
    str,
    Path(
        max_length=64,
        description="amobridge's id of the lead",
        openapi_examples={"id": {"summary": "A lead", "value": "3c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f"}},
    ),
]
ContactIdPath = Annotated[
    str,
    Path(
        max_length=64,
        description="amobridge's id of the contact",
        openapi_examples={
            "id": {"summary": "A contact", "value": "7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d"}
        },
    ),
]
PipelineQuery = Annotated[
    str | None,
    Query(
        max_length=255,
        description="Only this pipeline (id or name)",
        openapi_examples={"name": {"summary": "By name", "value": "Воронка"}},
    ),
]
StageQuery = Annotated[
    str | None,
    Query(
        max_length=255,
        description="Only this stage (id or name; without `pipeline`, that name in any pipeline)",
        openapi_examples={"name": {"summary": "By name", "value": "Переговоры"}},
    ),
]
SearchQuery = Annotated[
    str | None,
    Query(
        max_length=255,
        description="Search the name, the contact's e-mail and phone (any format)",
        openapi_examples={"email": {"summary": "An e-mail", "value": "ivan@example.com"}},
    ),
]
UpdatedSinceQuery = Annotated[
    str | None,
    Query(
        max_length=64,
        description="Only leads changed at or after this ISO 8601 time; the page is then oldest "
        "change first, so a poller continues from the last `updated_at` it saw",
        openapi_examples={"time": {"summary": "A time", "value": "2025-06-01T09:30:00+00:00"}},
    ),
]
StateQuery = Annotated[SyncState | None, Query(description="Only leads in this state")]
CursorQuery = Annotated[
    str | None,
    Query(max_length=512, description="`next_cursor` of the previous page"),
]
LimitQuery = Annotated[int, Query(ge=1, le=200, description="Items per page")]


# --- examples ------------------------------------------------------------------------------------

_CONTACT = {
    "id": "7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d",
    "amo_id": None,
    "name": "Иван Петров",
    "email": "ivan@example.com",
    "phone": "+79001234567",
}
_PENDING = {
    "id": "3c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f",
    "owner": "user-42",
    "state": "pending",
    "amo_id": None,
    "connection": "active",
    "name": "Заявка с сайта",
    "price": 15000,
    "pipeline_id": 6000001,
    "pipeline": "Воронка",
    "stage_id": 50000003,
    "stage": "Переговоры",
    "responsible_user_id": None,
    "custom_fields": [{"field_id": 500004, "name": "Источник", "values": [{"value": "Сайт"}]}],
    "tags": ["сайт"],
    "external_id": "order-1001",
    "contact": _CONTACT,
    "unresolved": None,
    "last_error": None,
    "created_at": "2025-06-01T09:30:00+00:00",
    "updated_at": "2025-06-01T09:30:00+00:00",
    "amo_updated_at": None,
    "synced_at": None,
}
_SYNCED = {
    **_PENDING,
    "state": "synced",
    "amo_id": 1000001,
    "contact": {**_CONTACT, "amo_id": 2000001},
    "updated_at": "2025-06-01T09:30:02+00:00",
    "amo_updated_at": "2025-06-01T09:30:01+00:00",
    "synced_at": "2025-06-01T09:30:02+00:00",
}
_FAILED = {
    **_PENDING,
    "state": "failed",
    "last_error": "amoCRM rejected the data of POST /api/v4/leads/complex (400 Bad Request: "
    "Request validation failed — [item 0] status_id: NotSupportedChoice)",
}
_REAUTH = {**_PENDING, "connection": "reauth_required"}

LEAD_CREATE_EXAMPLES = {
    "full": {
        "summary": "A lead with its contact, by names",
        "value": {
            "owner": "user-42",
            "name": "Заявка с сайта",
            "price": 15000,
            "pipeline": "Воронка",
            "stage": "Переговоры",
            "contact": {
                "name": "Иван Петров",
                "email": "Ivan@Example.com",
                "phone": "8 900 123-45-67",
            },
            "custom_fields": {"Источник": "Сайт"},
            "tags": ["сайт"],
            "external_id": "order-1001",
        },
    },
    "by_ids": {
        "summary": "By amoCRM ids",
        "value": {"owner": "user-42", "name": "Звонок", "pipeline": 6000001, "stage": 50000003},
    },
}
LEAD_CREATED_EXAMPLES = {
    "pending": {"summary": "Accepted: amobridge pushes it to amoCRM", "value": _PENDING},
    "reauth_required": {
        "summary": "Accepted while the connection needs re-authorization (kept, pushed later)",
        "value": _REAUTH,
    },
}
LEAD_EXISTING_EXAMPLES = {
    "existing": {"summary": "external_id already stored: that lead", "value": _SYNCED}
}
LEAD_EXAMPLES = {
    "pending": {"summary": "Not yet in amoCRM", "value": _PENDING},
    "synced": {"summary": "In amoCRM", "value": _SYNCED},
    "failed": {"summary": "amobridge gave up", "value": _FAILED},
}
LEAD_PATCH_EXAMPLES = {
    "stage": {"summary": "Move to a stage by name", "value": {"stage": "Принимают решение"}},
    "fields": {
        "summary": "Price, a field and the tags",
        "value": {"price": 20000, "custom_fields": {"Источник": "Звонок"}, "tags": ["vip"]},
    },
}
LEAD_PAGE_EXAMPLES = {
    "page": {
        "summary": "A page with more to come",
        "value": {"items": [_SYNCED], "next_cursor": "WyJjIiwiMjAyNS0wNi0wMVQwOTozMDowMCJd"},
    },
    "last": {"summary": "The last page", "value": {"items": [], "next_cursor": None}},
}

_CONTACT_OUT = {
    "id": "7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d",
    "owner": "user-42",
    "state": "pending",
    "amo_id": None,
    "connection": "active",
    "name": "Иван Петров",
    "email": "ivan@example.com",
    "phone": "+79001234567",
    "emails": ["ivan@example.com"],
    "phones": ["+79001234567"],
    "tags": [],
    "external_id": "customer-7",
    "last_error": None,
    "created_at": "2025-06-01T09:30:00+00:00",
    "updated_at": "2025-06-01T09:30:00+00:00",
    "amo_updated_at": None,
    "synced_at": None,
}
_CONTACT_SYNCED = {
    **_CONTACT_OUT,
    "state": "synced",
    "amo_id": 2000001,
    "amo_updated_at": "2025-06-01T09:30:01+00:00",
    "synced_at": "2025-06-01T09:30:02+00:00",
}
CONTACT_CREATE_EXAMPLES = {
    "contact": {
        "summary": "A contact",
        "value": {
            "owner": "user-42",
            "name": "Иван Петров",
            "email": "Ivan@Example.com",
            "phone": "+7 (900) 123-45-67",
            "external_id": "customer-7",
        },
    }
}
CONTACT_CREATED_EXAMPLES = {"pending": {"summary": "Accepted", "value": _CONTACT_OUT}}
CONTACT_EXISTING_EXAMPLES = {
    "existing": {
        "summary": "Same external_id, e-mail or phone: the contact already stored",
        "value": _CONTACT_SYNCED,
    }
}
CONTACT_EXAMPLES = {
    "pending": {"summary": "Not yet in amoCRM", "value": _CONTACT_OUT},
    "synced": {"summary": "In amoCRM", "value": _CONTACT_SYNCED},
}
CONTACT_PATCH_EXAMPLES = {
    "phone": {"summary": "A new phone", "value": {"phone": "+7 900 765-43-21"}},
}
CONTACT_PAGE_EXAMPLES = {
    "page": {"summary": "A page", "value": {"items": [_CONTACT_SYNCED], "next_cursor": None}}
}


# --- imports and catch-ups -----------------------------------------------------------------------

ImportState = Literal["queued", "running", "waiting", "succeeded", "failed"]
ImportStep = Literal["catalogue", "contacts", "leads"]

IMPORT_STATE_DESCRIPTION = (
    "`queued` (its job waits for a worker), `running`, `waiting` (a failed request will be "
    "tried again, or the connection needs re-authorization: see `last_error`), `succeeded` or "
    "`failed` (see `last_error`; `POST /imports` again resumes it from its last page)"
)


class ImportStartBody(_Body):
    owner: Owner | None = Field(None, max_length=255, description=OWNER_DESCRIPTION)


class ImportJob(BaseModel):
    id: int = Field(description="The job that runs it (`GET /jobs/{id}`)")
    state: str = Field(description="The job's state: pending, running, paused, …")
    paused_reason: str | None = Field(
        description="Why the job waits: `reauth_required`, `disconnected`, `banned`, …"
    )


class ImportOut(BaseModel):
    """An import (or a catch-up) of an owner's amoCRM account into the mirror."""

    id: str = Field(description="The import's id")
    owner: str
    kind: Literal["import", "catchup"] = Field(
        description="`import`: everything; `catchup`: what changed since `since`"
    )
    state: ImportState = Field(description=IMPORT_STATE_DESCRIPTION)
    entity: ImportStep | None = Field(
        description="What it reads now: `catalogue` (pipelines and custom fields), `contacts` "
        "or `leads`; null once it has finished"
    )
    page: int | None = Field(description="The page of `entity` it reads next (250 a page)")
    counts: dict[str, int] = Field(
        description="What was read and written, by kind: `pipelines`, `lead_fields`, "
        "`contact_fields`, `contacts`, `leads`"
    )
    changes: dict[str, int] = Field(
        description="What the pages did to the mirror: `created`, `updated`, `unchanged`, "
        "`stale` (older than what the mirror holds: left alone), `kept_local` (a newer local "
        "change won and is pushed again)"
    )
    pages: dict[str, int] = Field(description="Pages read, by kind")
    total: int | None = Field(
        description="Contacts and leads in all, once it has finished (amoCRM sends no totals)"
    )
    since: DateTime | None = Field(description="A catch-up's start: amoCRM changes from then on")
    last_error: str | None = Field(description="The last failure, with what happens next")
    job: ImportJob | None = Field(description="Its job in the queue")
    created_at: DateTime
    started_at: DateTime | None = Field(
        description="When it began reading: everything changed in amoCRM before this time is "
        "in the mirror once it has succeeded"
    )
    finished_at: DateTime | None


ImportIdPath = Annotated[
    str,
    Path(
        max_length=64,
        description="The id `POST /imports` answered with",
        openapi_examples={
            "id": {"summary": "An import", "value": "9f8e7d6c5b4a39281706f5e4d3c2b1a0"}
        },
    ),
]

IMPORT_START_EXAMPLES = {
    "owner": {"summary": "Import an owner's account", "value": {"owner": "user-42"}},
}
_IMPORT_QUEUED = {
    "id": "9f8e7d6c5b4a39281706f5e4d3c2b1a0",
    "owner": "user-42",
    "kind": "import",
    "state": "queued",
    "entity": "catalogue",
    "page": 1,
    "counts": {},
    "changes": {},
    "pages": {},
    "total": None,
    "since": None,
    "last_error": None,
    "job": {"id": 1042, "state": "pending", "paused_reason": None},
    "created_at": "2025-06-01T09:30:00+00:00",
    "started_at": None,
    "finished_at": None,
}
_CATALOGUE_COUNTS = {"pipelines": 2, "lead_fields": 6, "contact_fields": 4}
_CATALOGUE_PAGES = {"pipelines": 1, "lead_fields": 1, "contact_fields": 1}
_IMPORT_RUNNING = {
    **_IMPORT_QUEUED,
    "state": "running",
    "entity": "leads",
    "page": 1,
    "counts": {**_CATALOGUE_COUNTS, "contacts": 300, "leads": 250},
    "changes": {"created": 550, "updated": 0, "unchanged": 0, "stale": 0, "kept_local": 0},
    "pages": {**_CATALOGUE_PAGES, "contacts": 2, "leads": 1},
    "job": {"id": 1042, "state": "running", "paused_reason": None},
    "started_at": "2025-06-01T09:30:01+00:00",
}
_IMPORT_DONE = {
    **_IMPORT_RUNNING,
    "state": "succeeded",
    "entity": None,
    "page": None,
    "counts": {**_CATALOGUE_COUNTS, "contacts": 300, "leads": 600},
    "changes": {"created": 900, "updated": 0, "unchanged": 0, "stale": 0, "kept_local": 0},
    "pages": {**_CATALOGUE_PAGES, "contacts": 2, "leads": 3},
    "total": 900,
    "job": {"id": 1042, "state": "succeeded", "paused_reason": None},
    "finished_at": "2025-06-01T09:30:06+00:00",
}
_IMPORT_WAITING = {
    **_IMPORT_RUNNING,
    "state": "waiting",
    "page": 2,
    "last_error": "will try again: AmoServerError: amoCRM answered 500 on GET /api/v4/leads",
    "job": {"id": 1042, "state": "pending", "paused_reason": None},
}
IMPORT_QUEUED_EXAMPLES = {
    "queued": {"summary": "Queued (or the one already under way)", "value": _IMPORT_QUEUED},
}
IMPORT_EXAMPLES = {
    "running": {"summary": "Reading leads", "value": _IMPORT_RUNNING},
    "waiting": {"summary": "A page failed: tried again later", "value": _IMPORT_WAITING},
    "succeeded": {"summary": "Done", "value": _IMPORT_DONE},
}
