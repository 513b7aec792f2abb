"""The receiving end of ``POST /webhooks/amocrm/{secret}``: who a secret names, which account a
body says it comes from, and the group commit that stores deliveries before they are answered.

**Authentication** reads no more of a body than it must: the ``account[id]`` and
``account[subdomain]`` fields, found by one scan of the raw bytes (:func:`account_of`), whatever
else the body holds. A secret is looked up by its SHA-256 (:class:`Targets`), each answer reused
for ``connection_check_ms`` (the bound every process already keeps on how stale its view of a
connection may be), so a stream of deliveries costs one read per half second, not one per body.

**Group commit** (:class:`amobridge.storage.batch.GroupCommit`): every delivery waits for the
commit of the unit of work that holds it, and only then is answered 200 (invariant 1).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import unquote_to_bytes

from amobridge.storage.db import Database
from amobridge.webhooks.repository import Target, WebhookConnectionRepository

log = logging.getLogger("amobridge.webhooks")

# A URL secret as amobridge makes them (secrets.token_urlsafe(32): 43 characters); anything
# that cannot be one is refused before the database is asked.
SECRET_PATTERN = re.compile(r"[A-Za-z0-9_-]{16,128}")
# ``account[id]=…`` and ``account[subdomain]=…``, brackets plain or %-encoded, anywhere in the
# body. The last one wins, as in the parser (and PHP) that reads the body later.
# Keys as the parser reads them (case-sensitive, as PHP's are); only the brackets' %-escapes come
# in either case. A field starts the body or follows an "&" (checked per hit: a leading
# alternative made the search try every position of the body, 8 times slower).
_ACCOUNT_FIELD = re.compile(rb"account(?:\[|%5[bB])(id|subdomain)(?:\]|%5[dD])=([^&]*)")
CACHE_LIMIT = 10_000


def secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


@dataclass(frozen=True)
class Account:
    """The sending account as a body names it (either may be missing)."""

    id: int | None
    subdomain: str | None


def _form_value(raw: bytes) -> str:
    return unquote_to_bytes(raw.replace(b"+", b" ")).decode("utf-8", "replace").strip()


def account_of(body: bytes) -> Account:
    """``account[id]`` and ``account[subdomain]`` of a form-encoded body, without parsing it."""
    found: dict[bytes, bytes] = {}
    for match in _ACCOUNT_FIELD.finditer(body):
        start = match.start()
        if start == 0 or body[start - 1] == 0x26:  # b"&"
            found[match.group(1)] = match.group(2)
    account_id: int | None = None
    raw_id = found.get(b"id")
    if raw_id is not None:
        text = _form_value(raw_id)
        if text.isascii() and text.isdigit() and len(text) <= 18:
            account_id = int(text)
    raw_sub = found.get(b"subdomain")
    subdomain = _form_value(raw_sub).casefold() if raw_sub is not None else None
    return Account(account_id, subdomain or None)


def account_problem(target: Target, account: Account) -> str | None:
    """Why ``account`` is not the connection's, or None when it is. The account id decides
    when the connection knows its own; else the subdomain (the first label of its host)."""
    if target.account_id is not None:
        if account.id is None:
            return "the body names no account[id]: amoCRM's webhooks always carry one"
        if account.id != target.account_id:
            return "the body's account[id] is not the connected account's"
        return None
    own = target.host.split(".", 1)[0].casefold()
    if account.subdomain is None:
        return "the body names no account[subdomain]: amoCRM's webhooks always carry one"
    if account.subdomain != own:
        return "the body's account[subdomain] is not the connected account's"
    return None


class Targets:
    """Connections by URL secret, each answer (a miss too) reused for ``ttl`` seconds; callers
    asking for the same secret at the same time share one read."""

    def __init__(self, db: Database, ttl: float, *, clock: Callable[[], float] = time.monotonic):
        self._db = db
        self._ttl = ttl
        self._clock = clock
        self._cache: dict[str, tuple[Target | None, float]] = {}
        self._reading: dict[str, asyncio.Future[Target | None]] = {}

    async def find(self, secret: str) -> Target | None:
        if not SECRET_PATTERN.fullmatch(secret):
            return None
        digest = secret_digest(secret)
        now = self._clock()
        cached = self._cache.get(digest)
        if cached is not None and now - cached[1] < self._ttl:
            found = cached[0]
        else:
            reading = self._reading.get(digest)
            if reading is not None and reading.get_loop() is asyncio.get_running_loop():
                found = await asyncio.shield(reading)
            else:
                found = await self._read(digest, now)
        # The row was found by its hash; compared again in constant time all the same, so no
        # path through here depends on how much of a guessed secret was right.
        if found is None or not hmac.compare_digest(found.secret_hash, digest):
            return None
        return found

    async def _read(self, digest: str, now: float) -> Target | None:
        future: asyncio.Future[Target | None] = asyncio.get_running_loop().create_future()
        self._reading[digest] = future
        try:
            async with self._db.read() as session:
                found = await WebhookConnectionRepository(session).by_secret_hash(digest)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: callers that shared it re-raise it themselves
            raise
        finally:
            self._reading.pop(digest, None)
        if len(self._cache) >= CACHE_LIMIT:  # guessed secrets must not grow it without end
            self._cache.clear()
        self._cache[digest] = (found, now)
        future.set_result(found)
        return found

    def forget(self, connection_id: str | None = None) -> None:
        """Drop cached answers (all, or those naming ``connection_id``): its secret or status
        changed in this process."""
        if connection_id is None:
            self._cache.clear()
            return
        for digest, (target, _) in list(self._cache.items()):
            if target is not None and target.connection_id == connection_id:
                self._cache.pop(digest, None)


@dataclass
class Incoming:
    """A delivery authenticated and waiting for its commit."""

    target: Target
    body: bytes
    body_hash: str
    content_type: str | None
    headers: dict[str, str]
    received_at: datetime


@dataclass(frozen=True)
class Stored:
    """The delivery's row, committed; ``duplicate_of`` the first copy for a redelivery."""

    delivery_id: int
    duplicate_of: int | None = None


def kept_headers(headers: Any) -> dict[str, str]:
    """The request headers worth keeping with a delivery (amoCRM's request id, the sender)."""
    kept: dict[str, str] = {}
    for name in ("x-amocrm-requestid", "user-agent", "x-forwarded-for"):
        value = headers.get(name)
        if value:
            kept[name] = str(value)[:255]
    return kept
