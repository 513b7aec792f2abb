"""Webhook subscriptions: ``/api/v4/webhooks``, and the control routes of webhook delivery.

API (admin users only, as in amoCRM; others get 403):

- ``GET /api/v4/webhooks[?filter[destination]=…]`` → ``{"_total_items", "_embedded": {"webhooks":
  [{id, destination, created_at, updated_at, account_id, created_by, sort, disabled, settings}]}}``,
  204 when there are none;
- ``POST /api/v4/webhooks {"destination", "settings": [...], "sort"?}`` → 201 and the subscription;
  posting a known destination updates it and re-enables it; at most ``max_webhooks_per_account``;
- ``DELETE /api/v4/webhooks {"destination"}`` → 204, 404 if unknown.

Control (``/_sandbox/``): the delivery log, a flush that waits for deliveries in flight, and the
admin's re-enable of a disabled subscription.

amoCRM documents the API at https://www.amocrm.ru/developers/content/crm_platform/webhooks-api.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from amobridge.sandbox.control import (
    ControlError,
    body_object,
    control_endpoint,
    field,
    get_account,
    reject_unknown,
)
from amobridge.sandbox.http import (
    ApiContext,
    ApiProblem,
    api_endpoint,
    hal,
    no_content,
    problem,
    read_json,
)
from amobridge.sandbox.state import Account, WebhookSubscription
from amobridge.sandbox.webhooks import WEBHOOK_SETTINGS

if TYPE_CHECKING:
    from amobridge.sandbox.app import Sandbox

DESTINATION_MAX_LENGTH = 2048


def subscription_json(subscription: WebhookSubscription) -> dict[str, Any]:
    return {
        "id": subscription.id,
        "destination": subscription.destination,
        "created_at": subscription.created_at,
        "updated_at": subscription.updated_at,
        "account_id": subscription.account_id,
        "created_by": subscription.created_by,
        "sort": subscription.sort,
        "disabled": subscription.disabled,
        "settings": list(subscription.settings),
    }


def _require_admin(context: ApiContext) -> None:
    user = context.account.users.get(context.user_id)
    if user is None or not user.is_admin:
        raise ApiProblem(problem(403, "Access denied: only account administrators manage webhooks"))


def _error(code: str, path: str, detail: str) -> dict[str, str]:
    return {"code": code, "path": path, "detail": detail}


def _valid_destination(value: Any) -> bool:
    if not isinstance(value, str) or not value or len(value) > DESTINATION_MAX_LENGTH:
        return False
    if value != value.strip():
        return False
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _body_object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ApiProblem.validation(
            [
                {
                    "request_id": "0",
                    "errors": [_error("InvalidType", "", "The request body must be an object")],
                }
            ]
        )
    return data


async def list_webhooks(request: Request, context: ApiContext) -> Response:
    """GET /api/v4/webhooks: the account's subscriptions, optionally one destination's."""
    _require_admin(context)
    wanted = request.query_params.get("filter[destination]")
    items = sorted(context.account.webhooks.values(), key=lambda s: (s.sort, s.id))
    if wanted is not None:
        items = [s for s in items if s.destination == wanted]
    if not items:
        return no_content()
    return hal(
        {
            "_total_items": len(items),
            "_embedded": {"webhooks": [subscription_json(s) for s in items]},
        }
    )


async def subscribe(request: Request, context: ApiContext) -> Response:
    """POST /api/v4/webhooks: subscribe a destination, or update its subscription."""
    _require_admin(context)
    data = _body_object(await read_json(request))
    errors: list[dict[str, str]] = []
    destination = data.get("destination")
    if not _valid_destination(destination):
        errors.append(
            _error("InvalidUrl", "destination", "destination must be an http(s) URL")
            if destination is not None
            else _error("NotBlank", "destination", "This value should not be blank.")
        )
    settings = data.get("settings")
    clean_settings: list[str] = []
    if not isinstance(settings, list) or not settings:
        errors.append(
            _error("NotBlank", "settings", "settings must be a non-empty array of events")
        )
    else:
        for index, value in enumerate(settings):
            if not isinstance(value, str) or value not in WEBHOOK_SETTINGS:
                errors.append(
                    _error(
                        "NotSupportedChoice",
                        f"settings.{index}",
                        "The value you selected is not a valid choice.",
                    )
                )
            elif value not in clean_settings:
                clean_settings.append(value)
    sort = data.get("sort")
    if sort is not None and (isinstance(sort, bool) or not isinstance(sort, int)):
        errors.append(_error("InvalidType", "sort", "This value should be of type int."))
    if errors:
        raise ApiProblem.validation([{"request_id": "0", "errors": errors}])
    assert isinstance(destination, str)

    account = context.account
    sandbox = context.sandbox
    now = sandbox.clock.now_int()
    existing = account.webhooks.get(destination)
    if existing is not None:
        existing.settings = clean_settings
        if sort is not None:
            existing.sort = sort
        existing.disabled = False
        existing.failures.clear()
        existing.updated_at = now
        return hal(subscription_json(existing), status=201)
    limit = sandbox.config.max_webhooks_per_account
    if len(account.webhooks) >= limit:
        raise ApiProblem.of(400, f"Webhooks limit exceeded: an account has at most {limit}")
    subscription = WebhookSubscription(
        id=sandbox.state.ids.next("webhook"),
        account_id=account.id,
        destination=destination,
        settings=clean_settings,
        sort=sort if sort is not None else 1,
        created_by=context.user_id,
        created_at=now,
        updated_at=now,
    )
    account.webhooks[destination] = subscription
    return hal(subscription_json(subscription), status=201)


async def unsubscribe(request: Request, context: ApiContext) -> Response:
    """DELETE /api/v4/webhooks: remove the subscription of ``destination``."""
    _require_admin(context)
    data = _body_object(await read_json(request))
    destination = data.get("destination")
    if not isinstance(destination, str) or not destination:
        raise ApiProblem.validation(
            [
                {
                    "request_id": "0",
                    "errors": [
                        _error("NotBlank", "destination", "This value should not be blank.")
                    ],
                }
            ]
        )
    if context.account.webhooks.pop(destination, None) is None:
        raise ApiProblem.of(404, "Webhook not found", title="Not Found")
    return no_content()


# --- control -------------------------------------------------------------------------------------


def _query_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes"):
        return True
    if lowered in ("0", "false", "no"):
        return False
    raise ControlError(400, "delivered must be true or false")


async def deliveries(request: Request, sandbox: Sandbox) -> Response:
    """Every webhook attempt: ``?account_id&destination&delivered&limit``, oldest first."""
    query = request.query_params
    try:
        account_id = int(query["account_id"]) if "account_id" in query else None
        limit = int(query["limit"]) if "limit" in query else None
    except ValueError:
        raise ControlError(400, "account_id and limit must be numbers") from None
    delivered = _query_bool(query["delivered"]) if "delivered" in query else None
    destination = query.get("destination")
    items = [
        r.public()
        for r in sandbox.hooks.log
        if (account_id is None or r.account_id == account_id)
        and (destination is None or r.destination == destination)
        and (delivered is None or r.delivered == delivered)
    ]
    if limit is not None:
        items = items[-limit:] if limit > 0 else []
    return JSONResponse(items)


async def clear_deliveries(request: Request, sandbox: Sandbox) -> Response:
    sandbox.hooks.log.clear()
    return Response(status_code=204)


async def flush(request: Request, sandbox: Sandbox) -> Response:
    """Wait for every delivery in flight: tests call this instead of sleeping."""
    count = await sandbox.hooks.flush()
    return JSONResponse({"flushed": count, "pending_retries": sandbox.hooks.pending_retries})


def _subscription(account: Account, data: dict[str, Any]) -> WebhookSubscription:
    destination = field(data, "destination", str)
    subscription = account.webhooks.get(destination)
    if subscription is None:
        raise ControlError(404, f"no webhook {destination!r} in account {account.id}")
    return subscription


async def enable(request: Request, sandbox: Sandbox) -> Response:
    """An admin re-enables a subscription amoCRM disabled: ``{destination}``."""
    account = get_account(sandbox, request.path_params["account_id"])
    data = await body_object(request)
    reject_unknown(data, {"destination"})
    subscription = _subscription(account, data)
    subscription.disabled = False
    subscription.failures.clear()
    subscription.updated_at = sandbox.clock.now_int()
    return JSONResponse(subscription_json(subscription))


async def list_subscriptions(request: Request, sandbox: Sandbox) -> Response:
    """An account's subscriptions with their recent failure counts (no admin token needed)."""
    account = get_account(sandbox, request.path_params["account_id"])
    return JSONResponse(
        [
            {**subscription_json(s), "recent_failures": len(s.failures)}
            for s in sorted(account.webhooks.values(), key=lambda s: (s.sort, s.id))
        ]
    )


def routes() -> list[BaseRoute]:
    return [
        Route("/api/v4/webhooks", api_endpoint(list_webhooks), methods=["GET"]),
        Route("/api/v4/webhooks", api_endpoint(subscribe), methods=["POST"]),
        Route("/api/v4/webhooks", api_endpoint(unsubscribe), methods=["DELETE"]),
    ]


def control_routes() -> list[BaseRoute]:
    c = control_endpoint
    return [
        Route("/_sandbox/webhook-deliveries", c(deliveries), methods=["GET"]),
        Route("/_sandbox/webhook-deliveries", c(clear_deliveries), methods=["DELETE"]),
        Route("/_sandbox/webhooks/flush", c(flush), methods=["POST"]),
        Route("/_sandbox/webhooks/{account_id}", c(list_subscriptions), methods=["GET"]),
        Route("/_sandbox/webhooks/{account_id}/enable", c(enable), methods=["POST"]),
    ]
