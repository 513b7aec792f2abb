"""All SQL of the audit log."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from amobridge.storage.repository import Repository
from amobridge.storage.tables import AuditEntry, utcnow


def entry(
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
) -> AuditEntry:
    """An audit row, to add to a unit of work (:meth:`AuditRepository.record` adds one)."""
    return AuditEntry(
        at=utcnow(),
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


class AuditRepository(Repository[AuditEntry]):
    model = AuditEntry

    def record(
        self,
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
    ) -> AuditEntry:
        return self.add(
            entry(
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
        *,
        owner: str | None = None,
        action: str | None = None,
        success: bool | None = None,
        connection_id: str | None = None,
        limit: int = 100,
    ) -> list[AuditEntry]:
        query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
        if owner is not None:
            query = query.where(AuditEntry.owner == owner)
        if action is not None:
            query = query.where(AuditEntry.action == action)
        if success is not None:
            query = query.where(AuditEntry.success.is_(success))
        if connection_id is not None:
            query = query.where(AuditEntry.connection_id == connection_id)
        return list(await self.session.scalars(query))
