"""Every way to connect an amoCRM account, and what happens to a connection afterwards.

Flows (seeds 000, 001, 003, 004):
- redirect: ``start()`` issues a state bound to the owner and returns amoCRM's consent URL;
  ``callback()`` consumes the state once and exchanges the code **on the account's own domain**
  (the ``referer``), then stores the connection;
- website button: the connect page carries a state; amoCRM POSTs the new integration's
  credentials to ``accept_secrets()`` before the user lands on the callback, which takes them
  (once) instead of the configured ones;
- ``exchange_code()`` for apps that receive the code themselves, ``import_tokens()`` for tokens
  obtained by hand or a long-lived token, ``disconnect()`` and amoCRM's uninstall hook.

Each outcome is written to the audit log; no token or secret is ever logged or returned.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
from sqlalchemy import select

from amobridge.amo.auth import TokenSet, exchange_code
from amobridge.amo.domains import parse_account_domain, token_claims
from amobridge.amo.errors import AmoAuthError, AmoError, AmoInvalidDomain, AmoReauthRequired
from amobridge.connect.clients import ConnectionClients
from amobridge.connect.repository import (
    AuditLog,
    ConnectionRepository,
    IntegrationRepository,
    Tokens,
)
from amobridge.connect.stores import ButtonSecretStore, ReturnTo, StateStore
from amobridge.errors import NotFound, ServiceError, Unauthorized
from amobridge.settings import Settings
from amobridge.storage.db import Database
from amobridge.storage.tables import Connection, Integration

log = logging.getLogger("amobridge.connect")

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


@dataclass(frozen=True)
class Credentials:
    client_id: str
    client_secret: str
    redirect_uri: str
    source: Literal["settings", "button", "manual"]
    name: str | None = None


class ConnectService:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        *,
        states: StateStore,
        button_secrets: ButtonSecretStore,
        connections: ConnectionRepository,
        integrations: IntegrationRepository,
        audit: AuditLog,
        clients: ConnectionClients,
    ) -> None:
        self.settings = settings
        self.db = db
        self.states = states
        self.button_secrets = button_secrets
        self.connections = connections
        self.integrations = integrations
        self.audit = audit
        self.clients = clients
        self._reported: set[tuple[str, int]] = set()

    # --- URLs ----------------------------------------------------------------------------------
    @property
    def public_url(self) -> str:
        return self.settings.server.public_url.rstrip("/")

    @property
    def redirect_uri(self) -> str:
        return self.settings.amo.redirect_uri or f"{self.public_url}/amocrm/callback"

    @property
    def secrets_uri(self) -> str:
        return f"{self.public_url}/amocrm/secrets"

    def configured(self) -> Credentials | None:
        amo = self.settings.amo
        if not amo.client_id or amo.client_secret is None:
            return None
        return Credentials(
            amo.client_id, amo.client_secret.get_secret_value(), self.redirect_uri, "settings"
        )

    # --- redirect flow ---------------------------------------------------------------------------
    def check_app_redirect(self, app_redirect: str | None) -> str | None:
        """A deep link target must use an allow-listed scheme (never http(s) or javascript)."""
        if app_redirect is None:
            return None
        scheme = urlsplit(app_redirect).scheme.lower()
        allowed = [s.lower() for s in self.settings.mobile.allowed_schemes]
        if not scheme or scheme not in allowed:
            raise ServiceError(
                f"redirect scheme {scheme or '(none)'!r} is not allowed; allowed: "
                f"{', '.join(allowed) or 'none (set AMOBRIDGE_MOBILE__ALLOWED_SCHEMES)'}"
            )
        return app_redirect

    async def start(
        self, owner: str, *, return_to: ReturnTo = "web", app_redirect: str | None = None
    ) -> str:
        """amoCRM's consent URL for ``owner`` (a fresh single-use state inside)."""
        credentials = self.configured()
        if credentials is None:
            raise ServiceError(
                "no amoCRM integration is configured (AMOBRIDGE_AMO__CLIENT_ID/CLIENT_SECRET); "
                "use the website button page /amocrm/connect instead",
                status_code=409,
            )
        if return_to == "app":
            app_redirect = self.check_app_redirect(app_redirect or self._default_app_redirect())
        async with self.db.transaction() as session:
            state = await self.states.issue(
                session,
                owner=owner,
                flow="redirect",
                return_to=return_to,
                app_redirect=app_redirect,
            )
        query = urlencode({"client_id": credentials.client_id, "state": state, "mode": "popup"})
        return f"{self.settings.amo.authorize_url}?{query}"

    def _default_app_redirect(self) -> str | None:
        schemes = self.settings.mobile.allowed_schemes
        return f"{schemes[0]}://amocrm/callback" if schemes else None

    async def button_state(
        self, owner: str, *, return_to: ReturnTo = "web", app_redirect: str | None = None
    ) -> str:
        if return_to == "app":
            app_redirect = self.check_app_redirect(app_redirect or self._default_app_redirect())
        async with self.db.transaction() as session:
            return await self.states.issue(
                session, owner=owner, flow="button", return_to=return_to, app_redirect=app_redirect
            )

    async def accept_secrets(self, body: bytes, content_type: str) -> None:
        """amoCRM's secrets webhook: keep the credentials for a live button state we issued."""
        data = _parse_body(body, content_type)
        client_id, client_secret, state = (
            data.get("client_id"),
            data.get("client_secret"),
            data.get("state"),
        )
        if not all(isinstance(v, str) and v.strip() for v in (client_id, client_secret, state)):
            raise ServiceError("client_id, client_secret and state are required")
        assert isinstance(client_id, str)
        assert isinstance(client_secret, str)
        assert isinstance(state, str)
        if len(client_id) > 128 or len(client_secret) > 1024:
            raise ServiceError("client_id or client_secret is too long")
        async with self.db.transaction() as session:
            judged = await self.states.peek(session, state=state)
            if judged.problem is not None or judged.record is None:
                raise ServiceError(
                    f"state is {judged.problem or 'unknown'}: nothing stored", status_code=403
                )
            if judged.record.flow != "button":
                raise ServiceError("state was not issued for the website button", status_code=403)
            if not await self.button_secrets.put(
                session, state=state, client_id=client_id, client_secret=client_secret
            ):
                raise ServiceError(
                    "credentials for this state were already received", status_code=409
                )
            await self.audit.record(
                session,
                actor="amocrm",
                action="button.secrets_received",
                success=True,
                owner=judged.record.owner,
                details={"client_id": client_id},
            )

    async def callback(self, params: dict[str, str]) -> CallbackOutcome:
        state = params.get("state") or ""
        if not state:
            return CallbackOutcome(False, "state_missing")
        async with self.db.transaction() as session:
            consumed = await self.states.consume(session, state=state)
            record = consumed.record
            credentials: Credentials | None = None
            if consumed.problem is None and record is not None and record.flow == "button":
                taken = await self.button_secrets.take(session, state=state)
                if taken is not None:
                    credentials = Credentials(
                        taken[0],
                        taken[1],
                        self.redirect_uri,
                        "button",
                        self.settings.amo.button_name,
                    )
        base: dict[str, Any] = {
            "owner": record.owner if record else None,
            "return_to": record.return_to if record else "web",
            "app_redirect": record.app_redirect if record else None,
        }
        if consumed.problem is not None or record is None:
            return await self._failed(f"state_{consumed.problem or 'unknown'}", **base)
        if params.get("error"):
            problem = "access_denied" if params["error"] == "access_denied" else "exchange_failed"
            return await self._failed(problem, detail=params["error"], **base)
        if record.flow == "button" and credentials is None:
            return await self._failed("secrets_missing", **base)
        credentials = credentials or self.configured()
        if credentials is None:
            return await self._failed("not_configured", **base)
        code = params.get("code")
        if not code:
            return await self._failed("code_missing", **base)
        try:
            connection = await self._connect_with_code(
                record.owner, code, params.get("referer") or "", credentials
            )
        except _ConnectFailure as failure:
            return await self._failed(failure.code, detail=failure.detail, **base)
        return CallbackOutcome(
            True,
            "connected",
            owner=record.owner,
            host=connection.host,
            account_id=connection.account_id,
            return_to=record.return_to,
            app_redirect=record.app_redirect,
        )

    async def exchange_code_for(self, owner: str, code: str, referer: str) -> Connection:
        credentials = self.configured()
        if credentials is None:
            raise ServiceError(PROBLEMS["not_configured"][1], status_code=409)
        try:
            return await self._connect_with_code(owner, code, referer, credentials)
        except _ConnectFailure as failure:
            title, why, fix = PROBLEMS[failure.code]
            detail = f"{title}: {failure.detail or why} {fix}"
            status = 502 if failure.code == "amocrm_unavailable" else 400
            raise ServiceError(detail, status_code=status) from None

    async def _connect_with_code(
        self, owner: str, code: str, referer: str, credentials: Credentials
    ) -> Connection:
        try:
            domain = parse_account_domain(referer)
        except AmoInvalidDomain as exc:
            raise _ConnectFailure("bad_referer", str(exc)) from None
        try:
            tokens = await exchange_code(
                domain,
                client_id=credentials.client_id,
                client_secret=credentials.client_secret,
                redirect_uri=credentials.redirect_uri,
                code=code,
                base_url=self.clients.base_url,
                http=self.clients.http(),
            )
        except AmoAuthError as exc:
            await self._audit_failure(owner, "connect", str(exc))
            raise _ConnectFailure("exchange_failed", exc.hint or exc.detail or str(exc)) from None
        except AmoError as exc:
            await self._audit_failure(owner, "connect", str(exc))
            raise _ConnectFailure("amocrm_unavailable", str(exc)) from None
        return await self._store(owner, tokens, credentials, action="connect")

    async def _store(
        self,
        owner: str,
        tokens: TokenSet,
        credentials: Credentials | None,
        *,
        action: str,
        long_lived: bool = False,
    ) -> Connection:
        claims = token_claims(tokens.access_token)
        account_id = claims.get("account_id")
        host = tokens.domain or ""
        async with self.db.transaction() as session:
            integration_id = None
            if credentials is not None:
                integration = await self.integrations.upsert(
                    session,
                    client_id=credentials.client_id,
                    client_secret=credentials.client_secret,
                    redirect_uri=credentials.redirect_uri,
                    source=credentials.source,
                    name=credentials.name,
                )
                integration_id = integration.id
            connection = await self.connections.connect(
                session,
                owner=owner,
                integration_id=integration_id,
                host=host,
                account_id=int(account_id) if isinstance(account_id, int) else None,
                tokens=Tokens(
                    tokens.access_token,
                    tokens.refresh_token,
                    datetime.fromtimestamp(tokens.expires_at, UTC) if tokens.expires_at else None,
                    long_lived=long_lived,
                ),
            )
            await self.audit.record(
                session,
                actor=owner,
                action=action,
                success=True,
                owner=owner,
                connection_id=connection.id,
                message=f"connected {host}" + (f" (account {account_id})" if account_id else ""),
            )
        await self.clients.forget(connection.id)
        self._reported = {r for r in self._reported if r[0] != connection.id}
        log.info("connection %s: %s connected %s", connection.id, action, host)
        return connection

    async def import_tokens(
        self,
        owner: str,
        *,
        domain: str,
        access_token: str,
        refresh_token: str | None,
        expires_in: int | None,
        client_id: str | None,
        client_secret: str | None,
        redirect_uri: str | None,
    ) -> Connection:
        try:
            account = parse_account_domain(domain)
        except AmoInvalidDomain as exc:
            raise ServiceError(str(exc)) from None
        now = time.time()
        claims = token_claims(access_token)
        exp = claims.get("exp")
        if expires_in is not None:
            expires_at = now + expires_in
        elif isinstance(exp, int | float):
            expires_at = float(exp)
        else:
            expires_at = now + 86400
        long_lived = refresh_token is None
        credentials: Credentials | None = None
        if refresh_token is not None:
            configured = self.configured()
            if client_id and client_secret:
                credentials = Credentials(
                    client_id, client_secret, redirect_uri or self.redirect_uri, "manual"
                )
            elif configured is not None:
                credentials = configured
            else:
                raise ServiceError(
                    "a refresh token needs its integration: give client_id and client_secret "
                    "(or configure AMOBRIDGE_AMO__CLIENT_ID/CLIENT_SECRET)"
                )
        tokens = TokenSet(
            access_token=access_token,
            refresh_token=refresh_token,
            expires_at=expires_at,
            domain=account.host,
            issued_at=now,
        )
        return await self._store(
            owner, tokens, credentials, action="tokens.import", long_lived=long_lived
        )

    # --- status, disconnect, uninstall -----------------------------------------------------------
    async def status(self, owner: str) -> dict[str, Any]:
        async with self.db.transaction() as session:
            row = await self.connections.for_owner(session, owner)
        if row is None:
            return {
                "connected": False,
                "hasTokens": False,
                "domain": None,
                "accountId": None,
                "expiresAt": None,
                "lastRefreshAt": None,
                "lastError": None,
                "status": "not_connected",
            }
        has_tokens = row.access_token_enc is not None
        return {
            "connected": row.status == "active" and has_tokens,
            "hasTokens": has_tokens,
            "domain": row.host,
            "accountId": row.account_id,
            "expiresAt": _iso(row.expires_at),
            "lastRefreshAt": _iso(row.last_refresh_at),
            "lastError": row.last_error,
            "status": row.status,
            "longLived": row.long_lived,
            "connectionId": row.id,
        }

    async def disconnect(self, owner: str, *, actor: str) -> None:
        async with self.db.transaction() as session:
            row = await self.connections.disconnect(session, owner)
            if row is None:
                raise NotFound("no amoCRM connection for this owner")
            await self.audit.record(
                session,
                actor=actor,
                action="disconnect",
                success=True,
                owner=owner,
                connection_id=row.id,
                message=f"disconnected {row.host}",
            )
            connection_id = row.id
        await self.clients.forget(connection_id)

    async def uninstall(self, account_id: str, client_uuid: str, signature: str) -> int:
        """amoCRM's disconnect hook (§4): verify the signature, then disconnect locally."""
        if not account_id.isdigit() or not client_uuid or not signature:
            raise Unauthorized("account_id, client_uuid and signature are required")
        async with self.db.transaction() as session:
            integration = await session.scalar(
                select(Integration).where(Integration.client_id == client_uuid)
            )
            if integration is None:
                raise Unauthorized("unknown integration")
            secret = self.integrations.secret(integration)
            expected = hmac.new(
                secret.encode(), f"{client_uuid}|{int(account_id)}".encode(), hashlib.sha256
            ).hexdigest()
            if not hmac.compare_digest(expected, signature.lower()):
                raise Unauthorized("bad signature")
            rows = [
                r
                for r in await self.connections.by_account(session, int(account_id))
                if r.integration_id == integration.id and r.status != "disconnected"
            ]
            for row in rows:
                self.connections.disconnect_row(row)
                await self.audit.record(
                    session,
                    actor="amocrm",
                    action="uninstall",
                    success=True,
                    owner=row.owner,
                    connection_id=row.id,
                    message=f"amoCRM reported the integration disabled in {row.host}",
                )
            ids = [r.id for r in rows]
        for connection_id in ids:
            await self.clients.forget(connection_id)
        return len(ids)

    # --- a dead grant ----------------------------------------------------------------------------
    async def on_reauth_required(self, connection_id: str, error: AmoReauthRequired) -> None:
        """Mark the connection, audit the fix, tell the host app — once per grant."""
        async with self.db.transaction() as session:
            row = await self.connections.get(session, connection_id)
            if row is None:
                return
            marker = (connection_id, row.token_version)
            if marker in self._reported and row.status == "reauth_required":
                return
            self._reported.add(marker)
            await self.connections.mark_reauth_required(session, connection_id, str(error))
            owner = row.owner
            await self.audit.record(
                session,
                actor="system",
                action="reauth_required",
                success=False,
                owner=owner,
                connection_id=connection_id,
                error=str(error),
                message="amoCRM refused the grant. Fix: re-connect via /amocrm/auth "
                f"(or /amocrm/connect) for owner {owner!r}.",
            )
        log.warning("connection %s needs re-authorization: %s", connection_id, error)
        await self._notify_reauth(owner, connection_id, str(error))

    async def _notify_reauth(self, owner: str, connection_id: str, reason: str) -> None:
        hooks = self.settings.hooks
        if not hooks.reauth_callback_url:
            return
        body = json.dumps(
            {
                "event": "connection.reauth_required",
                "owner": owner,
                "connection_id": connection_id,
                "reason": reason,
                "fix": f"{self.public_url}/amocrm/auth?owner={owner}",
            },
            ensure_ascii=False,
        ).encode()
        headers = {"Content-Type": "application/json"}
        if hooks.reauth_callback_secret is not None:
            signature = hmac.new(
                hooks.reauth_callback_secret.get_secret_value().encode(), body, hashlib.sha256
            ).hexdigest()
            headers["X-Amobridge-Signature"] = f"sha256={signature}"
        try:
            reply = await self.clients.http().post(
                hooks.reauth_callback_url, content=body, headers=headers, timeout=10
            )
            ok = reply.is_success
            error = None if ok else f"HTTP {reply.status_code}"
        except httpx.HTTPError as exc:
            ok, error = False, type(exc).__name__
        async with self.db.transaction() as session:
            await self.audit.record(
                session,
                actor="system",
                action="reauth_callback",
                success=ok,
                owner=owner,
                connection_id=connection_id,
                error=error,
            )

    # --- housekeeping ----------------------------------------------------------------------------
    async def purge_expired(self) -> tuple[int, int]:
        async with self.db.transaction() as session:
            secrets_purged = await self.button_secrets.purge_expired(session)
            states = await self.states.purge_expired(session)
        return states, secrets_purged

    async def keepalive(self, *, older_than: timedelta) -> int:
        """Refresh idle connections long before their 3-month refresh token ages out."""
        async with self.db.transaction() as session:
            rows = await self.connections.due_for_keepalive(
                session, idle_before=datetime.now(UTC) - older_than
            )
        refreshed = 0
        for row in rows:
            try:
                provider = await self.clients.provider(row)
                tokens = self.connections.tokens(row)
                if tokens is None:
                    continue
                await provider.refresh(tokens.access_token)
                refreshed += 1
            except AmoError as exc:
                log.warning("keep-alive refresh of connection %s failed: %s", row.id, exc)
        return refreshed

    async def _audit_failure(self, owner: str, action: str, error: str) -> None:
        async with self.db.transaction() as session:
            await self.audit.record(
                session, actor=owner, action=action, success=False, owner=owner, error=error
            )

    async def _failed(
        self,
        code: str,
        *,
        owner: str | None,
        return_to: ReturnTo,
        app_redirect: str | None,
        detail: str | None = None,
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
        )


class _ConnectFailure(Exception):
    def __init__(self, code: str, detail: str | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.detail = detail


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _parse_body(body: bytes, content_type: str) -> dict[str, Any]:
    """The secrets webhook is documented as JSON; accept a form body too (§3, unverified)."""
    if not body.strip():
        raise ServiceError("empty body")
    if "json" in content_type or body.lstrip().startswith(b"{"):
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise ServiceError("body is not valid JSON") from None
        if not isinstance(data, dict):
            raise ServiceError("body must be a JSON object")
        return data
    try:
        parsed = parse_qs(body.decode(), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise ServiceError("body is not valid UTF-8") from None
    return {k: v[0] for k, v in parsed.items()}
