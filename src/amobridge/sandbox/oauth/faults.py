"""Fault injection for the token endpoint and subdomain discovery, run as the API runs it, except
that an injected ``revoke`` answers as OAuth does ("Token has been revoked")."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from amobridge.sandbox.http import PROBLEM_JSON, DropConnection, dumps, fault_response
from amobridge.sandbox.state import RequestRecord
from amobridge.sandbox.tokens import OAuthError

if TYPE_CHECKING:
    from amobridge.sandbox.app import Sandbox


def oauth_problem(error: OAuthError) -> Response:
    return Response(dumps(error.body()), status_code=error.status, media_type=PROBLEM_JSON)


async def with_faults(
    sandbox: Sandbox,
    request: Request,
    record: RequestRecord,
    serve: Callable[[], Awaitable[Response]],
) -> Response | DropConnection:
    """Run fault injection around ``serve`` (phase "before", then "after") as the API does."""
    account_id, client_id = record.account_id, record.client_id
    rule = sandbox.faults.match(
        "before",
        method=request.method,
        path=request.url.path,
        account_id=account_id,
        client_id=client_id,
        query=request.query_params,
    )
    if rule is not None and rule.kind == "slow":
        record.fault = "slow"
        await asyncio.sleep(rule.delay)
    elif rule is not None:
        record.fault = rule.kind
        if rule.kind == "revoke":
            # On the token endpoint a revoked grant reads as OAuth's "Token has been revoked".
            if client_id is not None and account_id is not None:
                sandbox.tokens.revoke_integration(client_id, account_id)
            return oauth_problem(OAuthError.revoked())
        return await fault_response(sandbox, rule, account_id=account_id, client_id=client_id)

    response = await serve()

    after = sandbox.faults.match(
        "after",
        method=request.method,
        path=request.url.path,
        account_id=record.account_id,
        client_id=record.client_id,
        query=request.query_params,
    )
    if after is None:
        return response
    record.fault = f"{after.kind}-after"
    return await fault_response(
        sandbox, after, account_id=record.account_id, client_id=record.client_id, served=response
    )
