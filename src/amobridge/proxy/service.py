"""Forward one amoCRM API v4 call for an owner, with the owner's managed tokens.

The call goes through the connection's own :class:`~amobridge.amo.client.AmoClient` (from
:class:`~amobridge.connect.clients.ConnectionClients`), so it shares everything amobridge's own
calls of that connection use: the pace (amoCRM's 7 requests per second), the token and its
single-flight refresh (a 401 refreshes once and sends again), the ban breaker, the pulse check
that notices a disconnect made by another process. :meth:`AmoClient.send
<amobridge.amo.client.AmoClient.send>` retries GET on 429, 5xx and transport failures; a write
(POST, PATCH, PUT, DELETE) is sent again only when the earlier attempt provably never reached
amoCRM (it could not connect), never after a 5xx, a 429 or a lost reply.

What comes back is amoCRM's status, body and a few of its headers (:data:`RESPONSE_HEADERS`);
what amobridge answers itself (no connection, a dead grant, an open breaker, no reply) is the
service's ``{"error", "detail"}`` body. No unit of work stays open over the network: the
connection is read in one, the audit entry written in another after amoCRM answered.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from urllib.parse import urlencode

from amobridge.amo.client import RawReply
from amobridge.amo.errors import (
    AmoBanned,
    AmoError,
    AmoRateLimited,
    AmoReauthRequired,
    AmoTimeout,
    AmoTokenStoreError,
    AmoTransportError,
    parse_problem,
    parse_retry_after,
)
from amobridge.audit import AuditRepository
from amobridge.connect.clients import ConnectionClients, ConnectionDisconnected
from amobridge.connect.repository import ConnectionRepository
from amobridge.errors import Conflict, Forbidden, NotFound, ServiceError
from amobridge.settings import Settings
from amobridge.storage.crypto import Keyring
from amobridge.storage.db import Database
from amobridge.storage.guard import StorageUnavailable
from amobridge.storage.tables import Connection

log = logging.getLogger("amobridge.proxy")

WRITE_METHODS = frozenset({"POST", "PATCH", "PUT", "DELETE"})
# What of the caller's request goes to amoCRM besides the method, path, query and body: never
# its Authorization, X-API-Key or cookies (amobridge's credentials, not amoCRM's).
REQUEST_HEADERS = ("content-type", "accept", "accept-language", "if-modified-since")
# What of amoCRM's answer comes back: no hop-by-hop header, no cookie.
RESPONSE_HEADERS = (
    "content-type",
    "content-language",
    "retry-after",
    "cache-control",
    "etag",
    "last-modified",
    "x-request-id",
)
ATTEMPTS_HEADER = "X-Amobridge-Attempts"
DEFAULT_RETRY_AFTER = 1  # amoCRM counts requests per second


@dataclass(frozen=True)
class ProxyCall:
    """One request to forward: ``path`` is checked and relative to ``/api/v4/``."""

    method: str
    path: str
    params: list[tuple[str, str]]
    body: bytes
    headers: dict[str, str]

    @property
    def label(self) -> str:
        """``POST /api/v4/leads``: no query, so no values of it in logs or the audit log."""
        return f"{self.method} /api/v4/{self.path}"


@dataclass(frozen=True)
class ProxyReply:
    status: int
    content: bytes
    headers: dict[str, str]


def forwarded_request_headers(headers: list[tuple[str, str]]) -> dict[str, str]:
    """The caller's headers amoCRM gets (:data:`REQUEST_HEADERS`), the first of each name."""
    found: dict[str, str] = {}
    for name, value in headers:
        lower = name.lower()
        if lower in REQUEST_HEADERS and lower not in found:
            found[lower] = value
    return found


def _seconds(value: float) -> str:
    return str(max(1, math.ceil(value)))


def reconnect_hint(owner: str, *, again: bool = True) -> str:
    """How the owner (re)connects, in words a caller can pass on."""
    return (
        f"connect the account{' again' if again else ''}: "
        f"GET /amocrm/auth?{urlencode({'owner': owner})}"
    )


def disconnected(owner: str) -> Conflict:
    return Conflict(
        f"the owner's amoCRM connection was disconnected: {reconnect_hint(owner)}",
        code="connection_disconnected",
    )


def reauth_required(owner: str) -> Conflict:
    return Conflict(
        f"amoCRM refused the owner's grant (revoked or expired): {reconnect_hint(owner)}",
        code="reauth_required",
    )


def reply_of(raw: RawReply) -> ProxyReply:
    """amoCRM's reply as the caller gets it: status, body, :data:`RESPONSE_HEADERS`, a
    ``Retry-After`` on every 429, and :data:`ATTEMPTS_HEADER`."""
    response = raw.response
    headers = {
        name: response.headers[name] for name in RESPONSE_HEADERS if name in response.headers
    }
    if response.status_code == 429 and "retry-after" not in headers:
        # amoCRM may name the wait in the body (Kommo's retry_after) or not at all.
        wait = parse_retry_after(None, parse_problem(response.content), now=time.time())
        headers["retry-after"] = _seconds(wait if wait is not None else DEFAULT_RETRY_AFTER)
    headers[ATTEMPTS_HEADER] = str(raw.attempts)
    return ProxyReply(response.status_code, response.content, headers)


