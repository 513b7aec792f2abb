"""All SQL about connections, integrations and the audit log. Repositories never commit: the
caller's transaction (``Database.transaction()``) does.

Owner isolation (invariant 6): every read an owner can trigger goes through ``*_for_owner``
methods that filter by owner; the id-based methods are for workers and admins only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from amobridge.storage.crypto import Keyring
from amobridge.storage.tables import AuditEntry, Connection, Integration

REFRESH_LIFETIME = timedelta(days=90)


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Tokens:
    """Plaintext tokens, only ever held in memory."""

    access_token: str
    refresh_token: str | None
    expires_at: datetime | None
    long_lived: bool = False


class IntegrationRepository:
    def __init__(self, keyring: Keyring) -> None:
        self._keyring = keyring

    async def upsert(
        self,
        session: AsyncSession,
        *,
        client_id: str,
        client_secret: str,
        redirect_uri: str,
        source: str,
        name: str | None = None,
    ) -> Integration:
        found = await session.scalar(select(Integration).where(Integration.client_id == client_id))
        if found is None:
            found = Integration(client_id=client_id, source=source, name=name)
            session.add(found)
        found.client_secret_enc = self._keyring.encrypt(client_secret)
        found.redirect_uri = redirect_uri
        if name is not None:
            found.name = name
        await session.flush()
        return found

    async def get(self, session: AsyncSession, integration_id: str) -> Integration | None:
        return await session.get(Integration, integration_id)

    def secret(self, integration: Integration) -> str:
        return self._keyring.decrypt(integration.client_secret_enc)


class ConnectionRepository:
    def __init__(self, keyring: Keyring) -> None:
        self._keyring = keyring

    # --- owner-scoped ------------------------------------------------------------------------
    async def for_owner(self, session: AsyncSession, owner: str) -> Connection | None:
        return await session.scalar(select(Connection).where(Connection.owner == owner))

    async def connect(
        self,
        session: AsyncSession,
        *,
        owner: str,
        integration_id: str | None,
        host: str,
        account_id: int | None,
        tokens: Tokens,
    ) -> Connection:
        """Store a new grant for ``owner`` (a re-connect replaces the old one)."""
        row = await self.for_owner(session, owner)
        if row is None:
            row = Connection(owner=owner, host=host)
            session.add(row)
        row.integration_id = integration_id
        row.host = host
        row.account_id = account_id
        row.status = "active"
        row.last_error = None
        row.refresh_lease_until = None
        row.refresh_lease_holder = None
        self._write_tokens(row, tokens)
        row.last_refresh_at = now()
        await session.flush()
        return row

    async def disconnect(self, session: AsyncSession, owner: str) -> Connection | None:
        row = await self.for_owner(session, owner)
        if row is None:
            return None
        self._mark_disconnected(row)
        return row

    # --- by id: workers, admins, amoCRM's hooks -------------------------------------------------
    async def get(self, session: AsyncSession, connection_id: str) -> Connection | None:
        return await session.get(Connection, connection_id)

    async def by_account(self, session: AsyncSession, account_id: int) -> list[Connection]:
        rows = await session.scalars(select(Connection).where(Connection.account_id == account_id))
        return list(rows)

    async def all(self, session: AsyncSession) -> list[Connection]:
        return list(await session.scalars(select(Connection).order_by(Connection.created_at)))

    def disconnect_row(self, row: Connection) -> None:
        self._mark_disconnected(row)

    def tokens(self, row: Connection) -> Tokens | None:
        if row.access_token_enc is None:
            return None
        return Tokens(
            access_token=self._keyring.decrypt(row.access_token_enc),
            refresh_token=(
                self._keyring.decrypt(row.refresh_token_enc) if row.refresh_token_enc else None
            ),
            expires_at=row.expires_at,
            long_lived=row.long_lived,
        )

    async def save_tokens(self, session: AsyncSession, connection_id: str, tokens: Tokens) -> None:
        row = await session.get(Connection, connection_id, with_for_update=True)
        if row is None:
            raise LookupError(f"connection {connection_id} no longer exists")
        self._write_tokens(row, tokens)
        row.last_refresh_at = now()
        row.last_error = None
        if row.status == "reauth_required":
            row.status = "active"

    async def mark_reauth_required(
        self, session: AsyncSession, connection_id: str, error: str
    ) -> Connection | None:
        row = await session.get(Connection, connection_id)
        if row is None:
            return None
        row.status = "reauth_required"
        row.last_error = error
        return row

    async def record_error(self, session: AsyncSession, connection_id: str, error: str) -> None:
        await session.execute(
            update(Connection).where(Connection.id == connection_id).values(last_error=error)
        )

    async def touch(self, session: AsyncSession, connection_id: str) -> None:
        await session.execute(
            update(Connection).where(Connection.id == connection_id).values(last_used_at=now())
        )

    # --- the cross-process refresh lease -------------------------------------------------------
    async def try_lease(
        self, session: AsyncSession, connection_id: str, holder: str, seconds: float
    ) -> bool:
        """Take the refresh lease if nobody holds a live one (one conditional UPDATE)."""
        moment = now()
        result = await session.execute(
            update(Connection)
            .where(
                Connection.id == connection_id,
                (Connection.refresh_lease_until.is_(None))
                | (Connection.refresh_lease_until < moment),
            )
            .values(
                refresh_lease_until=moment + timedelta(seconds=seconds),
                refresh_lease_holder=holder,
            )
        )
        return bool(getattr(result, "rowcount", 0))

    async def release_lease(self, session: AsyncSession, connection_id: str, holder: str) -> None:
        await session.execute(
            update(Connection)
            .where(Connection.id == connection_id, Connection.refresh_lease_holder == holder)
            .values(refresh_lease_until=None, refresh_lease_holder=None)
        )

    async def due_for_keepalive(
        self, session: AsyncSession, *, idle_before: datetime, limit: int = 100
    ) -> list[Connection]:
        rows = await session.scalars(
            select(Connection)
            .where(
                Connection.status == "active",
                Connection.long_lived.is_(False),
                Connection.refresh_token_enc.is_not(None),
                Connection.last_refresh_at < idle_before,
            )
            .limit(limit)
        )
        return list(rows)

    # --- internals ----------------------------------------------------------------------------
    def _write_tokens(self, row: Connection, tokens: Tokens) -> None:
        row.access_token_enc = self._keyring.encrypt(tokens.access_token)
        row.refresh_token_enc = (
            self._keyring.encrypt(tokens.refresh_token) if tokens.refresh_token else None
        )
        row.expires_at = tokens.expires_at
        row.long_lived = tokens.long_lived
        row.refresh_expires_at = None if tokens.long_lived else now() + REFRESH_LIFETIME
        row.token_version = (row.token_version or 0) + 1

    def _mark_disconnected(self, row: Connection) -> None:
        row.status = "disconnected"
        row.access_token_enc = None
        row.refresh_token_enc = None
        row.expires_at = None
        row.refresh_expires_at = None
        row.refresh_lease_until = None
        row.refresh_lease_holder = None


class AuditLog:
    async def record(
        self,
        session: AsyncSession,
        *,
        actor: str,
        action: str,
        success: bool,
        owner: str | None = None,
        connection_id: str | None = None,
        message: str | None = None,
        error: str | None = None,
        lead_id: int | None = None,
        stage_id: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        session.add(
            AuditEntry(
                at=now(),
                actor=actor,
                action=action,
                success=success,
                owner=owner,
                connection_id=connection_id,
                message=message,
                error=error,
                lead_id=lead_id,
                stage_id=stage_id,
                details=details,
            )
        )

    async def tail(
        self,
        session: AsyncSession,
        *,
        owner: str | None = None,
        action: str | None = None,
        success: bool | None = None,
        limit: int = 100,
    ) -> list[AuditEntry]:
        query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
        if owner is not None:
            query = query.where(AuditEntry.owner == owner)
        if action is not None:
            query = query.where(AuditEntry.action == action)
        if success is not None:
            query = query.where(AuditEntry.success.is_(success))
        return list(await session.scalars(query))
