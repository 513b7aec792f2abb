"""HTTP routes of the connect flows. Paths carry no ``/api`` prefix: a proxy that adds one sets
``AMOBRIDGE_SERVER__ROOT_PATH`` instead (otherwise every route would 404 behind it)."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from amobridge.audit import AuditRepository
from amobridge.auth.dependencies import BrowserPrincipal, CurrentPrincipal
from amobridge.connect.callback import CallbackService
from amobridge.connect.pages import (
    LangQuery,
    ReturnUrlQuery,
    outcome_page,
    page_language,
    render,
    start_language,
)
from amobridge.connect.problems import PROBLEMS, CallbackOutcome
from amobridge.connect.schemas import (
    AUTH_ERRORS,
    CONNECT_LINK_EXAMPLE,
    CONNECTED_EXAMPLES,
    DISCONNECTED_EXAMPLES,
    EXCHANGE_CODE_EXAMPLES,
    HTML_BUTTON_EXAMPLE,
    HTML_ERROR_EXAMPLE,
    HTML_SUCCESS_EXAMPLE,
    IMPORT_TOKENS_EXAMPLES,
    OWNER_ERRORS,
    SECRETS_EXAMPLE,
    STATUS_EXAMPLES,
    UNINSTALL_EXAMPLES,
    VERIFY_EXAMPLES,
    ConnectionStatus,
    ConnectLink,
    Disconnected,
    ExchangeCodeBody,
    FormatQuery,
    ImportTokensBody,
    OwnerQuery,
    RedirectQuery,
    ReturnQuery,
    SecretsAccepted,
    SecretsBody,
    Uninstalled,
    error_responses,
    html_page,
    json_examples,
)
from amobridge.connect.service import ConnectService
from amobridge.connect.stores import (
    binding_cookie_name,
    cookie_binding,
    link_binding,
    new_binding_secret,
)
from amobridge.dependencies import WriteSession
from amobridge.errors import Forbidden, ServiceError

router = APIRouter(tags=["connect"])

# What a route that takes credentials can be refused with (besides its own errors).
_CALLER_ERRORS = (*AUTH_ERRORS, *OWNER_ERRORS)
_TO_AMOCRM = {
    "description": "Redirect to amoCRM's consent page",
    "headers": {
        "Location": {"description": "amoCRM's consent page", "schema": {"type": "string"}},
        "Set-Cookie": {
            "description": (
                "`amb_state_…`: binds the flow to this browser (HttpOnly, SameSite=Lax, "
                "Path=/amocrm/callback)"
            ),
            "schema": {"type": "string"},
        },
    },
}


async def service(request: Request) -> ConnectService:
    # async: FastAPI runs a plain ``def`` dependency in its thread pool, a hop per request.
    found: ConnectService = request.app.state.services.connect
    return found


def callback_service(request: Request) -> CallbackService:
    found: CallbackService = request.app.state.services.connect_callback
    return found


Service = Annotated[ConnectService, Depends(service)]
Callback = Annotated[CallbackService, Depends(callback_service)]


def _callback_path(request: Request) -> str:
    """The binding cookie goes back to the callback only (behind the proxy's prefix too)."""
    return str(request.scope.get("root_path") or "").rstrip("/") + "/amocrm/callback"


def _cookie_flags(request: Request, svc: ConnectService) -> dict[str, Any]:
    return {
        "path": _callback_path(request),
        "secure": svc.public_url.lower().startswith("https://"),
        "httponly": True,
        "samesite": "lax",
    }


def _bind_browser(
    response: Response, request: Request, svc: ConnectService, state: str, token: str
) -> None:
    """Bind ``state`` to this browser: the callback accepts it only with this cookie."""
    response.set_cookie(
        binding_cookie_name(state),
        token,
        max_age=int(svc.states.ttl.total_seconds()),
        **_cookie_flags(request, svc),
    )


@router.get(
    "/amocrm/auth",
    summary="Start the OAuth redirect flow",
    response_model=ConnectLink,
    responses={
        200: {
            "description": "`format=json`: a link for a browser to open",
            "content": json_examples(
                {"link": {"summary": "A link", "value": CONNECT_LINK_EXAMPLE}}
            ),
        },
        302: _TO_AMOCRM,
        **error_responses(
            400,
            401,
            403,
            409,
            422,
            codes=(
                *_CALLER_ERRORS,
                "redirect_not_allowed",
                "api_key_in_url",
                "not_configured",
                "return_url_not_allowed",
            ),
        ),
    },
)
async def auth(
    request: Request,
    svc: Service,
    session: WriteSession,
    principal: BrowserPrincipal,
    owner: OwnerQuery = None,
    return_: ReturnQuery = "web",
    redirect: RedirectQuery = None,
    format: FormatQuery = "redirect",
    return_url: ReturnUrlQuery = None,
    lang: LangQuery = None,
) -> Response:
    """302 to amoCRM's consent page (or ``{"url"}`` with ``format=json`` for host backends that
    hand the URL to a browser). ``return=app`` ends on a deep-link page for mobile apps.

    The flow is bound to the browser that starts it (a cookie only the callback receives). The
    ``format=json`` URL is this service's ``/amocrm/auth/continue``: the browser that opens it
    first is bound, then sent on to amoCRM."""
    who = principal.owner_for(owner)
    secret = new_binding_secret()
    chosen = start_language(request, lang)
    if format == "json":
        state = await svc.redirect_state(
            session,
            who,
            return_to=return_,
            app_redirect=redirect,
            return_url=return_url,
            lang=chosen,
            browser_binding=link_binding(secret),
        )
        query = urlencode({"state": state, "handle": secret})
        url = f"{svc.public_url}/amocrm/auth/continue?{query}"
        return JSONResponse({"url": url, "expires_in": int(svc.states.ttl.total_seconds())})
    state = await svc.redirect_state(
        session,
        who,
        return_to=return_,
        app_redirect=redirect,
        return_url=return_url,
        lang=chosen,
        browser_binding=cookie_binding(secret),
    )
    response = RedirectResponse(svc.consent_url(state), status_code=302)
    _bind_browser(response, request, svc, state, secret)
    return response


@router.get(
    "/amocrm/auth/continue",
    summary="Open a format=json connection link",
    # For the document only (the route returns its responses itself): a 302 has no body.
    response_class=RedirectResponse,
    status_code=302,
    responses={
        302: _TO_AMOCRM,
        400: html_page("The error page (a link used twice, expired or forged)", HTML_ERROR_EXAMPLE),
        **error_responses(422),
    },
)
async def auth_continue(
    request: Request,
    svc: Service,
    session: WriteSession,
    state: Annotated[str, Query(max_length=200)] = "",
    handle: Annotated[str, Query(max_length=200)] = "",
) -> Response:
    """Bind the flow to the browser opening the link, then 302 to amoCRM's consent page. The
    link works once (a second opening gets an error page saying so)."""
    bound = await svc.states.bind(session, state=state, handle=handle)
    if bound.problem is not None:
        code = f"state_{bound.problem}"
        if bound.record is not None:
            AuditRepository(session).record(
                actor=bound.record.owner,
                action="connect",
                success=False,
                owner=bound.record.owner,
                error=f"{code}: {PROBLEMS[code][1]}",
            )
        record = bound.record
        outcome = CallbackOutcome(
            False,
            code,
            lang=record.lang if record is not None else None,
            return_url=record.return_url if record is not None else None,
        )
        return render_outcome(request, svc, outcome)
    response = RedirectResponse(svc.consent_url(state), status_code=302)
    if bound.token is not None:
        _bind_browser(response, request, svc, state, bound.token)
    return response


@router.get(
    "/amocrm/connect",
    response_class=HTMLResponse,
    summary="Website-button page",
    responses={
        200: html_page("The page with amoCRM's website button", HTML_BUTTON_EXAMPLE),
        **error_responses(
            400,
            401,
            403,
            422,
            codes=(
                *_CALLER_ERRORS,
                "redirect_not_allowed",
                "api_key_in_url",
                "return_url_not_allowed",
            ),
        ),
    },
)
async def connect_page(
    request: Request,
    svc: Service,
    session: WriteSession,
    principal: BrowserPrincipal,
    owner: OwnerQuery = None,
    return_: ReturnQuery = "web",
    redirect: RedirectQuery = None,
    return_url: ReturnUrlQuery = None,
    lang: LangQuery = None,
) -> Response:
    who = principal.owner_for(owner)
    token = new_binding_secret()
    chosen = start_language(request, lang)
    state = await svc.button_state(
        session,
        who,
        return_to=return_,
        app_redirect=redirect,
        return_url=return_url,
        lang=chosen,
        browser_binding=cookie_binding(token),
    )
    amo = svc.settings.amo
    button = {
        "name": amo.button_name,
        "description": amo.button_description,
        "redirect_uri": svc.redirect_uri,
        "secrets_uri": svc.secrets_uri,
        "logo": amo.button_logo,
        "scopes": amo.button_scopes,
        "state": state,
        "script_url": amo.button_script_url,
    }
    page = render(
        request,
        "connect.html",
        page_language(request),
        {"button": button, "ttl_minutes": int(svc.states.ttl.total_seconds() // 60)},
    )
    _bind_browser(page, request, svc, state, token)
    return page


_SECRETS_SCHEMA = SecretsBody.model_json_schema()


@router.post(
    "/amocrm/secrets",
    summary="amoCRM's secrets webhook (website button)",
    response_model=SecretsAccepted,
    responses={
        200: {"content": json_examples({"ok": {"summary": "Kept", "value": {"status": "ok"}}})},
        **error_responses(
            400, 403, 409, 413, codes=("bad_request", "state_invalid", "secrets_already_received")
        ),
    },
    # Declared here, not as a parameter: the route reads the raw body, JSON or a form.
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": _SECRETS_SCHEMA, "example": SECRETS_EXAMPLE},
                "application/x-www-form-urlencoded": {
                    "schema": _SECRETS_SCHEMA,
                    "example": SECRETS_EXAMPLE,
                },
            },
        }
    },
)
async def secrets(request: Request, svc: Service, session: WriteSession) -> Response:
    """Exactly 200 on success: amoCRM's popup fails on anything else (a 204 was seen to)."""
    body = await request.body()
    await svc.accept_secrets(session, body, request.headers.get("content-type", ""))
    return JSONResponse({"status": "ok"}, status_code=200)


