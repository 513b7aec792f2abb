"""FastAPI dependencies: who is calling."""

from __future__ import annotations

from typing import Annotated

from fastapi import Header, Query, Request

from amobridge.errors import ServiceError
from amobridge.web.auth import KEY_PREFIX, Principal, authenticate, principal_from_jwt


async def current_principal(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> Principal:
    services = request.app.state.services
    return await authenticate(services.db, services.settings.security, authorization, x_api_key)


async def principal_or_query_token(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
    token: Annotated[str | None, Query(max_length=8192)] = None,
) -> Principal:
    """Pages a browser opens (no headers): a user's JWT may come as ``?token=``. API keys may
    not travel in URLs (proxies log them): a host backend calls with its key in a header."""
    if authorization or x_api_key or token is None:
        return await current_principal(request, authorization, x_api_key)
    if token.startswith(KEY_PREFIX):
        raise ServiceError(
            "API keys must not be sent in URLs: use the Authorization header, or "
            "GET /amocrm/auth?format=json and send the browser to the returned URL",
            status_code=401,
        )
    return principal_from_jwt(request.app.state.services.settings.security, token)
