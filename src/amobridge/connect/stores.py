"""OAuth ``state`` values and the website button's secrets, kept in the database (the SQL is in
the two repositories at the end; the stores add signing, lifetimes and encryption).

A state is ``<random>.<mac>``: the MAC (HMAC-SHA256 over the random part, keyed from the
encryption key) rejects forged or mangled values without a database hit; the row (stored under
the SHA-256 of the state, so a database reader cannot replay it) binds it to an owner, a flow and an
expiry, and :meth:`StateStore.consume` marks it used in one conditional UPDATE — signing alone
cannot stop a replay (slack_sdk says why), the row does.

A state started in a browser is also bound to that browser (RFC 6749, section 10.12): the row keeps the
SHA-256 of a random token the browser holds in a cookie named after the state
(:func:`binding_cookie_name`), and :meth:`StateStore.consume` refuses the state without it — and
leaves it unused, so the browser that started the flow can still finish it. A ``format=json`` link
carries a one-time handle instead (the row keeps ``handle:<its SHA-256>``); :meth:`StateStore.bind`
trades it, once, for a cookie token when a browser opens the link. A state issued with no binding
(before bindings existed, or for a flow no browser takes part in) is accepted as before.

A state that connected the account is marked (:meth:`StateStore.succeeded`) and kept one more
lifetime: the browser holding its cookie that comes back with it (a reload of the success page)
is told so (:attr:`ConsumedState.completed`) — still without a second use of the state — while
any other browser gets ``used``.

Button secrets (``POST /amocrm/secrets``) are accepted only for a live, unused state we issued for
the button flow, stored encrypted, taken (deleted) once by the callback, and purged after expiry.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from amobridge.storage.crypto import Keyring
from amobridge.storage.repository import Repository
from amobridge.storage.tables import ButtonSecret, OAuthState

Flow = Literal["redirect", "button"]
ReturnTo = Literal["web", "app"]
StateProblem = Literal[
    "unknown", "forged", "expired", "used", "wrong_flow", "wrong_browser", "link_used"
]

BINDING_COOKIE_PREFIX = "amb_state_"
_HANDLE = "handle:"


@dataclass(frozen=True)
class StateRecord:
    owner: str
    flow: str
    return_to: str
    app_redirect: str | None
    expires_at: datetime
    lang: str | None = None
    return_url: str | None = None


@dataclass(frozen=True)
class ConsumedState:
    record: StateRecord | None
    problem: StateProblem | None = None
    # With problem "used": the state connected the account and this is the browser bound to
    # it, back within the state's window — a reload of the success page.
    completed: bool = False


def _now() -> datetime:
    return datetime.now(UTC)


class StateSigner:
    """Signs with the first key, accepts any: a flow started before a key rotation still ends."""

    def __init__(self, key: bytes, *older: bytes) -> None:
        self._source: Callable[[], Sequence[bytes]] | None = None
        self._macs = _mac_keys((key, *older))

    @classmethod
    def of(cls, keys: Callable[[], Sequence[bytes]]) -> StateSigner:
        """A signer whose keys ``keys()`` gives when the first state is signed or checked (a
        deferred keyring, e.g. the development key, is read then and not when services are
        built)."""
        signer = cls.__new__(cls)
        signer._source = keys
        signer._macs = []
        return signer

    @property
    def _keys(self) -> list[bytes]:
        if self._source is not None:
            self._macs = _mac_keys(self._source())
            self._source = None
        return self._macs

    def new(self) -> str:
        nonce = base64.urlsafe_b64encode(secrets.token_bytes(24)).decode().rstrip("=")
        return f"{nonce}.{self._mac(self._keys[0], nonce)}"

    def valid(self, state: str) -> bool:
        nonce, dot, mac = state.partition(".")
        # We issue ASCII only; anything else is forged. Checked first because compare_digest
        # raises TypeError on a non-ASCII str, and a lone surrogate (valid in a JSON body)
        # cannot even be encoded for the MAC.
        if not dot or not nonce or len(state) > 200 or not state.isascii():
            return False
        return any(
            hmac.compare_digest(mac.encode(), self._mac(key, nonce).encode()) for key in self._keys
        )

    @staticmethod
    def _mac(key: bytes, nonce: str) -> str:
        return hmac.new(key, nonce.encode(), hashlib.sha256).hexdigest()[:32]


def _mac_keys(keys: Sequence[bytes]) -> list[bytes]:
    return [hashlib.sha256(b"amobridge/oauth-state/" + k).digest() for k in keys]


def state_id(state: str) -> str:
    return hashlib.sha256(state.encode()).hexdigest()


def binding_cookie_name(state: str) -> str:
    """One cookie per state: a browser may have several flows open at once."""
    return (
        BINDING_COOKIE_PREFIX
        + hashlib.sha256(state.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    )


def new_binding_secret() -> str:
    """A cookie token or a link handle (random, URL- and cookie-safe)."""
    return secrets.token_urlsafe(32)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def cookie_binding(token: str) -> str:
    """What the row keeps for a browser holding ``token`` in its cookie."""
    return _digest(token)


def link_binding(handle: str) -> str:
    """What the row keeps until a browser opens the link carrying ``handle``."""
    return _HANDLE + _digest(handle)


def _holds(stored: str, cookie: str | None) -> bool:
    """Constant-time: does the browser's cookie match the row's binding?"""
    if cookie is None or stored.startswith(_HANDLE):
        return False
    return hmac.compare_digest(stored.encode(), _digest(cookie).encode())


@dataclass(frozen=True)
class Bound:
    """:meth:`StateStore.bind`'s answer: a problem, or the cookie token to set (None: the
    state is bound to no browser)."""

    record: StateRecord | None
    problem: StateProblem | None = None
    token: str | None = None


class StateStore:
    """Issue and consume OAuth states. Methods take the caller's session: they never commit."""

    def __init__(self, signer: StateSigner, ttl: timedelta) -> None:
        self._signer = signer
        self.ttl = ttl

    async def issue(
        self,
        session: AsyncSession,
        *,
        owner: str,
        flow: Flow,
        return_to: ReturnTo = "web",
        app_redirect: str | None = None,
        browser_binding: str | None = None,
        lang: str | None = None,
        return_url: str | None = None,
    ) -> str:
        """A new state; ``browser_binding`` is :func:`cookie_binding` or :func:`link_binding`;
        ``lang`` and ``return_url`` are for the pages at the flow's end."""
        state = self._signer.new()
        OAuthStateRepository(session).add(
            OAuthState(
                id=state_id(state),
                owner=owner,
                flow=flow,
                return_to=return_to,
                app_redirect=app_redirect,
                created_at=_now(),
                expires_at=_now() + self.ttl,
                browser_binding=browser_binding,
                lang=lang,
                return_url=return_url,
            )
        )
        return state

    async def peek(self, session: AsyncSession, *, state: str) -> ConsumedState:
        """Look without consuming (the secrets webhook checks the state is live)."""
        if not self._signer.valid(state):
            return ConsumedState(None, "forged")
        row = await OAuthStateRepository(session).get(state_id(state))
        return self._judge(row)

    async def bind(self, session: AsyncSession, *, state: str, handle: str) -> Bound:
        """A browser opened a ``format=json`` link: the first one to bring its handle is bound
        to the state (a new cookie token). The link works once: the cookie goes to the callback
        only, so a second opening — even in the same browser — cannot be told apart from
        another browser's."""
        if not self._signer.valid(state):
            return Bound(None, "forged")
        repo = OAuthStateRepository(session)
        row = await repo.get(state_id(state))
        judged = self._judge(row)
        if judged.problem is not None or row is None:
            return Bound(judged.record, judged.problem)
        stored = row.browser_binding
        if stored is None:
            return Bound(judged.record)
        if not stored.startswith(_HANDLE):
            return Bound(judged.record, "link_used")
        if not hmac.compare_digest(stored.encode(), link_binding(handle).encode()):
            return Bound(judged.record, "forged")
        token = new_binding_secret()
        if not await repo.rebind(row.id, old=stored, new=cookie_binding(token)):
            return Bound(judged.record, "link_used")  # another opening won the race
        return Bound(judged.record, token=token)

    async def consume(
        self, session: AsyncSession, *, state: str, cookie: str | None = None
    ) -> ConsumedState:
        """Mark a live state used — exactly once, even with concurrent callbacks. A state bound
        to a browser needs that browser's ``cookie``; without it the state stays unused."""
        if not self._signer.valid(state):
            return ConsumedState(None, "forged")
        repo = OAuthStateRepository(session)
        row = await repo.get(state_id(state))
        judged = self._judge(row)
        if judged.problem == "used" and row is not None and _reloaded(row, cookie):
            return ConsumedState(judged.record, "used", completed=True)
        if judged.problem is not None:
            return judged
        if row is not None and row.browser_binding and not _holds(row.browser_binding, cookie):
            return ConsumedState(judged.record, "wrong_browser")
        record = await repo.consume(state_id(state), now=_now())
        if record is not None:
            return ConsumedState(record)
        # Say why, for the error page: never seen, expired or already used.
        return self._judge(await repo.get(state_id(state)), consuming=True)

    async def succeeded(self, session: AsyncSession, *, state: str) -> None:
        """The callback connected the account with ``state`` (consumed): mark it, and keep the
        row one more lifetime from now so the bound browser can reload the success page."""
        now = _now()
        await OAuthStateRepository(session).succeed(state_id(state), now=now, until=now + self.ttl)

    def _judge(self, row: OAuthState | None, *, consuming: bool = False) -> ConsumedState:
        if row is None:
            return ConsumedState(None, "unknown")
        record = StateRecord(
            row.owner,
            row.flow,
            row.return_to,
            row.app_redirect,
            row.expires_at,
            row.lang,
            row.return_url,
        )
        if row.used_at is not None:
            return ConsumedState(record, "used")
        if row.expires_at <= _now():
            return ConsumedState(record, "expired")
        if consuming:  # lost a race to a concurrent consume
            return ConsumedState(record, "used")
        return ConsumedState(record)

    async def purge_expired(self, session: AsyncSession) -> int:
        return await OAuthStateRepository(session).purge(before=_now())


