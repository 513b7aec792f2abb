"""Request bodies of the connect routes (validated before any service code runs)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from amobridge.auth.principal import identifier_problem


def _identifier(what: str) -> AfterValidator:
    def check(value: str) -> str:
        problem = identifier_problem(value, what)
        if problem is not None:
            raise ValueError(problem)
        return value

    return AfterValidator(check)


def _no_control_characters(value: str) -> str:
    # PostgreSQL refuses a NUL byte in text; no URL needs any control character.
    if any(ord(char) < 0x20 or 0xD800 <= ord(char) <= 0xDFFF for char in value):
        raise ValueError("must not contain control characters")
    return value


Owner = Annotated[str, _identifier("owner")]
ClientId = Annotated[str, _identifier("client_id")]
Plain = Annotated[str, AfterValidator(_no_control_characters)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ExchangeCodeBody(_Body):
    code: str = Field(min_length=1, max_length=4096)
    referer: Plain = Field(min_length=1, max_length=255)
    owner: Owner | None = Field(None, max_length=255)


class ImportTokensBody(_Body):
    owner: Owner = Field(min_length=1, max_length=255)
    domain: Plain = Field(min_length=1, max_length=255, description="acme.amocrm.ru or acme")
    access_token: str = Field(min_length=1, max_length=8192)
    refresh_token: str | None = Field(None, max_length=8192)
    expires_in: int | None = Field(None, ge=1, le=5 * 365 * 86400)
    client_id: ClientId | None = Field(None, max_length=128)
    client_secret: str | None = Field(None, max_length=1024)
    redirect_uri: Plain | None = Field(None, max_length=2048)


class SecretsBody(BaseModel):
    """What amoCRM POSTs to the secrets webhook, for the OpenAPI document only: the route reads
    the raw body itself (JSON or a form), so these fields are checked there."""

    client_id: str = Field(max_length=128)
    client_secret: str = Field(max_length=1024)
    state: str = Field(max_length=200)


class ErrorBody(BaseModel):
    """The one error shape of the HTTP API (see :mod:`amobridge.web.errors`)."""

    detail: str


_ERROR_WHY = {
    400: "Invalid request (or amoCRM refused the grant)",
    401: "No valid API key or user token",
    403: "The caller may not do this",
    404: "No such connection",
    409: "Conflict with the current state (e.g. amoCRM credentials not configured yet)",
    413: "Request body over AMOBRIDGE_SERVER__MAX_BODY_BYTES",
    422: "A parameter or the body failed validation",
    502: "amoCRM did not answer or answered with an error",
}


def error_responses(*codes: int, html_route: bool = False) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each code with the ``{"detail": str}`` JSON body. An HTML
    route (``response_class=HTMLResponse``) names the media type itself: FastAPI would give a
    model the route's own ``text/html``, which its errors are not."""
    if html_route:
        json = {"application/json": {"schema": ErrorBody.model_json_schema()}}
        return {code: {"description": _ERROR_WHY[code], "content": json} for code in codes}
    return {code: {"model": ErrorBody, "description": _ERROR_WHY[code]} for code in codes}
