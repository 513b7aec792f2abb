"""amoCRM's OAuth side, one module per concept:

- :mod:`.consent`: ``GET /oauth`` and ``/oauth/``, the consent page, Allow/Deny and how they land.
- :mod:`.access_token`: ``POST /oauth2/access_token``, codes and refresh tokens exchanged through
  :class:`~amobridge.sandbox.tokens.TokenAuthority`.
- :mod:`.subdomain`: ``GET /oauth2/account/current/subdomain``, whose account a refresh token is.
- :mod:`.button`: ``/auth/button.min.js`` (amoCRM), ``/auth/button.js`` (Kommo) and the metadata
  mode's secrets POST; control ``POST /_sandbox/button-install``.
- :mod:`.uninstall`: the signed disconnect GET; control
  ``POST /_sandbox/integrations/{client_id}/uninstall``.
- :mod:`.outbound`: the log of what the sandbox sent to integrations, ``GET /_sandbox/outbound``.
- :mod:`.demo_callback`: ``GET /_sandbox/demo/callback``, the demo integration's landing page.

Shared pieces: :mod:`.pages` (templates, static files), :mod:`.urls`, :mod:`.faults` (fault
injection on the token-side endpoints).
"""

from __future__ import annotations

from starlette.routing import BaseRoute, Route

from amobridge.sandbox.control import control_endpoint
from amobridge.sandbox.oauth.access_token import access_token
from amobridge.sandbox.oauth.button import button_install, button_script
from amobridge.sandbox.oauth.consent import consent
from amobridge.sandbox.oauth.demo_callback import demo_callback
from amobridge.sandbox.oauth.outbound import outbound
from amobridge.sandbox.oauth.subdomain import current_subdomain
from amobridge.sandbox.oauth.uninstall import uninstall

__all__ = ["control_routes", "routes"]


def routes() -> list[BaseRoute]:
    return [
        Route("/oauth", consent, methods=["GET", "POST"]),
        Route("/oauth/", consent, methods=["GET", "POST"]),
        Route("/oauth2/access_token", access_token, methods=["POST"]),
        Route("/oauth2/account/current/subdomain", current_subdomain, methods=["GET"]),
        Route("/auth/button.min.js", button_script, methods=["GET"]),
        Route("/auth/button.js", button_script, methods=["GET"]),
        Route("/_sandbox/demo/callback", demo_callback, methods=["GET"]),
    ]


def control_routes() -> list[BaseRoute]:
    c = control_endpoint
    return [
        Route("/_sandbox/button-install", c(button_install), methods=["POST"]),
        Route("/_sandbox/integrations/{client_id}/uninstall", c(uninstall), methods=["POST"]),
        Route("/_sandbox/outbound", c(outbound), methods=["GET"]),
    ]