def _reloaded(row: OAuthState, cookie: str | None) -> bool:
    """A used state coming back from the browser it is bound to, after it connected the
    account and within its window: that browser reloading the success page."""
    return (
        row.succeeded_at is not None
        and row.expires_at > _now()
        and bool(row.browser_binding)
        and _holds(row.browser_binding or "", cookie)
    )


class ButtonSecretStore:
    def __init__(self, keyring: Keyring, ttl: timedelta) -> None:
        self._keyring = keyring
        self.ttl = ttl

    async def put(
        self, session: AsyncSession, *, state: str, client_id: str, client_secret: str
    ) -> bool:
        """Keep credentials for a live button state; False if one is already stored."""
        sid = state_id(state)
        repo = ButtonSecretRepository(session)
        if await repo.get(sid) is not None:
            return False
        repo.add(
            ButtonSecret(
                state_id=sid,
                client_id=client_id,
                client_secret_enc=self._keyring.encrypt(client_secret),
                created_at=_now(),
                expires_at=_now() + self.ttl,
            )
        )
        return True

    async def take(self, session: AsyncSession, *, state: str) -> tuple[str, str] | None:
        """Credentials for ``state``, deleted in the same statement (used once)."""
        taken = await ButtonSecretRepository(session).take(state_id(state), now=_now())
        if taken is None:
            return None
        return taken[0], self._keyring.decrypt(taken[1])

    async def purge_expired(self, session: AsyncSession) -> int:
        return await ButtonSecretRepository(session).purge(before=_now())

    async def count(self, session: AsyncSession) -> int:
        return await ButtonSecretRepository(session).count()


