"""What the sandbox sends to integrations (the button's secrets POST, the disconnect GET): one
log, read back through ``GET /_sandbox/outbound``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from amobridge.sandbox.control import ControlError

if TYPE_CHECKING:
    from amobridge.sandbox.app import Sandbox

KINDS = ("secrets", "disconnect")


def record_outbound(sandbox: Sandbox, entry: dict[str, Any]) -> dict[str, Any]:
    """Log ``entry`` before it is sent, so a call that hangs or fails is still seen; the caller
    fills in ``status`` or ``error`` afterwards."""
    entry["seq"] = len(sandbox.state.outbound_log) + 1
    entry["time"] = sandbox.clock.now()
    sandbox.state.outbound_log.append(entry)
    return entry


def transport_failure(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.ConnectError):
        return "connection refused"
    return f"transport error ({type(exc).__name__})"


async def outbound(request: Request, sandbox: Sandbox) -> Response:
    """What the sandbox sent to integrations: ``?kind=secrets|disconnect``."""
    kind = request.query_params.get("kind")
    if kind is not None and kind not in KINDS:
        raise ControlError(400, "kind must be secrets or disconnect")
    return JSONResponse(
        [dict(e) for e in sandbox.state.outbound_log if kind is None or e["kind"] == kind]
    )
