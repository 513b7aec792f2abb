"""Request and response bodies of the connect routes (requests are validated before any service
code runs), the one error body, and the examples the OpenAPI document shows."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Query
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic.json_schema import SkipJsonSchema

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


OWNER_DESCRIPTION = (
    "Your app's id for whoever connects (a user id, an account id): an opaque string of at most "
    "255 characters. Required with an API key; with a user's JWT it may be left out (the "
    "token's `sub` is the owner) and naming another owner is 403 `owner_mismatch`."
)
# The query parameter ``owner`` of every route that acts for one.
OwnerQuery = Annotated[
    str | None,
    Query(
        description=OWNER_DESCRIPTION,
        openapi_examples={"owner": {"summary": "A host app's user id", "value": "user-42"}},
    ),
]

SAMPLE_AMO_JWT = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJhY2NvdW50X2lkIjozMTQxNTkyNn0.c2ln"
ReturnQuery = Annotated[
    Literal["web", "app"],
    Query(
        alias="return",
        description=(
            "Where the flow ends: `web`, the service's own page; `app`, a page that opens the "
            "mobile app's deep link (`redirect`)"
        ),
    ),
]
RedirectQuery = Annotated[
    str | None,
    Query(
        max_length=2048,
        description=(
            "With `return=app`: the app's deep link; its scheme must be one of "
            "AMOBRIDGE_MOBILE__ALLOWED_SCHEMES (never http(s))"
        ),
        openapi_examples={
            "deep_link": {"summary": "A mobile app", "value": "myapp://amocrm/callback"}
        },
    ),
]
FormatQuery = Annotated[
    Literal["redirect", "json"],
    Query(
        description=(
            "`redirect`: a 302 to amoCRM (for a browser); `json`: `{url, expires_in}` for a "
            "backend to hand to a browser"
        )
    ),
]

EXAMPLE_CLIENT_ID = "3f1c7a52-9d1e-4c8b-a0f2-6b5e8d4c2a10"


class ExchangeCodeBody(_Body):
    code: str = Field(
        min_length=1,
        max_length=4096,
        description="The authorization code amoCRM sent to your redirect URI (lives 20 minutes)",
    )
    referer: Plain = Field(
        min_length=1,
        max_length=255,
        description="The account's domain amoCRM sent with the code (`referer`)",
    )
    owner: Owner | None = Field(None, max_length=255, description=OWNER_DESCRIPTION)

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "code": "def50200a1b2c3d4e5f6",
                    "referer": "mycompany.amocrm.ru",
                    "owner": "user-42",
                }
            ]
        }
    )


class ImportTokensBody(_Body):
    owner: Owner = Field(min_length=1, max_length=255, description=OWNER_DESCRIPTION)
    domain: Plain = Field(
        min_length=1, max_length=255, description="mycompany.amocrm.ru or mycompany"
    )
    access_token: str = Field(min_length=1, max_length=8192)
    refresh_token: str | None = Field(
        None, max_length=8192, description="Left out for a long-lived token"
    )
    expires_in: int | None = Field(
        None,
        ge=1,
        le=5 * 365 * 86400,
        description="Seconds the access token lives; else its `exp` claim, else one day",
    )
    client_id: ClientId | None = Field(
        None, max_length=128, description="The integration the refresh token belongs to"
    )
    client_secret: str | None = Field(None, max_length=1024)
    redirect_uri: Plain | None = Field(None, max_length=2048)

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "owner": "user-42",
                    "domain": "mycompany.amocrm.ru",
                    "access_token": SAMPLE_AMO_JWT,
                    "refresh_token": "def50200f00dfeedc0ffee",
                    "expires_in": 86400,
                    "client_id": EXAMPLE_CLIENT_ID,
                    "client_secret": "Vq3x9ZlA7bKp2sYw",
                    "redirect_uri": "https://connect.example.com/amocrm/callback",
                }
            ]
        }
    )


class SecretsBody(BaseModel):
    """What amoCRM POSTs to the secrets webhook, for the OpenAPI document only: the route reads
    the raw body itself (JSON or a form), so these fields are checked there."""

    client_id: str = Field(max_length=128)
    client_secret: str = Field(max_length=1024)
    state: str = Field(max_length=200)


SECRETS_EXAMPLE = {
    "client_id": EXAMPLE_CLIENT_ID,
    "client_secret": "Vq3x9ZlA7bKp2sYw",
    "state": "b3BhcXVlLXN0YXRl.c2lnbmF0dXJl",
}

EXCHANGE_CODE_EXAMPLES = {
    "with_owner": {
        "summary": "A host backend (API key) names the owner",
        "value": {
            "code": "def50200a1b2c3d4e5f6",
            "referer": "mycompany.amocrm.ru",
            "owner": "user-42",
        },
    },
    "user_token": {
        "summary": "A user's JWT: the owner is its sub",
        "value": {"code": "def50200a1b2c3d4e5f6", "referer": "mycompany.amocrm.ru"},
    },
}

IMPORT_TOKENS_EXAMPLES = {
    "oauth_pair": {
        "summary": "An OAuth pair of an integration",
        "value": {
            "owner": "user-42",
            "domain": "mycompany.amocrm.ru",
            "access_token": SAMPLE_AMO_JWT,
            "refresh_token": "def50200f00dfeedc0ffee",
            "expires_in": 86400,
            "client_id": EXAMPLE_CLIENT_ID,
            "client_secret": "Vq3x9ZlA7bKp2sYw",
        },
    },
    "long_lived": {
        "summary": "A long-lived token (no refresh token)",
        "value": {
            "owner": "user-42",
            "domain": "mycompany.amocrm.ru",
            "access_token": SAMPLE_AMO_JWT,
        },
    },
}


class ErrorBody(BaseModel):
    """The one error shape of the HTTP API (see :mod:`amobridge.web.errors`): every 4xx and 5xx
    answer in JSON, whichever part of the service sent it."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {"error": "connection_not_found", "detail": "no amoCRM connection for this owner"}
            ]
        },
    )

    error: str = Field(
        description=(
            "A stable snake_case code to branch on: the status's own (`bad_request`, "
            "`unauthorized`, `forbidden`, `not_found`, `method_not_allowed`, `conflict`, "
            "`body_too_large`, `validation_error`, `internal_error`) or a more specific one "
            "named in each response's description (`owner_required`, `token_expired`, "
            "`connection_not_found`, …). New codes may be added; unknown ones should be "
            "treated as their HTTP status."
        ),
        examples=["connection_not_found"],
    )
    detail: str = Field(
        description="What went wrong and what to do, in words for people (may be reworded).",
        examples=["no amoCRM connection for this owner"],
    )


