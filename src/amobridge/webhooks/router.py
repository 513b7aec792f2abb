"""HTTP routes of the webhook inbox.

``POST /webhooks/amocrm/{secret}`` is amoCRM's: no credentials, the URL secret and the body's
account id are the authentication. It answers as soon as the body is committed (far inside
amoCRM's 2 s), and never calls amoCRM.

The delivery routes are owner-scoped like ``/jobs``: an app key sees the owner it names, a user's
token its own deliveries, an admin key any owner's (every owner's when it names none).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from amobridge.auth.dependencies import CurrentPrincipal
from amobridge.auth.principal import Principal, identifier_problem
from amobridge.connect.schemas import error_responses, json_examples
from amobridge.dependencies import ReadSession, WriteSession
from amobridge.errors import ServiceError
from amobridge.webhooks.schemas import (
    ACCEPTED_EXAMPLES,
    DELIVERY_EXAMPLES,
    FORM_EXAMPLE,
    FORM_FIELDS_EXAMPLE,
    FORM_SCHEMA,
    PAGE_EXAMPLES,
    REPLAYED_EXAMPLES,
    SUBSCRIPTION_EXAMPLES,
    Accepted,
    CursorQuery,
    DeliveryIdPath,
    DeliveryOut,
    DeliveryPage,
    LimitQuery,
    OwnerFilter,
    OwnerQuery,
    StateFilter,
    SubscriptionOut,
    delivery_out,
)
from amobridge.webhooks.service import WebhookService

router = APIRouter(tags=["webhooks"])
# amoCRM's route alone, so the app can put it first: a request is matched against the routes in
# order, and trying the hundred-odd before it cost this hot path a third of its time.
receiver = APIRouter(tags=["webhooks"])

_CALLER = (
    "owner_required",
    "invalid_owner",
    "owner_mismatch",
    "unauthorized",
    "invalid_api_key",
    "token_expired",
)


async def service(request: Request) -> WebhookService:
    found: WebhookService = request.app.state.services.webhooks
    return found


Service = Annotated[WebhookService, Depends(service)]


def owner_scope(principal: Principal, owner: str | None) -> str | None:
    """Whose deliveries the caller may see: an admin any owner's (None: every owner's), others
    the owner they act for."""
    if not principal.is_admin:
        return principal.owner_for(owner)
    if owner is not None and (problem := identifier_problem(owner)):
        raise ServiceError(problem, code="invalid_owner")
    return owner


@receiver.post(
    "/webhooks/amocrm/{secret}",
    summary="amoCRM's webhook (stored, answered at once, applied to the mirror by a job)",
    response_model=Accepted,
    responses={
        200: {
            "description": "Committed: amoCRM will not send it again. A redelivery is stored "
            "once more as a duplicate and not applied again",
            "content": json_examples(ACCEPTED_EXAMPLES),
        },
        **error_responses(
            400,
            403,
            404,
            413,
            codes=(
                "invalid_content_length",
                "account_mismatch",
                "webhook_not_found",
                "body_too_large",
            ),
        ),
    },
    # Declared here, not as parameters: the route reads the raw body (it is stored as sent) and
    # its path's secret itself (resolving declared parameters was a twentieth of its time).
    openapi_extra={
        "parameters": [
            {
                "name": "secret",
                "in": "path",
                "required": True,
                "description": "The connection's URL secret (amobridge subscribes the webhook "
                "with it)",
                "schema": {"type": "string", "maxLength": 128, "title": "Secret"},
                "examples": {
                    "secret": {
                        "summary": "A secret",
                        "value": "q2V7s1cKJm0xR4nTz8YbP3wLhA6dEuFgN5oQiWjX9kM",
                    }
                },
            }
        ],
        "requestBody": {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": FORM_SCHEMA,
                    "examples": {
                        "status": {
                            "summary": "A lead moved to another stage",
                            "value": FORM_FIELDS_EXAMPLE,
                        }
                    },
                },
                "text/plain": {
                    "schema": {"type": "string"},
                    "examples": {"raw": {"summary": "The same body, raw", "value": FORM_EXAMPLE}},
                },
            },
        },
    },
)
async def receive(request: Request) -> Response:
    """No credentials: the URL secret names the connection (404 when it names none or a
    disconnected one) and `account[id]` in the body must be its account (403). Nothing is
    stored for either. A database that cannot be used answers 503, so amoCRM sends it again."""
    svc: WebhookService = request.app.state.services.webhooks
    stored = await svc.receive(
        request.path_params["secret"],
        await request.body(),
        content_type=request.headers.get("content-type"),
        headers=request.headers,
    )
    body = json.dumps(
        {"accepted": True, "delivery_id": stored.delivery_id, "duplicate_of": stored.duplicate_of}
    )
    return Response(body, media_type="application/json")


@router.get(
    "/webhooks/deliveries",
    summary="List received webhooks (newest first)",
    response_model=DeliveryPage,
    responses={
        200: {"description": "A page of deliveries", "content": json_examples(PAGE_EXAMPLES)},
        **error_responses(400, 401, 403, 422, codes=_CALLER),
    },
)
async def list_deliveries(
    svc: Service,
    session: ReadSession,
    principal: CurrentPrincipal,
    owner: OwnerFilter = None,
    state: StateFilter = None,
    cursor: CursorQuery = None,
    limit: LimitQuery = 50,
) -> dict[str, Any]:
    """What amoCRM sent and what became of it: `state=failed` lists what needs a look."""
    page = await svc.list(
        session, owner=owner_scope(principal, owner), state=state, cursor=cursor, limit=limit
    )
    return {"items": [delivery_out(row) for row in page.items], "next_cursor": page.next_cursor}


@router.get(
    "/webhooks/deliveries/{delivery_id}",
    summary="One received webhook",
    response_model=DeliveryOut,
    responses={
        200: {"description": "The delivery", "content": json_examples(DELIVERY_EXAMPLES)},
        **error_responses(400, 401, 403, 404, 422, codes=(*_CALLER, "delivery_not_found")),
    },
)
async def get_delivery(
    delivery_id: DeliveryIdPath,
    svc: Service,
    session: ReadSession,
    principal: CurrentPrincipal,
    owner: OwnerFilter = None,
) -> dict[str, Any]:
    return delivery_out(await svc.get(session, delivery_id, owner=owner_scope(principal, owner)))


@router.post(
    "/webhooks/deliveries/{delivery_id}/replay",
    summary="Apply a processed or failed webhook again",
    response_model=DeliveryOut,
    responses={
        200: {
            "description": "`received` again: a job applies it",
            "content": json_examples(REPLAYED_EXAMPLES),
        },
        **error_responses(
            400, 401, 403, 404, 409, 422, codes=(*_CALLER, "delivery_not_found", "conflict")
        ),
    },
)
async def replay_delivery(
    delivery_id: DeliveryIdPath,
    svc: Service,
    session: WriteSession,
    principal: CurrentPrincipal,
    owner: OwnerFilter = None,
) -> dict[str, Any]:
    """For a delivery that failed (after the cause was fixed) or to apply one again. The usual
    order holds: an event older than the mirror's data changes nothing."""
    row = await svc.replay(
        session, delivery_id, owner=owner_scope(principal, owner), actor=principal.name
    )
    return delivery_out(row)


@router.get(
    "/webhooks/subscription",
    summary="The owner's webhook subscription in amoCRM",
    response_model=SubscriptionOut,
    responses={
        200: {
            "description": "What amobridge knows of it",
            "content": json_examples(SUBSCRIPTION_EXAMPLES),
        },
        **error_responses(400, 401, 403, 422, codes=_CALLER),
    },
)
async def subscription(
    svc: Service, session: ReadSession, principal: CurrentPrincipal, owner: OwnerQuery = None
) -> dict[str, Any]:
    """Its state, when amoCRM was last asked, how often amobridge restored it. The destination
    is shown with its secret cut short."""
    return await svc.subscription(session, principal.owner_for(owner))
