"""The uninstall (disconnect) hook: disabling an integration in an account revokes its
tokens there and sends one signed GET to its disconnect URL, whose reply is ignored.

``POST /_sandbox/integrations/{client_id}/uninstall`` is the account admin doing that.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING, Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from amobridge.sandbox import control
from amobridge.sandbox.control import (
    ControlError,
    body_object,
    get_account,
    get_integration,
    reject_unknown,
)
from amobridge.sandbox.oauth.outbound import record_outbound, transport_failure
from amobridge.sandbox.oauth.urls import with_query
from amobridge.sandbox.state import Account, Integration

if TYPE_CHECKING:
    from amobridge.sandbox.app import Sandbox

DISCONNECT_TIMEOUT = 5.0
"""Real seconds the disconnect hook gets (amoCRM documents no timeout); the reply is ignored."""


def disconnect_signature(client_secret: str, client_uuid: str, account_id: int) -> str:
    """Lowercase hex HMAC-SHA256 of ``"{client_uuid}|{account_id}"`` keyed with the secret."""
    message = f"{client_uuid}|{int(account_id)}".encode()
    return hmac.new(client_secret.encode(), message, hashlib.sha256).hexdigest()


async def send_disconnect(
    sandbox: Sandbox, integration: Integration, account: Account
) -> dict[str, Any]:
    """The signed GET to the integration's disconnect URL: sent once, the reply ignored."""
    assert integration.disconnect_url is not None
    params = {
        "account_id": str(account.id),
        "client_uuid": integration.client_id,
        "signature": disconnect_signature(
            integration.client_secret, integration.client_id, account.id
        ),
    }
    url = with_query(integration.disconnect_url, params)
    entry = record_outbound(
        sandbox,
        {
            "kind": "disconnect",
            "method": "GET",
            "url": url,
            "client_id": integration.client_id,
            "account_id": account.id,
            "status": None,
            "error": None,
        },
    )
    try:
        reply = await sandbox.outbound().get(url, timeout=DISCONNECT_TIMEOUT)
    except httpx.HTTPError as exc:
        entry["error"] = transport_failure(exc)
        return {"error": entry["error"]}
    entry["status"] = reply.status_code
    return {"status": reply.status_code}


async def uninstall(request: Request, sandbox: Sandbox) -> Response:
    """Disable an integration in an account: ``{account_id}``."""
    integration = get_integration(sandbox, request.path_params["client_id"])
    data = await body_object(request)
    reject_unknown(data, {"account_id"})
    account = get_account(sandbox, control.field(data, "account_id", int))
    if not integration.installs.get(account.id, False):
        raise ControlError(409, f"integration is not installed in account {account.id}")
    integration.installs[account.id] = False
    revoked = sandbox.tokens.revoke_integration(integration.client_id, account.id)
    disconnect = None
    if integration.disconnect_url:
        disconnect = await send_disconnect(sandbox, integration, account)
    return JSONResponse({"revoked": revoked, "disconnect": disconnect})
