"""All SQL about connections and integrations. Repositories are built per unit of work around the
caller's session and never commit (see :mod:`amobridge.storage.repository`).

Owner isolation (invariant 6): every read an owner can trigger goes through ``for_owner``; the
id-based methods are for workers, admins and amoCRM's hooks.

Three rules keep a grant alive across processes:
- a disconnected row is final until the owner connects again: nothing but :meth:`connect` writes
  tokens into it, and a dead-grant report never turns it into ``reauth_required``;
- a refreshed pair is saved only by the holder of the row's refresh lease, only while that lease
  is live by the database's clock, and only if ``token_version`` is still the one the holder read
  (:meth:`save_refreshed`): a holder that outlived its lease loses, its late pair never overwrites
  a newer one;
- lease times come from the database's clock on PostgreSQL (one clock for every host).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import delete, inspect, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from amobridge.connect.listing import LISTED_COLUMNS
from amobridge.storage.crypto import Keyring
from amobridge.storage.repository import Repository
from amobridge.storage.tables import (
    Connection,
    Integration,
    UsedHookSignature,
)

REFRESH_LIFETIME = timedelta(days=90)


@dataclass(frozen=True)
class Tokens:
    """Plaintext tokens, only ever held in memory."""

    access_token: str
    refresh_token: str | None
    expires_at: datetime | None
    long_lived: bool = False
    issued_at: datetime | None = None


@dataclass(frozen=True)
class Pulse:
    """What every process checks before it uses a cached client: cheap, one primary-key read."""

    status: str
    token_version: int
    integration_id: str | None


@dataclass(frozen=True)
class StatusRow:
    """What ``GET /amocrm/status`` shows of a connection: no token, not even its ciphertext."""

    id: str
    status: str
    host: str
    account_id: int | None
    has_tokens: bool
    long_lived: bool
    expires_at: datetime | None
    last_refresh_at: datetime | None
    last_error: str | None


class SaveRefused(StrEnum):
    gone = "the connection no longer exists"
    disconnected = "the connection was disconnected"
    lease_lost = "the refresh lease expired or passed to another process"
    superseded = "a newer token pair was stored meanwhile"


def decrypt_tokens(keyring: Keyring, row: Connection) -> Tokens | None:
    """The row's pair in plaintext (in memory only), or None when it holds none."""
    if row.access_token_enc is None:
        return None
    return Tokens(
        access_token=keyring.decrypt(row.access_token_enc),
        refresh_token=keyring.decrypt(row.refresh_token_enc) if row.refresh_token_enc else None,
        expires_at=row.expires_at,
        long_lived=row.long_lived,
        issued_at=row.issued_at,
    )


class IntegrationRepository(Repository[Integration]):
    model = Integration

    def __init__(self, session: AsyncSession, keyring: Keyring) -> None:
        super().__init__(session)
        self._keyring = keyring

    async def upsert(
        self,
        *,
        client_id: str,
        client_secret: str,
        redirect_uri: str,
        source: str,
        name: str | None = None,
    ) -> Integration:
        found = await self.by_client_id(client_id)
        if found is None:
            found = self.add(Integration(client_id=client_id, source=source, name=name))
        found.client_secret_enc = self._keyring.encrypt(client_secret)
        found.redirect_uri = redirect_uri
        if name is not None:
            found.name = name
        await self.flush()
        return found

    async def by_client_id(self, client_id: str) -> Integration | None:
        return await self.session.scalar(
            select(Integration).where(Integration.client_id == client_id)
        )

    def secret(self, integration: Integration) -> str:
        return self._keyring.decrypt(integration.client_secret_enc)


