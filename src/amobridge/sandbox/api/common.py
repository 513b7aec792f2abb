"""What every ``/api/v4`` handler of the sandbox shares: the endpoint wrapper."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from amobridge.sandbox.api.validate import ValidationFailed
from amobridge.sandbox.http import (
    ApiContext,
    ApiHandler,
    Endpoint,
    api_endpoint,
    validation_problem,
)


def api(handler: ApiHandler) -> Endpoint:
    """:func:`http.api_endpoint` (host, auth, limits, faults, log) plus amoCRM's 400
    ``validation-errors`` reply for :class:`ValidationFailed`."""

    async def run(request: Request, ctx: ApiContext) -> Response:
        try:
            return await handler(request, ctx)
        except ValidationFailed as exc:
            return validation_problem(exc.groups)

    run.__name__ = handler.__name__
    run.__doc__ = handler.__doc__
    return api_endpoint(run)