def refusal_of(exc: AmoError | ConnectionDisconnected, call: ProxyCall, owner: str) -> ServiceError:
    """What the caller gets when amoCRM gave no reply to pass on."""
    refusal: ServiceError
    if isinstance(exc, ConnectionDisconnected):
        return disconnected(owner)
    if isinstance(exc, AmoReauthRequired):
        return reauth_required(owner)
    if isinstance(exc, AmoBanned):
        refusal = Forbidden(
            "amoCRM has blocked this account's API access (a ban after too many requests); "
            f"{call.label} was not sent. Calls resume after Retry-After; ask amoCRM support to "
            "lift the block sooner.",
            code="amocrm_banned",
        )
        refusal.headers = {"Retry-After": _seconds(exc.retry_at - time.time())}
        return refusal
    if isinstance(exc, AmoRateLimited):
        refusal = ServiceError(
            f"amoCRM asked this connection to wait; {call.label} was not sent. Send it again "
            "after Retry-After.",
            status_code=429,
            code="rate_limited",
        )
        refusal.headers = {"Retry-After": _seconds(exc.retry_after or DEFAULT_RETRY_AFTER)}
        return refusal
    if isinstance(exc, AmoTransportError):
        return _no_reply(exc, call)
    if isinstance(exc, AmoTokenStoreError):
        return ServiceError(
            "the owner's refreshed amoCRM tokens could not be stored; nothing was sent. Try "
            "again in a few seconds.",
            status_code=503,
            code="unavailable",
        )
    return ServiceError(
        f"amoCRM could not be reached for {call.label} ({type(exc).__name__}); try again later",
        status_code=502,
        code="amocrm_unavailable",
    )


def _no_reply(exc: AmoTransportError, call: ProxyCall) -> ServiceError:
    """A 502/504 with ``retried`` (sent more than once) and ``attempts``."""
    timeout = isinstance(exc, AmoTimeout)
    what = "did not answer in time" if timeout else "broke off the connection"
    if call.method in WRITE_METHODS:
        then = (
            "It was not sent again: amoCRM may or may not have applied it. Look the entities "
            "up before you send it again."
        )
    else:
        then = f"{exc.attempts} attempt(s) made; try again later."
    return ServiceError(
        f"amoCRM {what} on {call.label}. {then}",
        status_code=504 if timeout else 502,
        code="amocrm_timeout" if timeout else "amocrm_unavailable",
        retried=exc.attempts > 1,
        attempts=exc.attempts,
    )


class ProxyService:
    def __init__(
        self, settings: Settings, db: Database, keyring: Keyring, clients: ConnectionClients
    ) -> None:
        self.settings = settings
        self.db = db
        self.keyring = keyring
        self.clients = clients

    async def forward(self, owner: str, call: ProxyCall, *, actor: str) -> ProxyReply:
        """Send ``call`` with ``owner``'s connection; amoCRM's reply, or a ServiceError."""
        row = await self.usable_connection(owner)
        started = time.monotonic()
        try:
            client = await self.clients.client(row)
            raw = await client.send(
                call.method,
                call.path,
                params=call.params,
                content=call.body or None,
                headers=call.headers,
            )
        except (AmoError, ConnectionDisconnected) as exc:
            refusal = refusal_of(exc, call, owner)
            await self._audit(owner, row, call, actor, started, None, refusal)
            raise refusal from None
        reply = reply_of(raw)
        await self._audit(owner, row, call, actor, started, reply.status, None)
        return reply

    async def usable_connection(self, owner: str) -> Connection:
        """The owner's connection, if amoCRM calls can be made with it (404 or 409 if not)."""
        async with self.db.read() as session:
            row = await ConnectionRepository(session, self.keyring).for_owner(owner)
        if row is None:
            raise NotFound(
                f"no amoCRM connection for this owner: {reconnect_hint(owner, again=False)}",
                code="connection_not_found",
            )
        if row.status == "disconnected":
            raise disconnected(owner)
        if row.status != "active" or row.access_token_enc is None:
            raise reauth_required(owner)
        return row

    async def _audit(
        self,
        owner: str,
        row: Connection,
        call: ProxyCall,
        actor: str,
        started: float,
        status: int | None,
        refusal: ServiceError | None,
    ) -> None:
        """One entry per proxied write (per read too with ``AMOBRIDGE_PROXY__AUDIT_READS``):
        method, path, status, duration, outcome; never a body, a query or a header."""
        if call.method not in WRITE_METHODS and not self.settings.proxy.audit_reads:
            return
        duration_ms = round((time.monotonic() - started) * 1000)
        answered = refusal.status_code if refusal is not None else status
        error = None
        if refusal is not None:
            error = refusal.code
        elif status is not None and not 200 <= status < 300:
            error = f"amoCRM answered {status}"
        try:
            async with self.db.transaction() as session:
                AuditRepository(session).record(
                    actor=actor,
                    action="proxy",
                    success=error is None,
                    owner=owner,
                    connection_id=row.id,
                    message=f"{call.label} -> {answered}",
                    error=error,
                    details={
                        "method": call.method,
                        "path": f"/api/v4/{call.path}",
                        "status": answered,
                        "amocrm_status": status,
                        "duration_ms": duration_ms,
                    },
                )
        except StorageUnavailable as exc:
            # amoCRM has acted: its answer matters more to the caller than the missing entry.
            log.warning("the audit entry of %s was not written: %s", call.label, exc.detail)
