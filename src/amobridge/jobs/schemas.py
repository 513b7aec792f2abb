"""Answers and parameters of the job routes, with the examples the OpenAPI document shows."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Query
from pydantic import BaseModel, Field

from amobridge.connect.schemas import ErrorBody
from amobridge.params import (
    Page,
    cursor_query,
    id_path,
    limit_query,
    owner_filter,
    state_filter,
)
from amobridge.storage.tables import Job

JobState = Literal["pending", "running", "succeeded", "failed", "paused", "cancelled"]

STATE_DESCRIPTION = (
    "`pending` (waiting for a worker, or for `run_after`), `running` (a worker holds its "
    "lease), `succeeded`, `failed` (out of attempts or refused for good: see `last_error`; "
    "`POST /jobs/{id}/retry` runs it again), `paused` (its connection needs re-authorization, "
    "was disconnected or is banned, see `paused_reason`: it resumes by itself) or `cancelled`"
)


class JobOut(BaseModel):
    """One job of the outbound queue (never a token: payloads hold ids and the host app's data,
    errors are masked)."""

    id: int = Field(description="The job's id (newer jobs have larger ids)")
    kind: str = Field(description="What it does, e.g. `sync.lead.create`")
    owner: str | None = Field(description="The owner it works for (null: the service's own)")
    connection_id: str | None = Field(description="The amoCRM connection it works on")
    state: JobState = Field(description=STATE_DESCRIPTION)
    attempts: int = Field(description="Attempts made so far (a pause or a 429 does not count)")
    max_attempts: int = Field(description="Attempts allowed before it is failed")
    run_after: datetime = Field(description="When a pending job may run")
    ordering_key: str | None = Field(
        description="Jobs with the same key run one at a time, in id order"
    )
    dedup_key: str | None = Field(
        description="At most one unfinished job per key: queuing another returns this one"
    )
    idempotency_key: str = Field(
        description="Sent to amoCRM with the job's writes, so a re-run after an ambiguous "
        "failure finds what the first run created instead of creating it twice"
    )
    payload: dict[str, Any] = Field(description="What the job works on")
    result: dict[str, Any] | None = Field(description="What a succeeded job reported")
    last_error: str | None = Field(description="The last failure, with what to do")
    paused_reason: str | None = Field(
        description="Why a paused job waits: `reauth_required` (connect the account again), "
        "`disconnected`, `banned` (until `paused_until`) or a handler's reason"
    )
    paused_until: datetime | None = Field(description="When a paused job resumes by itself")
    locked_by: str | None = Field(description="The worker running it (host:pid:id)")
    locked_until: datetime | None = Field(description="When that worker's lease runs out")
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = Field(description="When the last attempt started")
    finished_at: datetime | None = Field(description="When it succeeded, failed or was cancelled")


class JobPage(Page[JobOut]):
    pass


def job_out(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "kind": job.kind,
        "owner": job.owner,
        "connection_id": job.connection_id,
        "state": job.state,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "run_after": job.run_after,
        "ordering_key": job.ordering_key,
        "dedup_key": job.dedup_key,
        "idempotency_key": job.idempotency_key,
        "payload": job.payload,
        "result": job.result,
        "last_error": job.last_error,
        "paused_reason": job.paused_reason,
        "paused_until": job.paused_until,
        "locked_by": job.locked_by,
        "locked_until": job.locked_until,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
    }


# --- parameters ----------------------------------------------------------------------------------

OwnerFilter = Annotated[str | None, owner_filter("jobs")]
StateFilter = Annotated[JobState | None, state_filter("jobs")]
KindFilter = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=64,
        description="Only jobs of this kind",
        openapi_examples={"kind": {"summary": "Lead creates", "value": "sync.lead.create"}},
    ),
]
CursorQuery = Annotated[str | None, cursor_query()]
LimitQuery = Annotated[int, limit_query("Jobs")]
JobIdPath = Annotated[int, id_path("job")]


# --- examples ------------------------------------------------------------------------------------

_BASE: dict[str, Any] = {
    "id": 1042,
    "kind": "sync.lead.create",
    "owner": "user-42",
    "connection_id": "9f0c2b7e4d1a4c5e8b3a6f2d1e0c9b8a",
    "attempts": 1,
    "max_attempts": 8,
    "run_after": "2026-05-01T09:30:00Z",
    "ordering_key": "lead:01HZX3",
    "dedup_key": None,
    "idempotency_key": "5b1f0e3c9a7d4e2f8c6b1a0d9e8f7a6b",
    "payload": {"lead_id": "01HZX3"},
    "result": None,
    "last_error": None,
    "paused_reason": None,
    "paused_until": None,
    "locked_by": None,
    "locked_until": None,
    "created_at": "2026-05-01T09:30:00Z",
    "updated_at": "2026-05-01T09:30:02Z",
    "started_at": "2026-05-01T09:30:01Z",
    "finished_at": None,
}
SUCCEEDED_EXAMPLE = {
    **_BASE,
    "state": "succeeded",
    "result": {"amo_id": 31415926},
    "finished_at": "2026-05-01T09:30:02Z",
}
FAILED_EXAMPLE = {
    **_BASE,
    "id": 1043,
    "state": "failed",
    "attempts": 8,
    "last_error": "AmoServerError: amoCRM failed on POST /api/v4/leads/complex (502). This is "
    "on amoCRM's side; try again later. (attempt 8 of 8: no attempts left)",
    "finished_at": "2026-05-01T11:02:40Z",
}
PAUSED_EXAMPLE = {
    **_BASE,
    "id": 1044,
    "state": "paused",
    "attempts": 0,
    "paused_reason": "reauth_required",
    "last_error": "AmoReauthRequired: amoCRM refused the refresh token: connect the account "
    "again through /amocrm/auth",
}
PENDING_EXAMPLE = {
    **_BASE,
    "id": 1043,
    "state": "pending",
    "attempts": 0,
    "run_after": "2026-05-01T11:05:00Z",
    "last_error": FAILED_EXAMPLE["last_error"],
    "started_at": None,
}
CANCELLED_EXAMPLE = {
    **FAILED_EXAMPLE,
    "state": "cancelled",
    "finished_at": "2026-05-01T11:05:00Z",
}

JOB_EXAMPLES = {
    "succeeded": {"summary": "A succeeded job", "value": SUCCEEDED_EXAMPLE},
    "failed": {"summary": "A failed job, with why", "value": FAILED_EXAMPLE},
    "paused": {"summary": "Paused with its connection", "value": PAUSED_EXAMPLE},
}
PAGE_EXAMPLES = {
    "page": {
        "summary": "A page, more to come",
        "value": {"items": [FAILED_EXAMPLE, SUCCEEDED_EXAMPLE], "next_cursor": "1042"},
    },
    "last": {"summary": "The last page", "value": {"items": [], "next_cursor": None}},
}
RETRIED_EXAMPLES = {"retried": {"summary": "Pending again", "value": PENDING_EXAMPLE}}
CANCELLED_EXAMPLES = {"cancelled": {"summary": "Cancelled", "value": CANCELLED_EXAMPLE}}


def json_answer(description: str, examples: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"examples": examples}}}


_ERRORS: dict[str, tuple[int, str]] = {
    "bad_request": (400, "invalid cursor: pass the next_cursor of the previous page"),
    "owner_required": (400, "owner is required (query parameter or body field 'owner')"),
    "invalid_owner": (400, "owner must not contain control characters"),
    "unauthorized": (401, "authentication required: an API key or a user token"),
    "invalid_api_key": (401, "unknown or revoked API key"),
    "token_expired": (401, "the token has expired: sign in again"),
    "owner_mismatch": (403, "this token belongs to another owner"),
    "not_found": (404, "no job 1042 for owner 'user-42'"),
    "conflict": (
        409,
        "job 1042 is succeeded: only a failed, cancelled or paused job can be retried",
    ),
    "validation_error": (422, "state: Input should be 'pending', 'running', …"),
}
_WHY = {
    400: "Invalid parameters, or no owner named by an app key",
    401: "No valid API key or user token",
    403: "A user's token for another owner",
    404: "No such job (or not this owner's)",
    409: "The job is in a state that does not allow it",
    422: "A parameter failed validation",
}


def error_answers(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for these statuses: the ``{"error", "detail"}`` body with an
    example of each code the job routes answer with."""
    found: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        codes = {code: detail for code, (at, detail) in _ERRORS.items() if at == status}
        found[status] = {
            "model": ErrorBody,
            "description": f"{_WHY[status]}. `error`: " + ", ".join(f"`{c}`" for c in codes),
            "content": {
                "application/json": {
                    "examples": {
                        code: {
                            "summary": f"{status} {code}",
                            "value": {"error": code, "detail": detail},
                        }
                        for code, detail in codes.items()
                    }
                }
            },
        }
    return found
