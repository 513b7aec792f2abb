"""The end of every connect flow: amoCRM sends the browser back (``callback``), or an app that
received the code itself hands it over (``exchange_code_for``).

The state is consumed — and committed — in its own unit of work *before* the code is exchanged,
so a state works once even if the exchange takes long or fails; the exchange runs outside any
transaction (amoCRM's token endpoint is a network call, a SQLite write lock must not wait on it);
the connection is stored in a second unit. So this flow opens its units itself, as a task wrapper
would. Every failure is a :data:`PROBLEMS` code the callback page explains, and is audited.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from amobridge.amo.auth import TokenSet, exchange_code
from amobridge.amo.domains import parse_account_domain
from amobridge.amo.errors import AmoAuthError, AmoError, AmoInvalidDomain
from amobridge.audit import AuditRepository
from amobridge.connect.problems import PROBLEMS, CallbackOutcome, ConnectFailure
from amobridge.connect.repository import StatusRow
from amobridge.connect.service import ConnectService, Credentials
from amobridge.connect.stores import ReturnTo, binding_cookie_name
from amobridge.errors import ServiceError
from amobridge.storage.tables import Connection


class CallbackService:
    def __init__(self, connect: ConnectService) -> None:
        self.connect = connect

    async def callback(
        self, params: dict[str, str], cookies: Mapping[str, str] | None = None
    ) -> CallbackOutcome:
        """``cookies``: the browser's; a state bound to a browser needs its cookie (the state
        stays unused without it, so that browser can still finish). That browser coming back
        with a state that connected (a reload of the success page) is shown the connection as
        it is now, and nothing is exchanged again."""
        state = params.get("state") or ""
        if not state:
            return CallbackOutcome(False, "state_missing")
        cookie = (cookies or {}).get(binding_cookie_name(state))
        async with self.connect.db.transaction() as session:
            consumed = await self.connect.states.consume(session, state=state, cookie=cookie)
            record = consumed.record
            shown: StatusRow | None = None
            if consumed.completed and record is not None:
                shown = await self.connect.connections(session).status_of(record.owner)
            credentials: Credentials | None = None
            if consumed.problem is None and record is not None and record.flow == "button":
                taken = await self.connect.button_secrets.take(session, state=state)
                if taken is not None:
                    credentials = Credentials(
                        taken[0],
                        taken[1],
                        self.connect.redirect_uri,
                        "button",
                        self.connect.settings.amo.button_name,
                    )
        base: dict[str, Any] = {
            "owner": record.owner if record else None,
            "return_to": record.return_to if record else "web",
            "app_redirect": record.app_redirect if record else None,
            "lang": record.lang if record else None,
            "return_url": record.return_url if record else None,
        }
        if shown is not None and shown.status == "active" and shown.has_tokens:
            return CallbackOutcome(
                True, "connected", host=shown.host, account_id=shown.account_id, **base
            )
        if consumed.problem is not None or record is None:
            return await self._failed(f"state_{consumed.problem or 'unknown'}", **base)
        if params.get("error"):
            problem = "access_denied" if params["error"] == "access_denied" else "exchange_failed"
            return await self._failed(problem, detail=params["error"], **base)
        if record.flow == "button" and credentials is None:
            return await self._failed("secrets_missing", **base)
        credentials = credentials or self.connect.configured()
        if credentials is None:
            return await self._failed("not_configured", **base)
        code = params.get("code")
        if not code:
            return await self._failed("code_missing", **base)
        try:
            connection = await self._connect_with_code(
                record.owner, code, params.get("referer") or "", credentials, state=state
            )
        except ConnectFailure as failure:
            return await self._failed(failure.code, detail=failure.detail, **base)
        return CallbackOutcome(
            True, "connected", host=connection.host, account_id=connection.account_id, **base
        )

    async def exchange_code_for(self, owner: str, code: str, referer: str) -> Connection:
        credentials = self.connect.configured()
        if credentials is None:
            raise ServiceError(
                PROBLEMS["not_configured"][1], status_code=409, code="not_configured"
            )
        try:
            return await self._connect_with_code(owner, code, referer, credentials)
        except ConnectFailure as failure:
            title, why, fix = PROBLEMS[failure.code]
            detail = f"{title}: {failure.detail or why} {fix}"
            status = 502 if failure.code == "amocrm_unavailable" else 400
            raise ServiceError(detail, status_code=status, code=failure.code) from None

    async def _connect_with_code(
        self,
        owner: str,
        code: str,
        referer: str,
        credentials: Credentials,
        *,
        state: str | None = None,
    ) -> Connection:
        try:
            domain = parse_account_domain(referer)
        except AmoInvalidDomain as exc:
            raise ConnectFailure("bad_referer", str(exc)) from None
        try:
            tokens = await exchange_code(
                domain,
                client_id=credentials.client_id,
                client_secret=credentials.client_secret,
                redirect_uri=credentials.redirect_uri,
                code=code,
                base_url=self.connect.clients.base_url,
                http=self.connect.clients.http(),
            )
        except AmoAuthError as exc:
            await self._audit_failure(owner, "connect", str(exc))
            raise ConnectFailure("exchange_failed", exc.hint or exc.detail or str(exc)) from None
        except AmoError as exc:
            await self._audit_failure(owner, "connect", str(exc))
            raise ConnectFailure("amocrm_unavailable", str(exc)) from None
        return await self._store(owner, tokens, credentials, action="connect", state=state)

    async def _store(
        self,
        owner: str,
        tokens: TokenSet,
        credentials: Credentials | None,
        *,
        action: str,
        long_lived: bool = False,
        state: str | None = None,
    ) -> Connection:
        """Store the connection; ``state``, the one that led here, is marked in the same unit."""
        async with self.connect.db.transaction() as session:
            connection = await self.connect.save_connection(
                session, owner, tokens, credentials, action=action, long_lived=long_lived
            )
            if state is not None:
                await self.connect.states.succeeded(session, state=state)
            return connection

    async def _audit_failure(self, owner: str, action: str, error: str) -> None:
        async with self.connect.db.transaction() as session:
            AuditRepository(session).record(
                actor=owner, action=action, success=False, owner=owner, error=error
            )

    async def _failed(
        self,
        code: str,
        *,
        owner: str | None,
        return_to: ReturnTo,
        app_redirect: str | None,
        detail: str | None = None,
        lang: str | None = None,
        return_url: str | None = None,
    ) -> CallbackOutcome:
        if owner is not None and code not in ("exchange_failed", "amocrm_unavailable"):
            await self._audit_failure(owner, "connect", f"{code}: {detail or PROBLEMS[code][1]}")
        return CallbackOutcome(
            False,
            code,
            owner=owner,
            return_to=return_to,
            app_redirect=app_redirect,
            detail=detail,
            lang=lang,
            return_url=return_url,
        )
