"""Subdomain discovery: ``GET /oauth2/account/current/subdomain`` answers which account a
refresh token belongs to; it passes fault injection and the request log as the token endpoint does."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from amobridge.sandbox.http import DropConnection, problem, recorded_endpoint, resolve_host
from amobridge.sandbox.oauth.faults import with_faults
from amobridge.sandbox.state import RequestRecord
from amobridge.sandbox.tokens import fingerprint

if TYPE_CHECKING:
    from amobridge.sandbox.app import Sandbox


async def _current_subdomain(
    sandbox: Sandbox, request: Request, record: RequestRecord
) -> Response | DropConnection:
    """``GET /oauth2/account/current/subdomain`` with ``X-Refresh-Token``, on ``api-*``
    hosts (and bare ones): the account a live refresh token belongs to."""
    host = resolve_host(sandbox, request)
    if host.named and not host.host.startswith("api-"):
        return problem(404, f"Cannot GET {request.url.path}", title="Not Found")
    token = request.headers.get("x-refresh-token", "").strip()
    found = sandbox.state.refresh_tokens.get(token) if token else None
    if token:
        record.refresh_token_fingerprint = fingerprint(token)
    if found is not None:
        record.account_id, record.client_id = found.account_id, found.client_id

    async def serve() -> Response:
        if found is None or found.revoked or found.spent_at is not None:
            return problem(401, "Refresh token is invalid or has been revoked")
        if sandbox.clock.now() >= found.expires_at:
            return problem(401, "Refresh token has expired")
        integration = sandbox.state.integrations.get(found.client_id)
        if integration is None or not integration.installs.get(found.account_id, False):
            return problem(401, "Refresh token is invalid or has been revoked")
        account = sandbox.state.accounts[found.account_id]
        return JSONResponse(
            {
                "id": account.id,
                "subdomain": account.subdomain,
                "domain": account.host,
                "top_level_domain": account.base_domain.rsplit(".", 1)[-1],
            }
        )

    return await with_faults(sandbox, request, record, serve)


current_subdomain = recorded_endpoint(_current_subdomain)
