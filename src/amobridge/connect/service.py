"""Every way to connect an amoCRM account, and the connection's life afterwards.

Flows:
- redirect: ``start()`` issues a state bound to the owner and returns amoCRM's consent URL;
  ``callback()`` consumes the state once and exchanges the code **on the account's own domain**
  (the ``referer``), then stores the connection;
- website button: the connect page carries a state; amoCRM POSTs the new integration's
  credentials to ``accept_secrets()`` before the user lands on the callback, which takes them
  (once) instead of the configured ones;
- ``exchange_code_for()`` for apps that receive the code themselves, ``import_tokens()`` for tokens
  obtained by hand or a long-lived token, ``disconnect()`` and amoCRM's uninstall hook.

Units of work: a method that takes a ``session`` runs inside the caller's unit (a request
dependency or a CLI command commits it) and never commits. ``callback()`` and
``exchange_code_for()`` call amoCRM's token endpoint between two units — the state is consumed
(committed) before the code is exchanged, and no transaction stays open over the network — so they
open their own units, as a task wrapper would.

Each outcome is written to the audit log; no token or secret is ever logged or returned.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qs, urlencode, urlsplit

from sqlalchemy.ext.asyncio import AsyncSession

from amobridge.amo.auth import TokenSet
from amobridge.amo.domains import parse_account_domain, token_claims
from amobridge.amo.errors import AmoError, AmoHTTPError, AmoInvalidDomain, AmoReauthRequired
from amobridge.audit import AuditRepository
from amobridge.auth.principal import identifier_problem
from amobridge.connect.clients import ConnectionClients, ConnectionDisconnected
from amobridge.connect.repository import (
    ConnectionRepository,
    HookSignatureRepository,
    IntegrationRepository,
    Tokens,
)
from amobridge.connect.status_cache import StatusCache
from amobridge.connect.stores import ButtonSecretStore, Flow, ReturnTo, StateStore
from amobridge.errors import NotFound, ServiceError, Unauthorized
from amobridge.settings import Settings, parse_return_url, return_url_allowed
from amobridge.storage.crypto import Keyring
from amobridge.storage.db import Database
from amobridge.storage.tables import Connection

if TYPE_CHECKING:
    from amobridge.notify import NotifyService

log = logging.getLogger("amobridge.connect")

# Called inside the unit of work where a connection became active (connected, re-connected or
# imported) or is about to be disconnected (before its tokens are erased): other features queue
# their work there (the webhook subscription), in the same commit, never calling amoCRM.
ConnectionHook = Callable[[AsyncSession, Connection], Awaitable[None]]


@dataclass(frozen=True)
class Uninstalled:
    """What amoCRM's uninstall hook did: connections disconnected, or nothing (a replay)."""

    disconnected: int
    replayed: bool = False


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
        keyring: Keyring,
        states: StateStore,
        button_secrets: ButtonSecretStore,
        clients: ConnectionClients,
        events: NotifyService,
        statuses: StatusCache | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.keyring = keyring
        self.states = states
        self.button_secrets = button_secrets
        self.clients = clients
        self.events = events
        self.statuses = statuses or StatusCache(settings.amo.connection_check_ms / 1000)
        self.on_connected: list[ConnectionHook] = []
        self.on_disconnecting: list[ConnectionHook] = []

    def connections(self, session: AsyncSession) -> ConnectionRepository:
        return ConnectionRepository(session, self.keyring)

    def integrations(self, session: AsyncSession) -> IntegrationRepository:
        return IntegrationRepository(session, self.keyring)

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
                f"{', '.join(allowed) or 'none (set AMOBRIDGE_MOBILE__ALLOWED_SCHEMES)'}",
                code="redirect_not_allowed",
            )
        return app_redirect

    def check_return_url(self, return_url: str | None) -> str | None:
        """Where a ``return=web`` success page may send the browser back to: a URL under one of
        ``AMOBRIDGE_CONNECT__RETURN_URLS`` (same origin, the path within the prefix's), never
        anywhere else — the service must not be an open redirect."""
        if return_url is None:
            return None
        allowed = self.settings.connect.return_urls
        if not allowed:
            raise ServiceError(
                "return_url is not accepted: no return URLs are allowed "
                "(set AMOBRIDGE_CONNECT__RETURN_URLS to the host app's URL prefixes)",
                code="return_url_not_allowed",
            )
        try:
            parse_return_url(return_url)
        except ValueError as exc:
            raise ServiceError(f"return_url {exc}", code="return_url_not_allowed") from None
        if not return_url_allowed(return_url, allowed):
            raise ServiceError(
                "return_url is not allowed: it must start with one of "
                "AMOBRIDGE_CONNECT__RETURN_URLS (same origin, within its path)",
                code="return_url_not_allowed",
            )
        return return_url

    async def start(
        self,
        session: AsyncSession,
        owner: str,
        *,
        return_to: ReturnTo = "web",
        app_redirect: str | None = None,
    ) -> str:
        """amoCRM's consent URL for ``owner`` (a fresh single-use state inside, bound to no
        browser: for callers that open the browser themselves, like ``amobridge demo``)."""
        state = await self.redirect_state(
            session, owner, return_to=return_to, app_redirect=app_redirect
        )
        return self.consent_url(state)

    async def redirect_state(
        self,
        session: AsyncSession,
        owner: str,
        *,
        return_to: ReturnTo = "web",
        app_redirect: str | None = None,
        browser_binding: str | None = None,
        return_url: str | None = None,
        lang: str | None = None,
    ) -> str:
        """A fresh single-use state for the redirect flow (see :meth:`StateStore.issue` and
        :meth:`_issue`)."""
        self._credentials()
        return await self._issue(
            session,
            owner,
            "redirect",
            return_to,
            app_redirect,
            browser_binding,
            return_url=return_url,
            lang=lang,
        )

    def consent_url(self, state: str) -> str:
        """amoCRM's consent page for ``state``."""
        credentials = self._credentials()
        query = urlencode({"client_id": credentials.client_id, "state": state, "mode": "popup"})
        return f"{self.settings.amo.authorize_url}?{query}"

    def _credentials(self) -> Credentials:
        credentials = self.configured()
        if credentials is None:
            raise ServiceError(
                "no amoCRM integration is configured (AMOBRIDGE_AMO__CLIENT_ID/CLIENT_SECRET); "
                "use the website button page /amocrm/connect instead",
                status_code=409,
                code="not_configured",
            )
        return credentials

    def _default_app_redirect(self) -> str | None:
        schemes = self.settings.mobile.allowed_schemes
        return f"{schemes[0]}://amocrm/callback" if schemes else None

    async def button_state(
        self,
        session: AsyncSession,
        owner: str,
        *,
        return_to: ReturnTo = "web",
        app_redirect: str | None = None,
        browser_binding: str | None = None,
        return_url: str | None = None,
        lang: str | None = None,
    ) -> str:
        return await self._issue(
            session,
            owner,
            "button",
            return_to,
            app_redirect,
            browser_binding,
            return_url=return_url,
            lang=lang,
        )

    async def _issue(
        self,
        session: AsyncSession,
        owner: str,
        flow: Flow,
        return_to: ReturnTo,
        app_redirect: str | None,
        browser_binding: str | None,
        *,
        return_url: str | None = None,
        lang: str | None = None,
    ) -> str:
        """``return=app`` ends at the app's deep link (``app_redirect``, an allowed scheme);
        ``return=web`` may end by sending the browser back to ``return_url`` — for which
        ``app_redirect`` (the ``redirect`` parameter) is the older name. ``lang``: the page
        language the flow's pages keep (None: each page asks the browser)."""
        if return_to == "app":
            if return_url is not None:
                raise ServiceError(
                    "return_url is for return=web; a return=app flow ends at the app's deep "
                    "link (redirect)"
                )
            app_redirect = self.check_app_redirect(app_redirect or self._default_app_redirect())
        else:
            if app_redirect is not None and return_url is not None and app_redirect != return_url:
                raise ServiceError("give return_url or its older name redirect, not both")
            return_url = self.check_return_url(return_url or app_redirect)
            app_redirect = None
        return await self.states.issue(
            session,
            owner=owner,
            flow=flow,
            return_to=return_to,
            app_redirect=app_redirect,
            browser_binding=browser_binding,
            lang=lang,
            return_url=return_url,
        )

    async def accept_secrets(self, session: AsyncSession, body: bytes, content_type: str) -> None:
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
        problem = identifier_problem(client_id, "client_id")
        if problem is not None:
            raise ServiceError(problem)
        judged = await self.states.peek(session, state=state)
        if judged.problem is not None or judged.record is None:
            raise ServiceError(
                f"state is {judged.problem or 'unknown'}: nothing stored",
                status_code=403,
                code="state_invalid",
            )
        if judged.record.flow != "button":
            raise ServiceError(
                "state was not issued for the website button",
                status_code=403,
                code="state_invalid",
            )
        if not await self.button_secrets.put(
            session, state=state, client_id=client_id, client_secret=client_secret
        ):
            raise ServiceError(
                "credentials for this state were already received",
                status_code=409,
                code="secrets_already_received",
            )
        AuditRepository(session).record(
            actor="amocrm",
            action="button.secrets_received",
            success=True,
            owner=judged.record.owner,
            details={"client_id": client_id},
        )

    async def save_connection(
        self,
        session: AsyncSession,
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
        integration_id = None
        if credentials is not None:
            integration = await self.integrations(session).upsert(
                client_id=credentials.client_id,
                client_secret=credentials.client_secret,
                redirect_uri=credentials.redirect_uri,
                source=credentials.source,
                name=credentials.name,
            )
            integration_id = integration.id
        account = int(account_id) if isinstance(account_id, int) else None
        if credentials is not None and account is not None:
            # Connected again: amoCRM signs its next uninstall hook exactly as the last one.
            await HookSignatureRepository(session).forget(
                client_uuid=credentials.client_id, account_id=account
            )
        connection = await self.connections(session).connect(
            owner=owner,
            integration_id=integration_id,
            host=host,
            account_id=account,
            tokens=Tokens(
                tokens.access_token,
                tokens.refresh_token,
                datetime.fromtimestamp(tokens.expires_at, UTC) if tokens.expires_at else None,
                long_lived=long_lived,
                issued_at=(
                    datetime.fromtimestamp(tokens.issued_at, UTC) if tokens.issued_at else None
                ),
            ),
        )
        AuditRepository(session).record(
            actor=owner,
            action=action,
            success=True,
            owner=owner,
            connection_id=connection.id,
            message=f"connected {host}" + (f" (account {account_id})" if account_id else ""),
        )
        for hook in self.on_connected:
            await hook(session, connection)
        await self.clients.forget(connection.id)
        log.info("connection %s: %s connected %s", connection.id, action, host)
        return connection

    async def import_tokens(
        self,
        session: AsyncSession,
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
            raise ServiceError(str(exc), code="invalid_domain") from None
        now = time.time()
        # The token is decoded unverified: its claims are caller input like any other field.
        claims = token_claims(access_token)
        exp = claims.get("exp")
        _check_claims(claims, now)
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
                    "(or configure AMOBRIDGE_AMO__CLIENT_ID/CLIENT_SECRET)",
                    code="integration_required",
                )
        tokens = TokenSet(
            access_token=access_token,
            refresh_token=refresh_token,
            expires_at=expires_at,
            domain=account.host,
            issued_at=now,
        )
        return await self.save_connection(
            session, owner, tokens, credentials, action="tokens.import", long_lived=long_lived
        )

    # --- status, disconnect, uninstall -----------------------------------------------------------
    async def current_status(self, owner: str) -> dict[str, Any]:
        """:meth:`status` for ``GET /amocrm/status``, answered from :attr:`statuses` while this
        process has written nothing since and the answer is younger than
        ``connection_check_ms`` (see :mod:`amobridge.connect.status_cache`)."""

        async def read() -> dict[str, Any]:
            async with self.db.read() as session:
                return await self.status(session, owner)

        return await self.statuses.fetch(owner, self.db.write_generation, read)

    async def verified_status(self, owner: str) -> dict[str, Any]:
        """:meth:`status` for ``GET /amocrm/status?verify=true``, after one cheap amoCRM call
        (``GET /api/v4/account``) through the connection's own client, plus ``verified`` and, when
        false, ``verifyError``. A grant amoCRM refuses goes the usual way (the reauth handler
        marks the connection ``reauth_required``), so the status read after the call shows it."""
        async with self.db.read() as session:
            row = await self.connections(session).for_owner(owner)
        problem: str | None = None
        if row is None or row.status != "active" or row.access_token_enc is None:
            problem = "not connected: nothing to verify"
        else:
            try:
                client = await self.clients.client(row)
                await client.account.get()
            except AmoReauthRequired:
                problem = "amoCRM refused the grant: connect again through /amocrm/auth"
            except ConnectionDisconnected:
                problem = "the connection was disconnected"
            except AmoHTTPError as exc:
                problem = f"amoCRM answered {exc.status} ({type(exc).__name__})"
            except AmoError as exc:
                problem = f"amoCRM call failed ({type(exc).__name__})"
        async with self.db.read() as session:
            answer = await self.status(session, owner)
        answer["verified"] = problem is None
        if problem is not None:
            answer["verifyError"] = problem
        return answer

    async def status(self, session: AsyncSession, owner: str) -> dict[str, Any]:
        row = await self.connections(session).status_of(owner)
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
        return {
            "connected": row.status == "active" and row.has_tokens,
            "hasTokens": row.has_tokens,
            "domain": row.host,
            "accountId": row.account_id,
            "expiresAt": _iso(row.expires_at),
            "lastRefreshAt": _iso(row.last_refresh_at),
            "lastError": row.last_error,
            "status": row.status,
            "longLived": row.long_lived,
            "connectionId": row.id,
        }

    async def disconnect(self, session: AsyncSession, owner: str, *, actor: str) -> None:
        before = await self.connections(session).for_owner(owner)
        was_connected = before is not None and before.status != "disconnected"
        if before is not None and was_connected:
            for hook in self.on_disconnecting:
                await hook(session, before)
        row = await self.connections(session).disconnect(owner)
        if row is None:
            raise NotFound("no amoCRM connection for this owner", code="connection_not_found")
        AuditRepository(session).record(
            actor=actor,
            action="disconnect",
            success=True,
            owner=owner,
            connection_id=row.id,
            message=f"disconnected {row.host}",
        )
        if was_connected:  # a second disconnect is no news
            await self._disconnected(session, row, by="api")
        # This process forgets at once; the others see the row's status at their next check.
        await self.clients.forget(row.id)

    async def _disconnected(self, session: AsyncSession, row: Connection, *, by: str) -> None:
        """``connection.disconnected`` for the host app, in the disconnect's unit of work."""
        await self.events.emit(
            session,
            "connection.disconnected",
            owner=row.owner,
            connection_id=row.id,
            data={
                "owner": row.owner,
                "connection_id": row.id,
                "domain": row.host,
                "by": by,
                "fix": f"{self.public_url}/amocrm/auth?{urlencode({'owner': row.owner})}",
            },
        )

    async def uninstall(
        self, session: AsyncSession, account_id: str, client_uuid: str, signature: str
    ) -> Uninstalled:
        """amoCRM's disconnect hook: verify the signature, refuse one already acted on (the hook
        has no timestamp, so a logged URL could be replayed), then disconnect locally."""
        # ASCII digits only ("²".isdigit() is true, int() refuses it), and at most 18 of them
        # so the id fits the database's BIGINT.
        if not account_id or not client_uuid or not signature:
            raise Unauthorized("account_id, client_uuid and signature are required")
        if not _ascii_digits(account_id, 18):
            raise Unauthorized("account_id must be a number of at most 18 digits")
        problem = identifier_problem(client_uuid, "client_uuid")
        if problem is not None:
            raise Unauthorized(problem)
        integrations = self.integrations(session)
        integration = await integrations.by_client_id(client_uuid)
        if integration is None:
            raise Unauthorized("unknown integration", code="unknown_integration")
        expected = hmac.new(
            integrations.secret(integration).encode(),
            f"{client_uuid}|{int(account_id)}".encode(),
            hashlib.sha256,
        ).hexdigest()
        # Bytes, not str: compare_digest raises TypeError on a non-ASCII str.
        if not hmac.compare_digest(
            expected.encode(), signature.lower().encode("utf-8", "surrogatepass")
        ):
            raise Unauthorized("bad signature", code="bad_signature")
        connections = self.connections(session)
        audit = AuditRepository(session)
        ours = [
            r
            for r in await connections.by_account(int(account_id))
            if r.integration_id == integration.id
        ]
        if not await HookSignatureRepository(session).claim(
            client_uuid=client_uuid, account_id=int(account_id), signature=signature
        ):
            targets: list[Connection | None] = [*ours] or [None]
            for row in targets:
                audit.record(
                    actor="amocrm",
                    action="uninstall.replayed",
                    success=False,
                    owner=row.owner if row else None,
                    connection_id=row.id if row else None,
                    message=f"refused an uninstall hook already acted on (account {account_id}); "
                    "nothing changed",
                    details={"client_id": client_uuid},
                )
            log.warning("refused a replayed uninstall hook for account %s", account_id)
            return Uninstalled(0, replayed=True)
        rows = [r for r in ours if r.status != "disconnected"]
        for row in rows:
            connections.disconnect_row(row)
            audit.record(
                actor="amocrm",
                action="uninstall",
                success=True,
                owner=row.owner,
                connection_id=row.id,
                message=f"amoCRM reported the integration disabled in {row.host}",
            )
            await self._disconnected(session, row, by="amocrm")
            await self.clients.forget(row.id)
        return Uninstalled(len(rows))


# An access token lives at most 5 years (amoCRM's long-lived tokens); ten leaves room for clock
# skew while keeping every expiry a datetime (and a database timestamp) can hold.
MAX_TOKEN_LIFETIME_SECONDS = 10 * 365 * 86400
MAX_BIGINT = 2**63 - 1


def _check_claims(claims: dict[str, Any], now: float) -> None:
    """Refuse claims :meth:`ConnectService.save_connection` could not store: an ``exp`` that
    overflows a datetime (1e18, 1e308, -1e12), an ``account_id`` that overflows BIGINT."""
    exp = claims.get("exp")
    # NaN and infinities fail the comparison too (never math.isfinite: a huge int overflows it).
    if (
        isinstance(exp, int | float)
        and not isinstance(exp, bool)
        and not 0 <= exp <= now + MAX_TOKEN_LIFETIME_SECONDS
    ):
        raise ServiceError(
            "the access token's exp claim is not a plausible expiry time: expected a Unix "
            "time between 1970 and ten years from now",
            code="invalid_token_claims",
        )
    account_id = claims.get("account_id")
    if (
        isinstance(account_id, int)
        and not isinstance(account_id, bool)
        and not 0 < account_id <= MAX_BIGINT
    ):
        raise ServiceError(
            "the access token's account_id claim is not a valid account id",
            code="invalid_token_claims",
        )


def _ascii_digits(value: str, max_length: int) -> bool:
    return 0 < len(value) <= max_length and value.isascii() and value.isdigit()


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _parse_body(body: bytes, content_type: str) -> dict[str, Any]:
    """The secrets webhook is documented as JSON; accept a form body too (its encoding is not
    documented beyond that)."""
    if not body.strip():
        raise ServiceError("empty body")
    if "json" in content_type or body.lstrip().startswith(b"{"):
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise ServiceError("body is not valid JSON") from None
        except RecursionError:  # "[[[[…" nested deeper than the parser's recursion limit
            raise ServiceError("body is not valid JSON: nested too deeply") from None
        if not isinstance(data, dict):
            raise ServiceError("body must be a JSON object")
        return data
    try:
        parsed = parse_qs(body.decode(), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise ServiceError("body is not valid UTF-8") from None
    return {k: v[0] for k, v in parsed.items()}