ERROR_BODY_REF = "#/components/schemas/ErrorBody"

# Every error code the routes answer with: its HTTP status and a typical detail.
ERROR_CODES: dict[str, tuple[int, str]] = {
    "bad_request": (400, "body must be a JSON object"),
    "owner_required": (400, "owner is required (query parameter or body field 'owner')"),
    "invalid_owner": (400, "owner must not contain control characters"),
    "redirect_not_allowed": (400, "redirect scheme 'https' is not allowed; allowed: myapp"),
    "return_url_not_allowed": (
        400,
        "return_url https://evil.example/ is not allowed: AMOBRIDGE_CONNECT__RETURN_URLS lists "
        "https://admin.example.com/amocrm",
    ),
    "invalid_domain": (
        400,
        "account not found: use your subdomain, e.g. acme.amocrm.ru (not an amoCRM/Kommo host "
        "(amocrm.ru, amocrm.com, kommo.com); got 'mycompany.example.com')",
    ),
    "integration_required": (
        400,
        "a refresh token needs its integration: give client_id and client_secret "
        "(or configure AMOBRIDGE_AMO__CLIENT_ID/CLIENT_SECRET)",
    ),
    "invalid_token_claims": (
        400,
        "the access token's exp claim is not a plausible expiry time: expected a Unix time "
        "between 1970 and ten years from now",
    ),
    "bad_referer": (
        400,
        "Unknown amoCRM account: amoCRM's answer does not name a valid account domain. Start "
        "the connection again; use your account's own address, e.g. acme.amocrm.ru.",
    ),
    "exchange_failed": (
        400,
        "amoCRM refused the authorization code: The code could not be exchanged for tokens. "
        "Start the connection again (a code lives 20 minutes and works once).",
    ),
    "invalid_content_length": (
        400,
        "invalid Content-Length: send one decimal Content-Length header, or none",
    ),
    "unauthorized": (401, "authentication required: an API key or a user token"),
    "invalid_api_key": (401, "unknown or revoked API key"),
    "token_expired": (401, "the token has expired: sign in again"),
    "invalid_token": (401, "invalid token: Signature verification failed"),
    "user_tokens_disabled": (
        401,
        "end-user tokens are not enabled (AMOBRIDGE_SECURITY__JWT_SECRET)",
    ),
    "api_key_in_url": (
        401,
        "API keys must not be sent in URLs: use the Authorization header, or GET "
        "/amocrm/auth?format=json and send the browser to the returned URL",
    ),
    "unknown_integration": (401, "unknown integration"),
    "bad_signature": (401, "bad signature"),
    "forbidden": (403, "importing tokens needs an admin API key"),
    "owner_mismatch": (403, "this token belongs to another owner"),
    "state_invalid": (403, "state is expired: nothing stored"),
    "not_found": (404, "no such route or file: the routes are listed in /openapi.json"),
    "connection_not_found": (404, "no amoCRM connection for this owner"),
    "webhook_not_found": (
        404,
        "no webhook at this URL: its secret is unknown or its connection was disconnected "
        "(nothing was stored)",
    ),
    "delivery_not_found": (404, "no webhook delivery 1042 for owner 'user-42'"),
    "account_mismatch": (
        403,
        "the body's account[id] is not the connected account's (nothing was stored)",
    ),
    # Events to the host app, /event-subscriptions and /event-deliveries.
    "event_subscription_not_found": (
        404,
        "no event subscription '6c1f0e3c9a7d4e2f8c6b1a0d9e8f7a6b'",
    ),
    "event_delivery_not_found": (404, "no event delivery 1042"),
    "subscription_in_settings": (
        409,
        "subscription 'settings' comes from AMOBRIDGE_EVENTS__URL: unset it there and restart "
        "the service",
    ),
    "delivery_pending": (
        409,
        "event delivery 1042 is pending already: its job sends it (see job 2087)",
    ),
    "delivery_cancelled": (
        409,
        "event delivery 1042 was cancelled with its subscription: there is no endpoint to send "
        "it to",
    ),
    "method_not_allowed": (405, "PUT is not allowed on this route: use GET"),
    "conflict": (409, "the request conflicts with the current state: read it again and retry"),
    "not_configured": (
        409,
        "no amoCRM integration is configured (AMOBRIDGE_AMO__CLIENT_ID/CLIENT_SECRET); use the "
        "website button page /amocrm/connect instead",
    ),
    "secrets_already_received": (409, "credentials for this state were already received"),
    "body_too_large": (
        413,
        "request body is larger than 1048576 bytes: send a smaller one (the limit is "
        "AMOBRIDGE_SERVER__MAX_BODY_BYTES)",
    ),
    "validation_error": (422, "owner: String should have at most 255 characters"),
    "lead_not_found": (404, "no lead with this id for this owner"),
    "contact_not_found": (404, "no contact with this id for this owner"),
    "import_not_found": (404, "no import with this id for this owner"),
    "invalid_cursor": (
        400,
        "cursor is not a next_cursor of this listing (with the same updated_since): start again "
        "without it",
    ),
    "unknown_pipeline": (
        422,
        "no pipeline 'Продажи' in the account; its pipelines: 'Воронка' (id 6000001)",
    ),
    "unknown_stage": (
        422,
        "no stage 'Оплачено' in pipeline 'Воронка' (id 6000001); its stages: 'Первичный контакт' "
        "(id 50000002), 'Переговоры' (id 50000003)",
    ),
    "unknown_custom_field": (
        422,
        "no custom field 'Истоник' on leads; its fields: 'Источник' (id 500004)",
    ),
    "invalid_custom_field_value": (
        422,
        "custom field 'Источник' (id 500004, select): no option 'Радио'; its options: 'Сайт' "
        "(id 700010), 'Звонок' (id 700011)",
    ),
    "invalid_email": (422, "email 'ivan@' is not an e-mail address"),
    "invalid_phone": (
        422,
        "phone '12' is not a phone number (a number without + is read as dialled in RU: "
        "AMOBRIDGE_SYNC__PHONE_REGION)",
    ),
    "idempotency_key_reused": (
        422,
        "this Idempotency-Key was already used with another request: use a new key for a new "
        "request (the first answer is replayed only for the same body)",
    ),
    "internal_error": (
        500,
        "internal error: the service logged it; try again, and tell the service's operator if "
        "it persists",
    ),
    "unavailable": (503, "the service cannot serve right now: try again in a few seconds"),
    "storage_unavailable": (
        503,
        "the database did not answer a write within 5 s: try again shortly; the service's "
        "operator sees why at /readyz",
    ),
    "amocrm_unavailable": (
        502,
        "amoCRM did not answer: The token exchange failed on the network or amoCRM returned a "
        "server error. Try again in a minute.",
    ),
    # The amoCRM proxy, /proxy/{owner}/api/v4/...
    "invalid_proxy_path": (
        400,
        "not a path the proxy forwards: a . or .. segment. Name an amoCRM API v4 path, e.g. "
        "/proxy/{owner}/api/v4/leads/123",
    ),
    "amocrm_banned": (
        403,
        "amoCRM has blocked this account's API access (a ban after too many requests); GET "
        "/api/v4/leads was not sent. Calls resume after Retry-After; ask amoCRM support to lift "
        "the block sooner.",
    ),
    "not_an_api_path": (
        404,
        "the proxy forwards amoCRM API v4 calls only: /proxy/{owner}/api/v4/<path>, e.g. "
        "/proxy/user-42/api/v4/account",
    ),
    "connection_disconnected": (
        409,
        "the owner's amoCRM connection was disconnected: connect the account again: GET "
        "/amocrm/auth?owner=user-42",
    ),
    "reauth_required": (
        409,
        "amoCRM refused the owner's grant (revoked or expired): connect the account again: GET "
        "/amocrm/auth?owner=user-42",
    ),
    "rate_limited": (
        429,
        "amoCRM asked this connection to wait; POST /api/v4/leads was not sent. Send it again "
        "after Retry-After.",
    ),
    "amocrm_timeout": (
        504,
        "amoCRM did not answer in time on POST /api/v4/leads. It was not sent again: amoCRM may "
        "or may not have applied it. Look the entities up before you send it again.",
    ),
}

