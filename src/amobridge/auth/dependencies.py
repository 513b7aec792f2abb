"""FastAPI dependencies: who is calling. Feature routers import these, never ``amobridge.web``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from amobridge.auth.principal import KEY_PREFIX, Principal
from amobridge.auth.service import AuthService
from amobridge.errors import ServiceError


async def auth_service(request: Request) -> AuthService:
    # async: FastAPI runs a plain ``def`` dependency in its thread pool, a hop per request.
    found: AuthService = request.app.state.services.auth
    return found


# The two ways a caller proves who it is, as the OpenAPI document's security schemes. Either
# one will do (a route lists both, as alternatives); neither refuses a request by itself
# (auto_error=False): AuthService judges the raw headers, so an empty or non-Bearer header is
# treated as it always was.
API_KEY_HEADER = APIKeyHeader(
    name="X-API-Key",
    scheme_name="apiKey",
    description=(
        "An amobridge API key, `amb_…` (`amobridge api-keys create --role app|admin`). "
        "Role `app` acts for the owner each request names (`owner`); role `admin` for any "
        "owner, and may import tokens. The same key may be sent as `Authorization: Bearer amb_…`."
    ),
    auto_error=False,
)
BEARER = HTTPBearer(
    scheme_name="bearerAuth",
    bearerFormat="JWT",
    description=(
        "`Authorization: Bearer <token>`: an end user's JWT (HS256 with "
        "AMOBRIDGE_SECURITY__JWT_SECRET or RS256 with AMOBRIDGE_SECURITY__JWT_PUBLIC_KEY; "
        "`sub` is the owner, `exp` is required), or an API key `amb_…`. A user's token acts "
        "only for its own `sub`."
    ),
    auto_error=False,
)
ApiKeyDeclared = Annotated[str | None, Security(API_KEY_HEADER)]
BearerDeclared = Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]


async def current_principal(
    request: Request,
    auth: Annotated[AuthService, Depends(auth_service)],
    _api_key: ApiKeyDeclared,
    _bearer: BearerDeclared,
) -> Principal:
    headers = request.headers
    return await auth.authenticate(headers.get("authorization"), headers.get("x-api-key"))


async def principal_or_query_token(
    request: Request,
    auth: Annotated[AuthService, Depends(auth_service)],
    _api_key: ApiKeyDeclared,
    _bearer: BearerDeclared,
    token: Annotated[
        str | None,
        Query(
            max_length=8192,
            description=(
                "An end user's JWT, for a page a browser opens without headers (never an API "
                "key: those are refused in URLs)."
            ),
        ),
    ] = None,
) -> Principal:
    """Pages a browser opens (no headers): a user's JWT may come as ``?token=``. API keys may
    not travel in URLs (proxies log them): a host backend calls with its key in a header."""
    authorization = request.headers.get("authorization")
    x_api_key = request.headers.get("x-api-key")
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
