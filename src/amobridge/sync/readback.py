"""amoCRM's ``updated_at`` of the leads a push just created, read back after the creates.

``POST /api/v4/leads/complex`` answers with ids only, and the mirror wants amoCRM's own time of
each new lead (``amo_updated_at``: an older webhook or catch-up page must not overwrite it). Read
right after each create request, that was one request per 50 leads — as many as the creates
themselves, half of the connection's 7 per second. Instead each create request queues one
``sync.lead.readback`` job (in the unit that stores the ids); the handler takes
``READBACK_BATCH`` (2) of them, so one ``GET /api/v4/leads?filter[id]=…`` reads up to 100 leads.
A job's turn comes after those its connection had queued, so a backlog of creates goes out before
the reads its requests queued.

Until its read-back a new lead is ``synced`` with no ``amo_updated_at``, as when the read fails:
then any webhook about it applies (it is not stale against nothing). A time already there — from
a webhook that came in first — is only ever replaced by a newer one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime

from amobridge.jobs import Job, JobContext
from amobridge.storage.db import Database
from amobridge.sync.repository import LeadRepository

log = logging.getLogger("amobridge.sync")


def _lead_ids(job: Job) -> list[str]:
    return [str(value) for value in job.payload.get("lead_ids") or []]


class LeadReadback:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def run(self, context: JobContext, jobs: Sequence[Job]) -> None:
        wanted = list(dict.fromkeys(lead_id for job in jobs for lead_id in _lead_ids(job)))
        async with self.db.read() as session:
            rows = await LeadRepository(session).by_ids(wanted)
        amo_ids = sorted({row.amo_id for row in rows.values() if row.amo_id and not row.deleted})
        times: dict[int, datetime] = {}
        if amo_ids and jobs[0].connection_id is not None:
            client = await context.client(jobs[0].connection_id)
            page = await client.leads.list(ids=amo_ids, limit=len(amo_ids))
            times = {
                lead.id: datetime.fromtimestamp(lead.updated_at, UTC)
                for lead in page.items
                if lead.updated_at
            }
        if times:
            async with self.db.transaction() as session:
                fresh = await LeadRepository(session).by_ids(wanted, for_update=True)
                for row in fresh.values():
                    found = times.get(row.amo_id) if row.amo_id is not None else None
                    if found is not None and (
                        row.amo_updated_at is None or found > row.amo_updated_at
                    ):
                        row.amo_updated_at = found
        for job in jobs:
            context.succeed(job, {"read": len(times)})
