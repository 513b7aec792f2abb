"""``GET /_sandbox/demo/callback``: the demo integration's ``redirect_uri`` (``make run``), a page
showing what consent sent back and how to exchange the code (never a client secret)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from amobridge.sandbox.oauth.pages import page, page_language

if TYPE_CHECKING:
    from amobridge.sandbox.app import Sandbox


async def demo_callback(request: Request) -> Response:
    """Where the demo integration lands: shows what arrived (never a client secret)."""
    sandbox: Sandbox = request.app.state.sandbox
    query = request.query_params
    params: dict[str, str] = {}
    for key in ("code", "referer", "state", "platform", "client_id", "error"):
        value = query.get(key)
        if value is not None:
            params[key] = value
    base = f"{request.url.scheme}://{request.url.netloc}"
    referer = params.get("referer", "")
    account = sandbox.state.account_by_host(referer) if referer else None
    integration = sandbox.state.integrations.get(params.get("client_id", ""))
    return page(
        "demo_callback.html",
        lang=page_language(request),
        params=params,
        base=base,
        referer=referer,
        account_known=account is not None,
        redirect_uri=integration.redirect_uri if integration is not None else "",
    )