# What an unauthenticated or wrongly authenticated call to a route taking credentials gets.
AUTH_ERRORS = (
    "unauthorized",
    "invalid_api_key",
    "token_expired",
    "invalid_token",
    "user_tokens_disabled",
)
OWNER_ERRORS = ("owner_required", "invalid_owner", "owner_mismatch")

_ERROR_WHY = {
    400: "Invalid request (or amoCRM refused the grant)",
    401: "No valid API key or user token",
    403: "The caller may not do this",
    404: "No such connection",
    409: "Conflict with the current state (e.g. amoCRM credentials not configured yet)",
    413: "Request body over AMOBRIDGE_SERVER__MAX_BODY_BYTES",
    422: "A parameter or the body failed validation",
    500: "Unexpected failure (logged by the service)",
    503: "The service cannot use its database right now: retry later",
    502: "amoCRM did not answer or answered with an error",
}


def error_example(code: str) -> dict[str, Any]:
    """An OpenAPI example object for ``code``'s error body."""
    status, detail = ERROR_CODES[code]
    return {"summary": f"{status} {code}", "value": {"error": code, "detail": detail}}


def error_response(status: int, *codes: str, description: str | None = None) -> dict[str, Any]:
    """One error status of a route: the ``ErrorBody`` schema, an example for each of ``codes``
    that has this status (the status's own code if none has), and the codes named in the
    description, so a client knows which to expect."""
    named = [code for code in codes if ERROR_CODES[code][0] == status]
    if not named:
        named = [code for code, (at, _) in ERROR_CODES.items() if at == status][:1]
    why = description or _ERROR_WHY[status]
    return {
        "description": f"{why}. `error`: " + ", ".join(f"`{code}`" for code in named),
        # Named explicitly: an HTML route's errors are JSON all the same.
        "content": {
            "application/json": {
                "schema": {"$ref": ERROR_BODY_REF},
                "examples": {code: error_example(code) for code in named},
            }
        },
    }