@router.get(
    "/amocrm/callback",
    response_class=HTMLResponse,
    summary="OAuth redirect target",
    responses={
        200: html_page("The success page (or a mobile app's deep-link page)", HTML_SUCCESS_EXAMPLE),
        400: html_page("The error page: what went wrong and what to do", HTML_ERROR_EXAMPLE),
    },
)
async def callback(
    request: Request,
    svc: Service,
    flow: Callback,
    # Declared for the OpenAPI document; the flow reads them (and any other) from the query.
    code: str | None = None,
    state: str | None = None,
    referer: str | None = None,
    error: str | None = None,
    platform: str | None = None,
    client_id: str | None = None,
    from_widget: str | None = None,
) -> Response:
    params = {k: v for k, v in request.query_params.items() if isinstance(v, str)}
    outcome = await flow.callback(params, request.cookies)
    response = render_outcome(request, svc, outcome)
    token = request.cookies.get(binding_cookie_name(state)) if state else None
    if state and outcome.ok and token:
        # Kept as long as the state's row: a reload of this page shows the connection.
        _bind_browser(response, request, svc, state, token)
    elif state and outcome.code != "state_wrong_browser":
        # The state is spent (or never was ours): its binding cookie has no use left.
        response.delete_cookie(binding_cookie_name(state), **_cookie_flags(request, svc))
    return response


