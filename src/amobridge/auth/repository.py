"""All SQL of API keys."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update

from amobridge.storage.repository import Repository
from amobridge.storage.tables import ApiKey


class ApiKeyRepository(Repository[ApiKey]):
    model = ApiKey

    async def by_hash(self, digest: str) -> ApiKey | None:
        return await self.session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))

    async def mark_used(self, key_id: str, when: datetime) -> None:
        await self.session.execute(
            update(ApiKey)
            .where(ApiKey.id == key_id)
            .values(last_used_at=when)
            .execution_options(synchronize_session=False)
        )
