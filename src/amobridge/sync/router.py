"""HTTP routes of the lead API: ``/leads``, ``/contacts`` and ``/imports``.

Every route acts for one owner, decided as ``/amocrm/status`` decides it: an app key names the
owner (body field ``owner`` on POST, query parameter ``owner`` elsewhere), a user's JWT acts for
its own ``sub`` only, an admin key for any. Another owner's lead is 404, as one that does not
exist: never 403, which would say it exists.

The routes declare no ``WriteSession``: the service reads what amoCRM offers first (no unit of
work is open over the network), then commits the row and its push job in one unit before the
answer is sent.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request
from fastapi.responses import JSONResponse

from amobridge.auth.dependencies import CurrentPrincipal
from amobridge.connect.schemas import (
    AUTH_ERRORS,
    OWNER_ERRORS,
    OwnerQuery,
    error_responses,
    json_examples,
)
from amobridge.sync.imports import ImportService
from amobridge.sync.schemas import (
    CONTACT_CREATE_EXAMPLES,
    CONTACT_CREATED_EXAMPLES,
    CONTACT_EXAMPLES,
    CONTACT_EXISTING_EXAMPLES,
    CONTACT_PAGE_EXAMPLES,
    CONTACT_PATCH_EXAMPLES,
    IMPORT_EXAMPLES,
    IMPORT_QUEUED_EXAMPLES,
    IMPORT_START_EXAMPLES,
    LEAD_CREATE_EXAMPLES,
    LEAD_CREATED_EXAMPLES,
    LEAD_EXAMPLES,
    LEAD_EXISTING_EXAMPLES,
    LEAD_PAGE_EXAMPLES,
    LEAD_PATCH_EXAMPLES,
    ContactCreateBody,
    ContactIdPath,
    ContactOut,
    ContactPage,
    ContactPatchBody,
    CursorQuery,
    IdempotencyKeyHeader,
    ImportIdPath,
    ImportOut,
    ImportStartBody,
    LeadCreateBody,
    LeadIdPath,
    LeadOut,
    LeadPage,
    LeadPatchBody,
    LimitQuery,
    PipelineQuery,
    SearchQuery,
    StageQuery,
    StateQuery,
    UpdatedSinceQuery,
)
from amobridge.sync.service import SyncService

router = APIRouter(tags=["leads"])

_CALLER = (*AUTH_ERRORS, *OWNER_ERRORS)
_NAMES = ("unknown_pipeline", "unknown_stage", "unknown_custom_field", "invalid_custom_field_value")
_REPLAYED = {
    "Idempotent-Replayed": {
        "description": "`true` when this is the stored answer to an earlier request with the "
        "same Idempotency-Key",
        "schema": {"type": "string"},
    }
}


async def service(request: Request) -> SyncService:
    found: SyncService = request.app.state.services.sync
    return found


Service = Annotated[SyncService, Depends(service)]


def _answer(status: int, body: dict[str, Any], replayed: bool) -> JSONResponse:
    headers = {"Idempotent-Replayed": "true"} if replayed else None
    return JSONResponse(body, status_code=status, headers=headers)


# The ``responses=`` of the lead and contact routes, which pair up: a create (201, or 200 for
# one stored already, both replayable), a read, a page, a change.


def _create_responses(
    model: type[Any],
    *,
    created: str,
    created_examples: dict[str, Any],
    existing: str,
    existing_examples: dict[str, Any],
    codes: tuple[str, ...],
) -> dict[int | str, dict[str, Any]]:
    return {
        201: {
            "description": created,
            "content": json_examples(created_examples),
            "headers": _REPLAYED,
        },
        200: {
            "model": model,
            "description": existing,
            "content": json_examples(existing_examples),
            "headers": _REPLAYED,
        },
        **error_responses(
            400,
            401,
            403,
            404,
            413,
            422,
            codes=(*_CALLER, "connection_not_found", *codes, "idempotency_key_reused"),
        ),
    }


def _read_responses(examples: dict[str, Any], *codes: str) -> dict[int | str, dict[str, Any]]:
    """A read (one item, or a page): 200 with ``examples``."""
    return {
        200: {"content": json_examples(examples)},
        **error_responses(400, 401, 403, 404, 422, codes=(*_CALLER, *codes)),
    }


def _change_responses(
    examples: dict[str, Any], *codes: str, description: str | None = None
) -> dict[int | str, dict[str, Any]]:
    """A PATCH: 200 with the item as stored, 413 for a body too large."""
    ok: dict[str, Any] = {"content": json_examples(examples)}
    if description is not None:
        ok = {"description": description, **ok}
    return {
        200: ok,
        **error_responses(400, 401, 403, 404, 413, 422, codes=(*_CALLER, *codes)),
    }


# --- leads ---------------------------------------------------------------------------------------


@router.post(
    "/leads",
    summary="Create a lead (answered at once; pushed to amoCRM by a job)",
    status_code=201,
    response_model=LeadOut,
    responses=_create_responses(
        LeadOut,
        created="Stored with its push job: `state` is `pending`",
        created_examples=LEAD_CREATED_EXAMPLES,
        existing="A lead with this `external_id` was stored already: that lead, unchanged",
        existing_examples=LEAD_EXISTING_EXAMPLES,
        codes=(*_NAMES, "invalid_email", "invalid_phone"),
    ),
)
async def create_lead(
    svc: Service,
    principal: CurrentPrincipal,
    body: Annotated[LeadCreateBody, Body(openapi_examples=LEAD_CREATE_EXAMPLES)],
    idempotency_key: IdempotencyKeyHeader = None,
) -> JSONResponse:
    """The lead and its push job are committed before the answer. A connection that needs
    re-authorization (`connection`: `reauth_required`) or was disconnected still takes the
    lead: it is kept and pushed once the owner connects again. Names of pipelines, stages and
    custom fields are checked against the account (cached; an unknown one is 422 with
    `available` listing the real ones)."""
    who = principal.owner_for(body.owner)
    status, answer, replayed = await svc.create_lead(
        who, body, idempotency_key=idempotency_key, actor=principal.name
    )
    return _answer(status, answer, replayed)


@router.get(
    "/leads/{lead_id}",
    summary="A lead: its state in amoCRM (pending, synced, failed)",
    response_model=LeadOut,
    responses=_read_responses(LEAD_EXAMPLES, "lead_not_found", "connection_not_found"),
)
async def get_lead(
    svc: Service, principal: CurrentPrincipal, lead_id: LeadIdPath, owner: OwnerQuery = None
) -> dict[str, Any]:
    return await svc.get_lead(principal.owner_for(owner), lead_id)


@router.get(
    "/leads",
    summary="The owner's leads, newest first (filters, search, cursor pages)",
    response_model=LeadPage,
    responses=_read_responses(
        LEAD_PAGE_EXAMPLES,
        "invalid_cursor",
        "connection_not_found",
        "unknown_pipeline",
        "unknown_stage",
    ),
)
async def list_leads(
    svc: Service,
    principal: CurrentPrincipal,
    owner: OwnerQuery = None,
    pipeline: PipelineQuery = None,
    stage: StageQuery = None,
    q: SearchQuery = None,
    updated_since: UpdatedSinceQuery = None,
    state: StateQuery = None,
    cursor: CursorQuery = None,
    limit: LimitQuery = 50,
) -> dict[str, Any]:
    """Pages are stable under inserts: `next_cursor` continues after the last lead shown."""
    return await svc.list_leads(
        principal.owner_for(owner),
        pipeline=pipeline,
        stage=stage,
        q=q,
        updated_since=updated_since,
        state=state,
        cursor=cursor,
        limit=limit,
    )


@router.patch(
    "/leads/{lead_id}",
    summary="Change a lead (stored at once; pushed to amoCRM by a job)",
    response_model=LeadOut,
    responses=_change_responses(
        LEAD_EXAMPLES,
        "lead_not_found",
        "connection_not_found",
        *_NAMES,
        description="Stored: `state` is `pending` until amoCRM has the change",
    ),
)
async def update_lead(
    svc: Service,
    principal: CurrentPrincipal,
    lead_id: LeadIdPath,
    body: Annotated[LeadPatchBody, Body(openapi_examples=LEAD_PATCH_EXAMPLES)],
    owner: OwnerQuery = None,
) -> dict[str, Any]:
    """Only the fields given change, and only those are sent to amoCRM (a manager's change
    of another field in amoCRM is not overwritten)."""
    return await svc.update_lead(principal.owner_for(owner), lead_id, body, actor=principal.name)


# --- contacts ------------------------------------------------------------------------------------


@router.post(
    "/contacts",
    summary="Create a contact (deduplicated by e-mail and phone)",
    status_code=201,
    response_model=ContactOut,
    responses=_create_responses(
        ContactOut,
        created="Stored with its push job",
        created_examples=CONTACT_CREATED_EXAMPLES,
        existing="A contact with this `external_id`, e-mail or phone was stored already: that "
        "contact (what it lacked added)",
        existing_examples=CONTACT_EXISTING_EXAMPLES,
        codes=("invalid_email", "invalid_phone"),
    ),
)
async def create_contact(
    svc: Service,
    principal: CurrentPrincipal,
    body: Annotated[ContactCreateBody, Body(openapi_examples=CONTACT_CREATE_EXAMPLES)],
    idempotency_key: IdempotencyKeyHeader = None,
) -> JSONResponse:
    who = principal.owner_for(body.owner)
    status, answer, replayed = await svc.create_contact(
        who, body, idempotency_key=idempotency_key, actor=principal.name
    )
    return _answer(status, answer, replayed)


@router.get(
    "/contacts/{contact_id}",
    summary="A contact",
    response_model=ContactOut,
    responses=_read_responses(CONTACT_EXAMPLES, "contact_not_found", "connection_not_found"),
)
async def get_contact(
    svc: Service, principal: CurrentPrincipal, contact_id: ContactIdPath, owner: OwnerQuery = None
) -> dict[str, Any]:
    return await svc.get_contact(principal.owner_for(owner), contact_id)


@router.get(
    "/contacts",
    summary="The owner's contacts, newest first",
    response_model=ContactPage,
    responses=_read_responses(CONTACT_PAGE_EXAMPLES, "invalid_cursor", "connection_not_found"),
)
async def list_contacts(
    svc: Service,
    principal: CurrentPrincipal,
    owner: OwnerQuery = None,
    q: SearchQuery = None,
    cursor: CursorQuery = None,
    limit: LimitQuery = 50,
) -> dict[str, Any]:
    return await svc.list_contacts(principal.owner_for(owner), q=q, cursor=cursor, limit=limit)


@router.patch(
    "/contacts/{contact_id}",
    summary="Change a contact (pushed to amoCRM by a job)",
    response_model=ContactOut,
    responses=_change_responses(
        CONTACT_EXAMPLES,
        "contact_not_found",
        "connection_not_found",
        "invalid_email",
        "invalid_phone",
    ),
)
async def update_contact(
    svc: Service,
    principal: CurrentPrincipal,
    contact_id: ContactIdPath,
    body: Annotated[ContactPatchBody, Body(openapi_examples=CONTACT_PATCH_EXAMPLES)],
    owner: OwnerQuery = None,
) -> dict[str, Any]:
    return await svc.update_contact(
        principal.owner_for(owner), contact_id, body, actor=principal.name
    )


# --- imports ------------------------------------------------------------------------------------


async def imports_service(request: Request) -> ImportService:
    found: ImportService = request.app.state.services.imports
    return found


Imports = Annotated[ImportService, Depends(imports_service)]


@router.post(
    "/imports",
    tags=["imports"],
    summary="Import the owner's amoCRM account into the mirror (answered at once; a job runs it)",
    status_code=202,
    response_model=ImportOut,
    responses={
        202: {
            "description": "Queued — or the import already waiting or running for this "
            "connection (one at a time), or the failed one resumed from its last page",
            "content": json_examples(IMPORT_QUEUED_EXAMPLES),
        },
        **error_responses(
            400,
            401,
            403,
            404,
            409,
            413,
            422,
            codes=(*_CALLER, "connection_not_found", "connection_disconnected"),
        ),
    },
)
async def start_import(
    svc: Imports,
    principal: CurrentPrincipal,
    body: Annotated[ImportStartBody, Body(openapi_examples=IMPORT_START_EXAMPLES)],
) -> dict[str, Any]:
    """Reads the account's pipelines and custom fields, then every contact and lead (250 a
    page, within the connection's 7 requests per second), into the mirror. Follow it with
    `GET /imports/{id}`. amoCRM's `updated_at` decides: nothing older than what the mirror
    holds overwrites it, and a local change not pushed yet that is newer than amoCRM's wins."""
    answer, _ = await svc.start(principal.owner_for(body.owner), actor=principal.name)
    return answer


@router.get(
    "/imports/{import_id}",
    tags=["imports"],
    summary="An import's progress: its state, what it reads now, counts and pages",
    response_model=ImportOut,
    responses={
        200: {"content": json_examples(IMPORT_EXAMPLES)},
        **error_responses(400, 401, 403, 404, 422, codes=(*_CALLER, "import_not_found")),
    },
)
async def get_import(
    svc: Imports,
    principal: CurrentPrincipal,
    import_id: ImportIdPath,
    owner: OwnerQuery = None,
) -> dict[str, Any]:
    return await svc.get(principal.owner_for(owner), import_id)