class ConnectionRepository(Repository[Connection]):
    model = Connection

    def __init__(self, session: AsyncSession, keyring: Keyring) -> None:
        super().__init__(session)
        self._keyring = keyring

    # --- owner-scoped ------------------------------------------------------------------------
    async def for_owner(self, owner: str) -> Connection | None:
        return await self.session.scalar(select(Connection).where(Connection.owner == owner))

    async def status_of(self, owner: str) -> StatusRow | None:
        """The status columns only: a status read loads no row object and no ciphertext."""
        row = (
            await self.session.execute(
                select(
                    Connection.id,
                    Connection.status,
                    Connection.host,
                    Connection.account_id,
                    Connection.access_token_enc.is_not(None),
                    Connection.long_lived,
                    Connection.expires_at,
                    Connection.last_refresh_at,
                    Connection.last_error,
                ).where(Connection.owner == owner)
            )
        ).first()
        if row is None:
            return None
        id_, status, host, account_id, has_tokens, long_lived, expires, refreshed, error = row
        return StatusRow(
            id_,
            status,
            host,
            account_id,
            bool(has_tokens),
            bool(long_lived),
            expires,
            refreshed,
            error,
        )

    async def connect(
        self,
        *,
        owner: str,
        integration_id: str | None,
        host: str,
        account_id: int | None,
        tokens: Tokens,
    ) -> Connection:
        """Store a new grant for ``owner`` (a re-connect replaces the old one)."""
        row = await self.for_owner(owner)
        if row is None:
            row = self.add(Connection(owner=owner, host=host))
        row.integration_id = integration_id
        row.host = host
        row.account_id = account_id
        row.status = "active"
        row.last_error = None
        row.refresh_lease_until = None
        row.refresh_lease_holder = None
        self._write_tokens(row, tokens, now=await self.db_now())
        await self.flush()
        return row

    async def disconnect(self, owner: str) -> Connection | None:
        row = await self.for_owner(owner)
        if row is None:
            return None
        self.disconnect_row(row)
        return row

    # --- by id: workers, admins, amoCRM's hooks -------------------------------------------------
    async def by_account(self, account_id: int) -> list[Connection]:
        rows = await self.session.scalars(
            select(Connection).where(Connection.account_id == account_id)
        )
        return list(rows)

    async def all(self) -> list[Connection]:
        return list(await self.session.scalars(select(Connection).order_by(Connection.created_at)))

    async def pulse(self, connection_id: str) -> Pulse | None:
        row = (
            await self.session.execute(
                select(
                    Connection.status, Connection.token_version, Connection.integration_id
                ).where(Connection.id == connection_id)
            )
        ).first()
        if row is None:
            return None
        return Pulse(row[0], int(row[1] or 0), row[2])

    def disconnect_row(self, row: Connection) -> None:
        row.status = "disconnected"
        row.access_token_enc = None
        row.refresh_token_enc = None
        row.expires_at = None
        row.issued_at = None
        row.refresh_expires_at = None
        row.refresh_lease_until = None
        row.refresh_lease_holder = None
        row.token_version = (row.token_version or 0) + 1

    def tokens(self, row: Connection) -> Tokens | None:
        return decrypt_tokens(self._keyring, row)

    async def save_refreshed(
        self,
        connection_id: str,
        tokens: Tokens,
        *,
        holder: str,
        base_version: int,
        host: str | None = None,
    ) -> int | SaveRefused:
        """Store a refreshed pair: one conditional UPDATE, the new ``token_version`` or why not."""
        now = await self.db_now()
        values: dict[str, object] = self._token_values(tokens, now=now)
        values.update(
            token_version=base_version + 1,
            last_refresh_at=now,
            last_error=None,
            status="active",
        )
        if host:
            values["host"] = host
        result = await self.session.execute(
            update(Connection)
            .where(
                Connection.id == connection_id,
                Connection.status != "disconnected",
                Connection.refresh_lease_holder == holder,
                Connection.refresh_lease_until > now,
                Connection.token_version == base_version,
            )
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if getattr(result, "rowcount", 0):
            return base_version + 1
        return await self._why_refused(connection_id, holder=holder, base_version=base_version)

    async def _why_refused(
        self, connection_id: str, *, holder: str, base_version: int
    ) -> SaveRefused:
        row = (
            await self.session.execute(
                select(
                    Connection.status,
                    Connection.token_version,
                    Connection.refresh_lease_holder,
                ).where(Connection.id == connection_id)
            )
        ).first()
        if row is None:
            return SaveRefused.gone
        if row[0] == "disconnected":
            return SaveRefused.disconnected
        if int(row[1] or 0) != base_version:
            return SaveRefused.superseded
        return SaveRefused.lease_lost

    async def mark_reauth_required(
        self, connection_id: str, error: str, *, seen_version: int | None = None
    ) -> bool:
        """Flag a dead grant — only on an active row, and only the grant that was seen dying: a
        disconnected row stays disconnected, a grant replaced meanwhile is not blamed, and a grant
        already flagged is not flagged (audited, notified) twice. True when this call flagged it."""
        query = update(Connection).where(
            Connection.id == connection_id, Connection.status == "active"
        )
        if seen_version is not None:
            query = query.where(Connection.token_version == seen_version)
        result = await self.session.execute(
            query.values(status="reauth_required", last_error=error).execution_options(
                synchronize_session=False
            )
        )
        return bool(getattr(result, "rowcount", 0))

    async def record_error(self, connection_id: str, error: str) -> None:
        await self.session.execute(
            update(Connection)
            .where(Connection.id == connection_id)
            .values(last_error=error[:2000])
            .execution_options(synchronize_session=False)
        )

    async def touch(self, connection_id: str) -> None:
        await self.session.execute(
            update(Connection)
            .where(Connection.id == connection_id)
            .values(last_used_at=await self.db_now())
            .execution_options(synchronize_session=False)
        )

    # --- the cross-process refresh lease -------------------------------------------------------
    async def try_lease(self, connection_id: str, holder: str, seconds: float) -> int | None:
        """Take the refresh lease if nobody holds a live one (one conditional UPDATE, the
        database's clock). Returns the ``token_version`` the holder starts from, or None."""
        moment = await self.db_now()
        result = await self.session.execute(
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
            .returning(Connection.token_version)
            .execution_options(synchronize_session=False)
        )
        version = result.scalar_one_or_none()
        return None if version is None else int(version)

    async def release_lease(self, connection_id: str, holder: str) -> None:
        await self.session.execute(
            update(Connection)
            .where(Connection.id == connection_id, Connection.refresh_lease_holder == holder)
            .values(refresh_lease_until=None, refresh_lease_holder=None)
            .execution_options(synchronize_session=False)
        )

    async def due_for_keepalive(self, *, idle_before: datetime, limit: int = 100) -> list[str]:
        rows = await self.session.scalars(
            select(Connection.id)
            .where(
                Connection.status == "active",
                Connection.long_lived.is_(False),
                Connection.refresh_token_enc.is_not(None),
                Connection.last_refresh_at < idle_before,
            )
            .order_by(Connection.last_refresh_at)
            .limit(limit)
        )
        return list(rows)

    # --- internals ----------------------------------------------------------------------------
    def _token_values(self, tokens: Tokens, *, now: datetime) -> dict[str, object]:
        return {
            "access_token_enc": self._keyring.encrypt(tokens.access_token),
            "refresh_token_enc": (
                self._keyring.encrypt(tokens.refresh_token) if tokens.refresh_token else None
            ),
            "expires_at": tokens.expires_at,
            "issued_at": tokens.issued_at or now,
            "long_lived": tokens.long_lived,
            "refresh_expires_at": None if tokens.long_lived else now + REFRESH_LIFETIME,
        }

    def _write_tokens(self, row: Connection, tokens: Tokens, *, now: datetime) -> None:
        # A new grant (connect): any lease on the old one is void. A refresh keeps its lease
        # until the holder's lock block ends (save_refreshed leaves it in place).
        for name, value in self._token_values(tokens, now=now).items():
            setattr(row, name, value)
        row.refresh_lease_until = None
        row.refresh_lease_holder = None
        row.last_refresh_at = now
        row.token_version = (row.token_version or 0) + 1


class ConnectionListRepository(Repository[Connection]):
    """Every connection's status columns for ``amobridge connections list``: the read
    :func:`amobridge.connect.listing.list_sqlite` makes of a SQLite file with ``sqlite3``, for any
    database. No keyring: it reads no secret, not even a ciphertext."""

    model = Connection

    async def migrated(self) -> bool:
        """Whether the database has the connections table at all (never migrated: no)."""
        connection = await self.session.connection()
        return await connection.run_sync(
            lambda sync: inspect(sync).has_table(Connection.__tablename__)
        )

    async def rows(self) -> list[tuple[Any, ...]]:
        """:data:`~amobridge.connect.listing.LISTED_COLUMNS`, then whether the row holds tokens;
        oldest connection first."""
        columns = [getattr(Connection, name) for name in LISTED_COLUMNS]
        result = await self.session.execute(
            select(*columns, Connection.access_token_enc.is_not(None)).order_by(
                Connection.created_at
            )
        )
        return [tuple(row) for row in result.all()]


class HookSignatureRepository(Repository[UsedHookSignature]):
    """Signed uninstall hooks already acted on: amoCRM's hook has no timestamp, so the same
    signed URL arriving again is refused rather than disconnecting a re-connected account."""

    model = UsedHookSignature

    @staticmethod
    def digest(*, client_uuid: str, account_id: int, signature: str) -> str:
        # Length-prefixed parts: no two different triples share a digest.
        parts = (client_uuid, str(account_id), signature.lower())
        joined = "".join(f"{len(part)}:{part}" for part in parts)
        return hashlib.sha256(joined.encode("utf-8", "surrogatepass")).hexdigest()

    async def claim(self, *, client_uuid: str, account_id: int, signature: str) -> bool:
        """Record the hook as used: one ``INSERT … ON CONFLICT DO NOTHING``. False when it was
        already recorded (a replay); two concurrent deliveries cannot both get True."""
        insert: Any = self.insert()  # the dialect's Insert: both know on_conflict_do_nothing
        result = await self.session.execute(
            insert.values(
                id=self.digest(client_uuid=client_uuid, account_id=account_id, signature=signature),
                client_uuid=client_uuid,
                account_id=account_id,
                used_at=await self.db_now(),
            )
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(UsedHookSignature.id)
        )
        return result.scalar_one_or_none() is not None

    async def forget(self, *, client_uuid: str, account_id: int) -> None:
        """The account connected the integration again: its next uninstall is a real one."""
        await self.session.execute(
            delete(UsedHookSignature)
            .where(
                UsedHookSignature.client_uuid == client_uuid,
                UsedHookSignature.account_id == account_id,
            )
            .execution_options(synchronize_session=False)
        )
