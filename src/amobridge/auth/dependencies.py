"""FastAPI dependencies: who is calling. Feature routers import these, never ``amobridge.web``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Query, Request

from amobridge.auth.principal import KEY_PREFIX, Principal
from amobridge.auth.service import AuthService
from amobridge.errors import ServiceError


async def auth_service(request: Request) -> AuthService:
    # async: FastAPI runs a plain ``def`` dependency in its thread pool, a hop per request.
    found: AuthService = request.app.state.services.auth
    return found


async def current_principal(
    auth: Annotated[AuthService, Depends(auth_service)],
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> Principal:
    return await auth.authenticate(authorization, x_api_key)


async def principal_or_query_token(
    auth: Annotated[AuthService, Depends(auth_service)],
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
    token: Annotated[str | None, Query(max_length=8192)] = None,
) -> Principal:
    """Pages a browser opens (no headers): a user's JWT may come as ``?token=``. API keys may
    not travel in URLs (proxies log them): a host backend calls with its key in a header."""
    if authorization or x_api_key or token is None:
        return await auth.authenticate(authorization, x_api_key)
    if token.startswith(KEY_PREFIX):
        raise ServiceError(
            "API keys must not be sent in URLs: use the Authorization header, or "
            "GET /amocrm/auth?format=json and send the browser to the returned URL",
            status_code=401,
            code="api_key_in_url",
        )
    return auth.principal_from_jwt(token)


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
BrowserPrincipal = Annotated[Principal, Depends(principal_or_query_token)]