# --- the SQL ---------------------------------------------------------------------------------------


class OAuthStateRepository(Repository[OAuthState]):
    model = OAuthState

    async def consume(self, sid: str, *, now: datetime) -> StateRecord | None:
        """Mark a live, unused state used in one conditional UPDATE; its record, or None."""
        result = await self.session.execute(
            update(OAuthState)
            .where(OAuthState.id == sid, OAuthState.used_at.is_(None), OAuthState.expires_at > now)
            .values(used_at=now)
            .returning(
                OAuthState.owner,
                OAuthState.flow,
                OAuthState.return_to,
                OAuthState.app_redirect,
                OAuthState.expires_at,
                OAuthState.lang,
                OAuthState.return_url,
            )
            .execution_options(synchronize_session=False)
        )
        row = result.first()
        return None if row is None else StateRecord(*row)

    async def succeed(self, sid: str, *, now: datetime, until: datetime) -> None:
        """Mark a consumed state as the one that connected its account, kept until ``until``."""
        await self.session.execute(
            update(OAuthState)
            .where(OAuthState.id == sid, OAuthState.used_at.is_not(None))
            .values(succeeded_at=now, expires_at=until)
            .execution_options(synchronize_session=False)
        )

    async def rebind(self, sid: str, *, old: str, new: str) -> bool:
        """Replace a link handle's binding by a browser's, if no one did it first."""
        result = await self.session.execute(
            update(OAuthState)
            .where(OAuthState.id == sid, OAuthState.browser_binding == old)
            .values(browser_binding=new)
            .execution_options(synchronize_session=False)
        )
        return int(getattr(result, "rowcount", 0) or 0) == 1

    async def purge(self, *, before: datetime) -> int:
        result = await self.session.execute(
            delete(OAuthState)
            .where(OAuthState.expires_at <= before)
            .execution_options(synchronize_session=False)
        )
        return int(getattr(result, "rowcount", 0) or 0)


class ButtonSecretRepository(Repository[ButtonSecret]):
    model = ButtonSecret

    async def take(self, sid: str, *, now: datetime) -> tuple[str, str] | None:
        """(client_id, encrypted secret) of a live entry, deleted in the same statement."""
        result = await self.session.execute(
            delete(ButtonSecret)
            .where(ButtonSecret.state_id == sid, ButtonSecret.expires_at > now)
            .returning(ButtonSecret.client_id, ButtonSecret.client_secret_enc)
            .execution_options(synchronize_session=False)
        )
        row = result.first()
        return None if row is None else (row[0], row[1])

    async def purge(self, *, before: datetime) -> int:
        result = await self.session.execute(
            delete(ButtonSecret)
            .where(ButtonSecret.expires_at <= before)
            .execution_options(synchronize_session=False)
        )
        return int(getattr(result, "rowcount", 0) or 0)

    async def count(self) -> int:
        return int(await self.session.scalar(select(func.count()).select_from(ButtonSecret)) or 0)
