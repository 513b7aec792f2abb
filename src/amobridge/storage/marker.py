"""SQL of the ``storage_marker`` row: the database's identity and its write probe."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update

from amobridge.storage.repository import Repository
from amobridge.storage.tables import StorageMarker, utcnow


class StorageMarkerRepository(Repository[StorageMarker]):
    model = StorageMarker

    async def current(self) -> StorageMarker | None:
        return await self.get(1)

    async def create(self, instance_id: str) -> None:
        """Insert the marker row unless another process did first."""
        insert: Any = self.insert()  # the dialect's Insert: both know on_conflict_do_nothing
        statement = insert.values(
            id=1, instance_id=instance_id, created_at=utcnow()
        ).on_conflict_do_nothing(index_elements=["id"])
        await self.session.execute(statement)

    async def touch(self) -> bool:
        """Rewrite ``probed_at``: a small write. ``False`` when there is no marker row."""
        done = await self.session.execute(
            update(StorageMarker).where(StorageMarker.id == 1).values(probed_at=utcnow())
        )
        return bool(getattr(done, "rowcount", 1))
