"""What can go wrong while connecting, in words for the person in front of the callback page."""

from __future__ import annotations

from dataclasses import dataclass

# What each failure means for the person in front of the callback page.
PROBLEMS: dict[str, tuple[str, str, str]] = {
    "access_denied": (
        "Access was not granted",
        "You pressed «Deny» on amoCRM's page, so amoCRM sent no authorization code.",
        "Start the connection again and press «Allow» / «Разрешить».",
    ),
    "state_missing": (
        "The link is incomplete",
        "amoCRM's answer carries no state, so it cannot be matched to a connection request.",
        "Start the connection again from your application.",
    ),
    "state_forged": (
        "The link is not valid",
        "The state in the link was not issued by this service or was altered.",
        "Start the connection again from your application.",
    ),
    "state_unknown": (
        "The link is not valid",
        "This service has no record of the connection request (it may have been purged).",
        "Start the connection again from your application.",
    ),
    "state_expired": (
        "The link has expired",
        "A connection request is valid for 10 minutes, and this one is older.",
        "Start the connection again and finish it within 10 minutes.",
    ),
    "state_used": (
        "The link was already used",
        "This connection request has already been completed (or the page was reloaded).",
        "If the account is not connected, start the connection again.",
    ),
    "state_wrong_browser": (
        "The connection was started in another browser",
        "This connection request belongs to the browser that opened the connection link, and "
        "this browser is not that one — so amoCRM's answer is not accepted here (otherwise "
        "whoever got hold of the link could tie your account to an amoCRM account of theirs).",
        "Finish the connection in the browser where you started it, or start it again in this "
        "browser.",
    ),
    "state_link_used": (
        "The connection link was already opened",
        "A connection link works once: the browser that opened it first is the one that can "
        "finish the connection.",
        "If amoCRM's page is open in that browser, continue there; otherwise start the "
        "connection again.",
    ),
    "code_missing": (
        "No authorization code",
        "amoCRM's answer has no code.",
        "Start the connection again.",
    ),
    "bad_referer": (
        "Unknown amoCRM account",
        "amoCRM's answer does not name a valid account domain.",
        "Start the connection again; use your account's own address, e.g. acme.amocrm.ru.",
    ),
    "secrets_missing": (
        "The integration's keys did not arrive",
        "amoCRM creates a new integration for the website button and sends its keys to this "
        "service first; they were not received (or took longer than 10 minutes).",
        "Start the connection again. If it keeps failing, check that amoCRM can reach "
        "the secrets URL (POST /amocrm/secrets) through your proxy.",
    ),
    "not_configured": (
        "The integration is not configured",
        "No amoCRM client id/secret is configured for this service.",
        "Set AMOBRIDGE_AMO__CLIENT_ID and AMOBRIDGE_AMO__CLIENT_SECRET, or use the website button.",
    ),
    "exchange_failed": (
        "amoCRM refused the authorization code",
        "The code could not be exchanged for tokens.",
        "Start the connection again (a code lives 20 minutes and works once). If amoCRM says "
        "the redirect URI is not associated with the client, make AMOBRIDGE_AMO__REDIRECT_URI "
        "equal the integration's redirect URI exactly.",
    ),
    "amocrm_unavailable": (
        "amoCRM did not answer",
        "The token exchange failed on the network or amoCRM returned a server error.",
        "Try again in a minute.",
    ),
}


@dataclass(frozen=True)
class CallbackOutcome:
    ok: bool
    code: str  # "connected" or a PROBLEMS key
    owner: str | None = None
    host: str | None = None
    account_id: int | None = None
    return_to: str = "web"
    app_redirect: str | None = None
    detail: str | None = None  # amoCRM's own words, when it refused


class ConnectFailure(Exception):
    """A connect attempt failed for a reason in :data:`PROBLEMS` (internal to the flows)."""

    def __init__(self, code: str, detail: str | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.detail = detail
