"""The queue's upkeep, run by every worker every ``AMOBRIDGE_JOBS__RESUME_SECONDS`` in one
write unit (each step is an idempotent UPDATE, so several workers running it do no harm):

1. a running job whose lease ran out on its last attempt is failed (its worker died every time:
   a job that kills its worker must not loop for ever), and its kind's ``on_abandoned`` hook
   told in the same unit (a lead whose create job failed so is marked ``failed`` with it, not
   left ``pending`` with no job to push it);
2. paused jobs whose wait is over go back to pending: those of connections active again (the
   owner re-connected) and those paused until a time that has passed (a ban that ended);
3. pending jobs of connections that need re-authorization or were disconnected are paused
   (``reauth_required`` / ``disconnected``) — kept, never dropped — until step 2 resumes them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from amobridge.jobs.handlers import JobHandlers
from amobridge.jobs.repository import JobRepository
from amobridge.jobs.service import JobSignal, QueueClock
from amobridge.storage.db import Database
from amobridge.storage.tables import Job

log = logging.getLogger("amobridge.jobs")


@dataclass(frozen=True)
class UpkeepReport:
    abandoned: int
    resumed: int
    held: int


class JobTasks:
    def __init__(
        self,
        db: Database,
        *,
        signal: JobSignal | None = None,
        clock: QueueClock | None = None,
        handlers: JobHandlers | None = None,
    ) -> None:
        self._db = db
        self._handlers = handlers
        self._signal = signal
        self._clock = clock or QueueClock()

    async def upkeep(self) -> UpkeepReport:
        async with self._db.transaction() as session:
            jobs = JobRepository(session)
            now = await self._clock.now(jobs)
            failed = await jobs.fail_abandoned(now=now)
            await self._tell_abandoned(session, failed)
            abandoned = len(failed)
            resumed = await jobs.resume(now=now)
            held = await jobs.hold_inactive_connections(now=now)
            if resumed:
                await jobs.notify("resumed")
                if self._signal is not None:
                    jobs.on_commit(self._signal.notify)
        if abandoned:
            log.warning("%d jobs failed: their workers stopped on every attempt", abandoned)
        if resumed or held:
            log.info("jobs resumed: %d, paused with their connection: %d", resumed, held)
        return UpkeepReport(abandoned, resumed, held)

    async def _tell_abandoned(self, session: AsyncSession, failed: list[Job]) -> None:
        by_kind: dict[str, list[Job]] = {}
        for job in failed:
            by_kind.setdefault(job.kind, []).append(job)
        for kind, jobs in by_kind.items():
            spec = self._handlers.get(kind) if self._handlers is not None else None
            if spec is not None and spec.on_abandoned is not None:
                await spec.on_abandoned(session, jobs)
