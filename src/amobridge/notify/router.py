"""HTTP routes of events to the host app, for admins: the endpoints events go to
(``/event-subscriptions``) and the delivery log (``/event-deliveries``), with retry."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request, Response

from amobridge.auth.dependencies import CurrentPrincipal
from amobridge.auth.principal import Principal
from amobridge.connect.schemas import AUTH_ERRORS, error_responses, json_examples
from amobridge.dependencies import ReadSession, WriteSession
from amobridge.errors import Forbidden
from amobridge.notify.schemas import (
    DELIVERY_EXAMPLES,
    DELIVERY_PAGE_EXAMPLES,
    RETRIED_EXAMPLES,
    SUBSCRIPTION_CREATE_EXAMPLES,
    SUBSCRIPTION_CREATED_EXAMPLES,
    SUBSCRIPTION_LIST_EXAMPLES,
    CursorQuery,
    DeliveryDetail,
    DeliveryIdPath,
    DeliveryOut,
    DeliveryPage,
    LimitQuery,
    OwnerQuery,
    StateQuery,
    SubscriptionCreate,
    SubscriptionCreated,
    SubscriptionIdPath,
    SubscriptionList,
    SubscriptionQuery,
    TypeQuery,
    delivery_detail,
    delivery_out,
    subscription_out,
)
from amobridge.notify.service import NotifyService

router = APIRouter(tags=["events"])

_ADMIN = (*AUTH_ERRORS, "forbidden")


async def service(request: Request) -> NotifyService:
    found: NotifyService = request.app.state.services.notify
    return found


Service = Annotated[NotifyService, Depends(service)]


def _admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise Forbidden("events to the host app are managed with an admin API key")


@router.post(
    "/event-subscriptions",
    summary="Add an endpoint events are sent to (admin)",
    status_code=201,
    response_model=SubscriptionCreated,
    responses={
        201: {
            "description": "Added; `secret` is shown this once",
            "content": json_examples(SUBSCRIPTION_CREATED_EXAMPLES),
        },
        **error_responses(400, 401, 403, 413, 422, codes=_ADMIN),
    },
)
async def create_subscription(
    notify: Service,
    session: WriteSession,
    principal: CurrentPrincipal,
    body: Annotated[SubscriptionCreate, Body(openapi_examples=SUBSCRIPTION_CREATE_EXAMPLES)],
) -> dict[str, Any]:
    """Events of the chosen types (all when `types` is left out) are POSTed to `url`, signed
    as Standard Webhooks say with the `secret` of the answer. Events that happened before are
    not sent."""
    _admin(principal)
    endpoint, secret = await notify.subscribe(
        session,
        url=body.url,
        types=list(body.types) if body.types is not None else None,
        description=body.description,
    )
    return {**subscription_out(endpoint), "secret": secret}


@router.get(
    "/event-subscriptions",
    summary="The endpoints events are sent to (admin)",
    response_model=SubscriptionList,
    responses={
        200: {
            "description": "The settings' endpoints first, then those added here",
            "content": json_examples(SUBSCRIPTION_LIST_EXAMPLES),
        },
        **error_responses(400, 401, 403, codes=_ADMIN),
    },
)
async def list_subscriptions(
    notify: Service, session: ReadSession, principal: CurrentPrincipal
) -> dict[str, Any]:
    _admin(principal)
    return {"items": [subscription_out(e) for e in await notify.endpoints(session)]}


@router.delete(
    "/event-subscriptions/{subscription_id}",
    summary="Remove an endpoint added here (admin)",
    status_code=204,
    response_class=Response,
    responses={
        204: {"description": "Removed; its deliveries not yet made are cancelled"},
        **error_responses(
            400,
            401,
            403,
            404,
            409,
            codes=(*_ADMIN, "event_subscription_not_found", "subscription_in_settings"),
        ),
    },
)
async def delete_subscription(
    subscription_id: SubscriptionIdPath,
    notify: Service,
    session: WriteSession,
    principal: CurrentPrincipal,
) -> Response:
    """The settings' endpoints (`settings`, `legacy-reauth`) are removed in the settings."""
    _admin(principal)
    await notify.unsubscribe(session, subscription_id)
    return Response(status_code=204)


@router.get(
    "/event-deliveries",
    summary="The delivery log, newest first (admin)",
    response_model=DeliveryPage,
    responses={
        200: {
            "description": "A page of deliveries",
            "content": json_examples(DELIVERY_PAGE_EXAMPLES),
        },
        **error_responses(400, 401, 403, 422, codes=(*_ADMIN, "invalid_cursor")),
    },
)
async def list_deliveries(
    notify: Service,
    session: ReadSession,
    principal: CurrentPrincipal,
    event_type: TypeQuery = None,
    state: StateQuery = None,
    subscription: SubscriptionQuery = None,
    owner: OwnerQuery = None,
    cursor: CursorQuery = None,
    limit: LimitQuery = 50,
) -> dict[str, Any]:
    """Each event to each endpoint, with its state and last attempt; `state=failed` lists what
    needs a look. `GET /event-deliveries/{id}` has every attempt."""
    _admin(principal)
    page = await notify.deliveries(
        session,
        event_type=event_type,
        state=state,
        subscription_id=subscription,
        owner=owner,
        cursor=cursor,
        limit=limit,
    )
    return {"items": [delivery_out(d) for d in page.deliveries], "next_cursor": page.next_cursor}


@router.get(
    "/event-deliveries/{delivery_id}",
    summary="One delivery, its event and every attempt (admin)",
    response_model=DeliveryDetail,
    responses={
        200: {"description": "The delivery", "content": json_examples(DELIVERY_EXAMPLES)},
        **error_responses(400, 401, 403, 404, 422, codes=(*_ADMIN, "event_delivery_not_found")),
    },
)
async def get_delivery(
    delivery_id: DeliveryIdPath,
    notify: Service,
    session: ReadSession,
    principal: CurrentPrincipal,
) -> dict[str, Any]:
    _admin(principal)
    return delivery_detail(*await notify.delivery(session, delivery_id))


@router.post(
    "/event-deliveries/{delivery_id}/retry",
    summary="Send a failed or delivered delivery again (admin)",
    response_model=DeliveryOut,
    responses={
        200: {"description": "Queued again", "content": json_examples(RETRIED_EXAMPLES)},
        **error_responses(
            400,
            401,
            403,
            404,
            409,
            422,
            codes=(
                *_ADMIN,
                "event_delivery_not_found",
                "delivery_pending",
                "delivery_cancelled",
            ),
        ),
    },
)
async def retry_delivery(
    delivery_id: DeliveryIdPath,
    notify: Service,
    session: WriteSession,
    principal: CurrentPrincipal,
) -> dict[str, Any]:
    """A new job sends it now, with all its attempts; the same `webhook-id` as before, so a
    host app that has it already can drop it."""
    _admin(principal)
    return delivery_out(await notify.retry(session, delivery_id))
