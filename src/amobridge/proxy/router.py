"""HTTP routes of the amoCRM proxy: ``/proxy/{owner}/api/v4/{path}`` for GET, POST, PATCH, PUT
and DELETE (one operation each in the OpenAPI document), and a catch-all that answers any other
path under ``/proxy/{owner}/`` with 404 ``not_an_api_path``.

The owner is resolved exactly as ``GET /amocrm/status`` resolves it (``principal.owner_for``): an
app key acts for the owner the path names, a user's JWT only for its own ``sub``, an admin key
for any owner."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from amobridge.auth.dependencies import CurrentPrincipal
from amobridge.dependencies import get_services
from amobridge.proxy.paths import api_path, not_an_api_path
from amobridge.proxy.schemas import (
    LEAD_PATCH_EXAMPLE,
    LEAD_UPDATED_EXAMPLE,
    LEADS_BODY_EXAMPLE,
    LEADS_CREATED_EXAMPLE,
    ApiPathParameter,
    OwnerPath,
    get_responses,
    request_body,
    write_responses,
)
from amobridge.proxy.service import ProxyCall, ProxyService, forwarded_request_headers

router = APIRouter(tags=["proxy"])

PATH = "/proxy/{owner}/api/v4/{path:path}"


async def service(request: Request) -> ProxyService:
    # async: FastAPI runs a plain ``def`` dependency in its thread pool, a hop per request.
    services = get_services(request)
    return ProxyService(services.settings, services.db, services.keyring, services.clients)


Service = Annotated[ProxyService, Depends(service)]


async def forward(
    request: Request,
    svc: Service,
    principal: CurrentPrincipal,
    owner: OwnerPath,
    path: ApiPathParameter,
) -> Response:
    who = principal.owner_for(owner)
    checked = api_path(
        owner=owner,
        path=path,
        raw_path=request.scope.get("raw_path"),
        root_path=str(request.scope.get("root_path") or ""),
    )
    call = ProxyCall(
        method=request.method,
        path=checked,
        params=request.query_params.multi_items(),
        body=await request.body(),  # within AMOBRIDGE_SERVER__MAX_BODY_BYTES (the middleware)
        headers=forwarded_request_headers(request.headers.items()),
    )
    reply = await svc.forward(who, call, actor=principal.name)
    return Response(reply.content, status_code=reply.status, headers=reply.headers)


_DESCRIPTION = (
    "Forwards the call to the owner's amoCRM account with the owner's tokens (refreshed as "
    "needed), within the connection's pace of 7 requests per second shared with amobridge's "
    "own calls. Forwarded: the method, the path after `/api/v4/`, the query string, the body "
    "and `Content-Type`, `Accept`, `Accept-Language`, `If-Modified-Since` (never your "
    "`Authorization`, `X-API-Key` or cookies). Answered: amoCRM's status, body, `Content-Type` "
    "and `Retry-After`, plus `X-Amobridge-Attempts`."
)
_METHODS: list[tuple[str, str, dict[str, Any]]] = [
    (
        "GET",
        "Proxy a GET to amoCRM (retried on 429, 5xx, network failures)",
        {"responses": get_responses()},
    ),
    (
        "POST",
        "Proxy a POST to amoCRM (never sent twice)",
        {
            "responses": write_responses(LEADS_CREATED_EXAMPLE, "POST /api/v4/leads"),
            "openapi_extra": request_body(LEADS_BODY_EXAMPLE, "POST /api/v4/leads"),
        },
    ),
    (
        "PATCH",
        "Proxy a PATCH to amoCRM (never sent twice)",
        {
            "responses": write_responses(LEAD_UPDATED_EXAMPLE, "PATCH /api/v4/leads/19619"),
            "openapi_extra": request_body(LEAD_PATCH_EXAMPLE, "PATCH /api/v4/leads/19619"),
        },
    ),
    (
        "PUT",
        "Proxy a PUT to amoCRM (never sent twice)",
        {
            "responses": write_responses(LEAD_UPDATED_EXAMPLE, "PUT /api/v4/leads/19619"),
            "openapi_extra": request_body(LEAD_PATCH_EXAMPLE, "PUT /api/v4/leads/19619"),
        },
    ),
    (
        "DELETE",
        "Proxy a DELETE to amoCRM (never sent twice)",
        {"responses": write_responses({}, "DELETE /api/v4/leads/19619/notes/7")},
    ),
]
for _method, _summary, _extra in _METHODS:
    router.add_api_route(
        PATH,
        forward,
        methods=[_method],
        name=f"proxy_{_method.lower()}",
        summary=_summary,
        description=_DESCRIPTION,
        response_class=Response,
        **_extra,
    )


@router.api_route(
    "/proxy/{owner}/{rest:path}",
    methods=[method for method, _, _ in _METHODS],
    include_in_schema=False,
)
async def not_an_api_call(owner: str, rest: str) -> Response:
    """Anything under ``/proxy/{owner}/`` that is not ``api/v4/…``: nothing is forwarded."""
    raise not_an_api_path()
