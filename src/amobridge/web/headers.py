"""Security headers on the service's HTML pages (the callback's success and error pages, the
website-button page, the mobile deep-link page, ``/docs``).

- ``Content-Security-Policy``: nothing loads unless named. Scripts run only with this request's
  nonce (the templates' inline scripts carry ``request.state.csp_nonce``) or from the origin of
  amoCRM's button script (``AMOBRIDGE_AMO__BUTTON_SCRIPT_URL``), which may also bring its styles,
  images, fonts and frames. Inline styles stay allowed: the pages' own ``<style>`` and what the
  button script draws. ``frame-ancestors 'none'``: no page can be framed (clickjacking on the
  consent button).
- ``/docs`` (Swagger UI from the app's own files) gets a policy of its own: FastAPI's page has an
  inline script without a nonce, so scripts from this origin and inline ones, nothing remote.
- ``X-Frame-Options: DENY`` for browsers without ``frame-ancestors``, ``Referrer-Policy:
  no-referrer`` (a page's URL carries a state or a deep link), and ``X-Content-Type-Options:
  nosniff`` on every response.

A header a route set itself is left as it is.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection
from urllib.parse import urlsplit

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

NONCE_KEY = "csp_nonce"
DOCS_PATHS = ("/docs", "/docs/oauth2-redirect")


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of an absolute URL; ``'self'`` for a relative one."""
    parts = urlsplit(url)
    if parts.scheme and parts.netloc:
        return f"{parts.scheme}://{parts.netloc}"
    return "'self'"


def page_policy(nonce: str, *, button_origin: str) -> str:
    return "; ".join(
        (
            "default-src 'none'",
            f"script-src 'nonce-{nonce}' {button_origin}",
            f"style-src 'self' 'unsafe-inline' {button_origin}",
            f"img-src 'self' data: {button_origin}",
            f"font-src {button_origin}",
            f"connect-src 'self' {button_origin}",
            f"frame-src {button_origin}",
            "form-action 'self'",
            "base-uri 'none'",
            "object-src 'none'",
            "frame-ancestors 'none'",
        )
    )


DOCS_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self' 'unsafe-inline'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "form-action 'self'",
        "base-uri 'none'",
        "object-src 'none'",
        "frame-ancestors 'none'",
    )
)


class SecurityHeadersMiddleware:
    """Adds the headers above to every ``text/html`` response (``nosniff`` to every response)."""

    def __init__(
        self, app: ASGIApp, *, button_script_url: str, docs_paths: Collection[str] = DOCS_PATHS
    ) -> None:
        self.app = app
        self.button_origin = origin_of(button_script_url)
        self.docs_paths = frozenset(docs_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        nonce = secrets.token_urlsafe(18)
        # A fresh per-request state: Starlette's request.state reads scope["state"].
        scope = dict(scope, state={**(scope.get("state") or {}), NONCE_KEY: nonce})
        policy = (
            DOCS_POLICY
            if _route_path(scope) in self.docs_paths
            else page_policy(nonce, button_origin=self.button_origin)
        )

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                if headers.get("content-type", "").lower().startswith("text/html"):
                    headers.setdefault("Content-Security-Policy", policy)
                    headers.setdefault("X-Frame-Options", "DENY")
                    headers.setdefault("Referrer-Policy", "no-referrer")
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _route_path(scope: Scope) -> str:
    """The path without the proxy prefix (``RootPathMiddleware`` may have put it in)."""
    path: str = scope["path"]
    root: str = scope.get("root_path") or ""
    if root and (path == root or path.startswith(root + "/")):
        return path[len(root) :] or "/"
    return path