def error_responses(*statuses: int, codes: tuple[str, ...] = ()) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each status with the ``{"error", "detail"}`` JSON body and
    examples of the ``codes`` the route answers with (see :func:`error_response`)."""
    return {status: error_response(status, *codes) for status in statuses}


# --- answers -------------------------------------------------------------------------------------

DateTime = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]
ConnectionState = Literal["not_connected", "active", "reauth_required", "disconnected"]


# A key the answer leaves out rather than sets to null: None only stands for "not set", so the
# document shows neither null nor a default.
Absent = SkipJsonSchema[None]


def _absent_unless_set(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


class ConnectionStatus(BaseModel):
    """An owner's connection, never a token. Keys are camelCase as the service has always sent
    them; ``longLived`` and ``connectionId`` only once the owner has connected, ``verified`` and
    ``verifyError`` only with ``verify=true``."""

    model_config = ConfigDict(extra="ignore")

    connected: bool = Field(description="active and holding tokens: amoCRM calls can be made")
    hasTokens: bool = Field(description="an access token is stored")
    domain: str | None = Field(description="the account's host, e.g. mycompany.amocrm.ru")
    accountId: int | None = Field(description="amoCRM's account id")
    expiresAt: DateTime | None = Field(description="when the access token expires")
    lastRefreshAt: DateTime | None = Field(description="when the tokens were last refreshed")
    lastError: str | None = Field(
        description="the last failure with this connection, with what to do"
    )
    status: ConnectionState = Field(
        description=(
            "`not_connected` (never connected), `active`, `reauth_required` (amoCRM refused "
            "the grant: connect again through /amocrm/auth) or `disconnected`"
        )
    )
    longLived: bool | Absent = Field(
        default=None,
        description="a long-lived token with no refresh token (absent when never connected)",
        json_schema_extra=_absent_unless_set,
    )
    connectionId: str | Absent = Field(
        default=None,
        description="amobridge's id of the connection (absent when never connected)",
        json_schema_extra=_absent_unless_set,
    )
    verified: bool | Absent = Field(
        default=None,
        description="with `verify=true` only: amoCRM answered GET /api/v4/account",
        json_schema_extra=_absent_unless_set,
    )
    verifyError: str | Absent = Field(
        default=None,
        description="with `verify=true` only, when `verified` is false: why",
        json_schema_extra=_absent_unless_set,
    )


class Disconnected(ConnectionStatus):
    """The status after a disconnect."""

    disconnected: Literal[True]


class Uninstalled(BaseModel):
    disconnected: int = Field(description="how many connections the hook disconnected")
    replayed: bool = Field(description="the same hook was already acted on: nothing changed")


class SecretsAccepted(BaseModel):
    status: Literal["ok"]


class ConnectLink(BaseModel):
    """``format=json``: a link of this service for a browser to open (it works once)."""

    url: str = Field(
        description=(
            "/amocrm/auth/continue?state&handle on this service: the first browser to open it "
            "is bound to the flow and sent on to amoCRM's consent page"
        ),
        json_schema_extra={"format": "uri"},
    )
    expires_in: int = Field(description="seconds the link (its state) stays valid")


_CONNECTED = {
    "connected": True,
    "hasTokens": True,
    "domain": "mycompany.amocrm.ru",
    "accountId": 31415926,
    "expiresAt": "2025-06-02T09:30:00+00:00",
    "lastRefreshAt": "2025-06-01T09:30:00+00:00",
    "lastError": None,
    "status": "active",
    "longLived": False,
    "connectionId": "5f0c3b1e2d4a4e8f9a7b6c5d4e3f2a1b",
}
_NOT_CONNECTED = {
    "connected": False,
    "hasTokens": False,
    "domain": None,
    "accountId": None,
    "expiresAt": None,
    "lastRefreshAt": None,
    "lastError": None,
    "status": "not_connected",
}
_REAUTH = {
    **_CONNECTED,
    "connected": False,
    "status": "reauth_required",
    "lastError": "amoCRM refused the grant (invalid_grant): connect again through /amocrm/auth",
}
_DISCONNECTED = {
    **_CONNECTED,
    "connected": False,
    "hasTokens": False,
    "expiresAt": None,
    "status": "disconnected",
}

STATUS_EXAMPLES: dict[str, dict[str, Any]] = {
    "connected": {"summary": "Connected", "value": _CONNECTED},
    "not_connected": {"summary": "Never connected", "value": _NOT_CONNECTED},
    "reauth_required": {"summary": "amoCRM refused the grant", "value": _REAUTH},
}
VERIFY_EXAMPLES: dict[str, dict[str, Any]] = {
    "verified": {
        "summary": "verify=true, amoCRM answered",
        "value": {**_CONNECTED, "verified": True},
    },
    "not_verified": {
        "summary": "verify=true, amoCRM refused the grant",
        "value": {
            **_REAUTH,
            "verified": False,
            "verifyError": "amoCRM refused the grant: connect again through /amocrm/auth",
        },
    },
}
CONNECTED_EXAMPLES: dict[str, dict[str, Any]] = {
    "connected": {"summary": "Connected", "value": _CONNECTED}
}
DISCONNECTED_EXAMPLES: dict[str, dict[str, Any]] = {
    "disconnected": {"summary": "Disconnected", "value": {**_DISCONNECTED, "disconnected": True}}
}
UNINSTALL_EXAMPLES: dict[str, dict[str, Any]] = {
    "disconnected": {
        "summary": "The hook disconnected the account",
        "value": {"disconnected": 1, "replayed": False},
    },
    "replayed": {
        "summary": "The same hook again: nothing changed",
        "value": {"disconnected": 0, "replayed": True},
    },
}
CONNECT_LINK_EXAMPLE = {
    "url": "https://connect.example.com/amocrm/auth/continue?state=b3BhcXVlLXN0YXRl.c2lnbmF0dXJl&handle=Qm93c2VyLWJpbmRpbmc",
    "expires_in": 600,
}


HTML_SUCCESS_EXAMPLE = (
    '<!doctype html><html lang="ru"><head><title>amoCRM подключён</title></head>'
    "<body><h1>amoCRM подключён</h1><p>mycompany.amocrm.ru</p></body></html>"
)
HTML_ERROR_EXAMPLE = (
    '<!doctype html><html lang="ru"><head><title>The link has expired</title></head>'
    "<body><h1>The link has expired</h1><p>A connection request is valid for 10 minutes, and "
    "this one is older.</p><p>Start the connection again and finish it within 10 minutes.</p>"
    "<p><code>state_expired</code></p></body></html>"
)
HTML_BUTTON_EXAMPLE = (
    '<!doctype html><html lang="ru"><head><title>Подключить amoCRM</title></head><body>'
    '<script class="amocrm_oauth" data-state="b3BhcXVlLXN0YXRl.c2lnbmF0dXJl" '
    'src="https://www.amocrm.ru/auth/button.min.js"></script></body></html>'
)


def html_page(description: str, example: str) -> dict[str, Any]:
    """A response that is an HTML page a browser shows."""
    return {"description": description, "content": {"text/html": {"example": example}}}


def json_examples(examples: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The ``content`` of a JSON answer with these named examples."""
    return {"application/json": {"examples": examples}}
