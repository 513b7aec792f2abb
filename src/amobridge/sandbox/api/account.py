"""``GET /api/v4/account`` and ``/api/v4/users``.

The account answers ``id, name, subdomain, created_at, created_by, updated_at, updated_by,
current_user_id`` (the token's user), ``country, currency, currency_symbol, customers_mode,
is_unsorted_on, is_loss_reason_enabled, is_helpbot_enabled, is_technical_account,
contact_name_display_order, mobile_feature_version, _links``. ``with`` adds: ``amojo_id``,
``uuid``, ``version``, ``amojo_rights``, ``drive_url`` (top level) and ``users_groups``,
``task_types``, ``datetime_settings`` (under ``_embedded``); unknown parts are
ignored. ``amojo_id`` and ``uuid`` are stable per account.

Users: ``GET /api/v4/users`` is paged with ``_total_items`` and ``_page_count`` (as amoCRM's
users list has); ``GET /api/v4/users/{id}`` answers 204 when unknown.
"""

from __future__ import annotations

import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from amobridge.sandbox.api.common import api
from amobridge.sandbox.api.query import ListQuery, base_url, link, page_links
from amobridge.sandbox.api.serialize import user_json
from amobridge.sandbox.http import ApiContext, hal, no_content
from amobridge.sandbox.state import Account

_NAMESPACE = uuid.UUID("7c1f3f1e-5b8e-4d59-9b8a-8f0e6a2d4c11")
_CURRENCY_SYMBOLS = {"RUB": "₽", "USD": "$", "EUR": "€"}
_TASK_TYPES = [
    {"id": 1, "name": "Связаться", "color": None, "icon_id": None, "code": "FOLLOW_UP"},
    {"id": 2, "name": "Встреча", "color": None, "icon_id": None, "code": "MEETING"},
]


def _stable_uuid(account: Account, what: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{what}:{account.id}"))


def account_body(account: Account, user_id: int, base: str, with_: set[str]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": account.id,
        "name": account.name,
        "subdomain": account.subdomain,
        "created_at": account.created_at,
        "created_by": 0,
        "updated_at": account.created_at,
        "updated_by": 0,
        "current_user_id": user_id,
        "country": account.country,
        "customers_mode": "disabled",
        "is_unsorted_on": True,
        "is_loss_reason_enabled": False,
        "is_helpbot_enabled": False,
        "is_technical_account": False,
        "contact_name_display_order": 1,
        "currency": account.currency,
        "currency_symbol": _CURRENCY_SYMBOLS.get(account.currency, account.currency),
        "mobile_feature_version": 0,
        "_links": link(f"{base}/api/v4/account"),
    }
    if "amojo_id" in with_:
        body["amojo_id"] = _stable_uuid(account, "amojo")
    if "uuid" in with_:
        body["uuid"] = _stable_uuid(account, "account")
    if "version" in with_:
        body["version"] = 1
    if "amojo_rights" in with_:
        body["amojo_rights"] = {"can_direct": True, "can_create_groups": True}
    if "drive_url" in with_:
        body["drive_url"] = f"https://drive-b.{account.base_domain}"
    embedded: dict[str, Any] = {}
    if "users_groups" in with_:
        embedded["users_groups"] = [{"id": 0, "name": "Отдел продаж", "uuid": None}]
    if "task_types" in with_:
        embedded["task_types"] = [dict(t) for t in _TASK_TYPES]
    if "datetime_settings" in with_:
        russian = account.base_domain == "amocrm.ru"
        embedded["datetime_settings"] = {
            "date_pattern": "d.m.Y H:i" if russian else "m/d/Y H:i",
            "short_date_pattern": "d.m.Y" if russian else "m/d/Y",
            "short_time_pattern": "H:i",
            "date_format": "d.m.Y" if russian else "m/d/Y",
            "time_format": "H:i",
            "timezone": "Europe/Moscow" if russian else "UTC",
            "timezone_offset": "+03:00" if russian else "+00:00",
        }
    if embedded:
        body["_embedded"] = embedded
    return body


async def get_account(request: Request, ctx: ApiContext) -> Response:
    raw = request.query_params.get("with", "")
    with_ = {w.strip() for w in raw.split(",") if w.strip()}
    return hal(account_body(ctx.account, ctx.user_id, base_url(request), with_))


async def list_users(request: Request, ctx: ApiContext) -> Response:
    query = ListQuery.parse(request, ctx.sandbox.config)
    users = sorted(ctx.account.users.values(), key=lambda u: u.id)
    page, has_next = query.window(users)
    if not page:
        return no_content()
    base = base_url(request)
    return hal(
        {
            "_total_items": len(users),
            "_page": query.page,
            "_page_count": max(1, -(-len(users) // query.limit)),
            "_links": page_links(request, query, has_next),
            "_embedded": {"users": [user_json(u, base) for u in page]},
        }
    )


async def get_user(request: Request, ctx: ApiContext) -> Response:
    user = ctx.account.users.get(request.path_params["user_id"])
    if user is None:
        return no_content()
    return hal(user_json(user, base_url(request)))


def routes() -> list[BaseRoute]:
    return [
        Route("/api/v4/account", api(get_account), methods=["GET"]),
        Route("/api/v4/users", api(list_users), methods=["GET"]),
        Route("/api/v4/users/{user_id:int}", api(get_user), methods=["GET"]),
    ]