def render_outcome(request: Request, svc: ConnectService, outcome: CallbackOutcome) -> Response:
    """The page a flow ends on, in the language it started with (see
    :mod:`amobridge.connect.pages`)."""
    return outcome_page(request, outcome)


@router.post(
    "/amocrm/exchange-code",
    summary="Exchange a code the app received itself",
    response_model=ConnectionStatus,
    response_model_exclude_unset=True,
    responses={
        200: {
            "description": "Connected: the owner's status",
            "content": json_examples(CONNECTED_EXAMPLES),
        },
        **error_responses(
            400,
            401,
            403,
            409,
            413,
            422,
            502,
            codes=(
                *_CALLER_ERRORS,
                "bad_referer",
                "exchange_failed",
                "not_configured",
                "amocrm_unavailable",
            ),
        ),
    },
)
async def exchange_code(
    svc: Service,
    flow: Callback,
    principal: CurrentPrincipal,
    body: Annotated[ExchangeCodeBody, Body(openapi_examples=EXCHANGE_CODE_EXAMPLES)],
) -> dict[str, Any]:
    who = principal.owner_for(body.owner)
    await flow.exchange_code_for(who, body.code, body.referer)  # its own units: it calls amoCRM
    async with svc.db.read() as session:
        return await svc.status(session, who)


