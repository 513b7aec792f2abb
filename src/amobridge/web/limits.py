"""A request body size limit for every route, enforced before the body is read whole.

Without it a route that reads its body (``POST /amocrm/secrets`` reads the raw bytes) holds all
of it in memory before it can refuse it: 300 MB took 12 s and 1 GB of memory to get a 403.

- A ``Content-Length`` over the limit is answered 413 at once; the app never runs.
- A body without one (chunked) is counted as it streams: the app's next read of the body raises
  :class:`BodyTooLarge` as soon as the count passes the limit, which the error handlers render
  as 413 ``{"error": "body_too_large", "detail"}`` (a subclass of Starlette's ``HTTPException``,
  so FastAPI's body parsing re-raises it instead of turning it into "error parsing the body").
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from amobridge.web.errors import error_body

__all__ = ["DEFAULT_MAX_BODY_BYTES", "BodySizeLimitMiddleware", "BodyTooLarge"]

DEFAULT_MAX_BODY_BYTES = 1024 * 1024


def _too_large(limit: int) -> str:
    return (
        f"request body is larger than {limit} bytes: send a smaller one "
        "(the limit is AMOBRIDGE_SERVER__MAX_BODY_BYTES)"
    )


def _too_large_response(limit: int) -> JSONResponse:
    return JSONResponse(error_body("body_too_large", _too_large(limit)), status_code=413)


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=_too_large(limit))


class BodySizeLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = [v for k, v in scope["headers"] if k == b"content-length"]
        if declared:
            # Servers refuse a malformed or repeated Content-Length; an app called directly
            # (tests, ASGI transports) may not, so it is checked here too.
            value = declared[0].strip()
            if len(declared) > 1 or not value.isdigit():
                invalid = error_body(
                    "invalid_content_length",
                    "invalid Content-Length: send one decimal Content-Length header, or none",
                )
                await JSONResponse(invalid, status_code=400)(scope, receive, send)
                return
            if int(value) > limit:
                await _too_large_response(limit)(scope, receive, send)
                return

        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                # A Content-Length under the limit is no promise: count those bodies too.
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except BodyTooLarge:
            # Read outside the error handlers' reach (a middleware, say): still a 413, unless
            # a response had already begun, which can then only be cut off.
            if started:
                raise
            await _too_large_response(limit)(scope, receive, send)