@router.post(
    "/amocrm/tokens",
    summary="Import tokens by hand (admin)",
    status_code=201,
    response_model=ConnectionStatus,
    response_model_exclude_unset=True,
    responses={
        201: {
            "description": "Stored: the owner's status",
            "content": json_examples(CONNECTED_EXAMPLES),
        },
        **error_responses(
            400,
            401,
            403,
            413,
            422,
            codes=(
                *AUTH_ERRORS,
                "invalid_domain",
                "integration_required",
                "invalid_token_claims",
                "forbidden",
            ),
        ),
    },
)
async def import_tokens(
    svc: Service,
    session: WriteSession,
    principal: CurrentPrincipal,
    body: Annotated[ImportTokensBody, Body(openapi_examples=IMPORT_TOKENS_EXAMPLES)],
) -> dict[str, Any]:
    if not principal.is_admin:
        raise Forbidden("importing tokens needs an admin API key")
    await svc.import_tokens(
        session,
        body.owner,
        domain=body.domain,
        access_token=body.access_token,
        refresh_token=body.refresh_token,
        expires_in=body.expires_in,
        client_id=body.client_id,
        client_secret=body.client_secret,
        redirect_uri=body.redirect_uri,
    )
    return await svc.status(session, body.owner)


@router.get(
    "/amocrm/status",
    summary="Connection status (never a token)",
    response_model=ConnectionStatus,
    response_model_exclude_unset=True,
    responses={
        200: {"content": json_examples({**STATUS_EXAMPLES, **VERIFY_EXAMPLES})},
        **error_responses(400, 401, 403, 422, codes=_CALLER_ERRORS),
    },
)
async def status(
    svc: Service,
    principal: CurrentPrincipal,
    owner: OwnerQuery = None,
    verify: Annotated[
        bool, Query(description="Make one amoCRM call (GET /api/v4/account) to prove it")
    ] = False,
) -> dict[str, Any]:
    """A change made through another amobridge process shows within
    ``AMOBRIDGE_AMO__CONNECTION_CHECK_MS``; one made through this process, at once.
    ``verify=true`` adds ``verified`` (and ``verifyError`` when false) after one amoCRM call."""
    if verify:
        return await svc.verified_status(principal.owner_for(owner))
    # No ReadSession: a polling host app is answered from the status cache, and the read unit
    # is opened only when the cached answer is too old or this process has written since.
    return await svc.current_status(principal.owner_for(owner))


@router.delete(
    "/amocrm/disconnect",
    summary="Disconnect",
    response_model=Disconnected,
    response_model_exclude_unset=True,
    responses={
        200: {"content": json_examples(DISCONNECTED_EXAMPLES)},
        **error_responses(400, 401, 403, 404, 422, codes=(*_CALLER_ERRORS, "connection_not_found")),
    },
)
@router.post(
    "/amocrm/disconnect",
    summary="Disconnect (POST, for clients that cannot send DELETE)",
    response_model=Disconnected,
    response_model_exclude_unset=True,
    responses={
        200: {"content": json_examples(DISCONNECTED_EXAMPLES)},
        **error_responses(
            400, 401, 403, 404, 413, 422, codes=(*_CALLER_ERRORS, "connection_not_found")
        ),
    },
)
async def disconnect(
    svc: Service,
    session: WriteSession,
    principal: CurrentPrincipal,
    owner: OwnerQuery = None,
) -> dict[str, Any]:
    who = principal.owner_for(owner)
    await svc.disconnect(session, who, actor=principal.name)
    return {"disconnected": True, **(await svc.status(session, who))}


@router.get(
    "/amocrm/uninstall",
    summary="amoCRM's signed disconnect hook",
    response_model=Uninstalled,
    responses={
        200: {"content": json_examples(UNINSTALL_EXAMPLES)},
        **error_responses(401, codes=("unauthorized", "unknown_integration", "bad_signature")),
    },
)
async def uninstall(
    svc: Service,
    session: WriteSession,
    account_id: str = "",
    client_uuid: str = "",
    signature: str = "",
) -> dict[str, Any]:
    if len(signature) > 128 or len(client_uuid) > 128 or len(account_id) > 20:
        raise ServiceError("parameter too long", status_code=401)
    done = await svc.uninstall(session, account_id, client_uuid, signature)
    # 200 for a replay too: amoCRM expects it, and nothing was changed.
    return {"disconnected": done.disconnected, "replayed": done.replayed}
