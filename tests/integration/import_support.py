"""What the import and catch-up tests share: an account filled through the sandbox's control API
(250 entities a call, never one API call each), a worker that runs only the pulls, and a look
at the mirror and at the pages the sandbox served."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import httpx
from leads_support import OWNER
from sqlalchemy import select

from amobridge.jobs import JobHandlers, JobWorker
from amobridge.storage.tables import Contact, Import, Lead, LeadContact

LATER = timedelta(days=1)


async def seed(stack: Any, kind: str, count: int, make: Any = None, *, start: int = 0) -> list[int]:
    """``count`` leads or contacts made in the sandbox (``make(i)`` → one item's fields)."""
    made: list[int] = []
    account_id = stack.account["id"]
    for first in range(start, start + count, 250):
        items = [
            make(i) if make else {"name": f"{kind} {i}"}
            for i in range(first, min(start + count, first + 250))
        ]
        reply = await stack.control.post(f"/_sandbox/accounts/{account_id}/{kind}", json=items)
        assert reply.status_code == 201, reply.text
        made += [item["id"] for item in reply.json()]
    return made


async def freeze_sandbox_clock(stack: Any) -> None:
    """Everything made from now on has one created_at and updated_at (amoCRM's seconds)."""
    reply = await stack.control.post("/_sandbox/clock", json={"freeze": True})
    assert reply.status_code == 200, reply.text


async def start_import(stack: Any, owner: str = OWNER) -> httpx.Response:
    return await stack.http.post("/imports", json={"owner": owner}, headers=stack.app_headers())


async def get_import(stack: Any, import_id: str, owner: str = OWNER) -> httpx.Response:
    return await stack.http.get(
        f"/imports/{import_id}", params={"owner": owner}, headers=stack.app_headers()
    )


def pull_worker(stack: Any, *, ahead: timedelta | None = None) -> JobWorker:
    """A worker that runs only imports and catch-ups (the pushes stay queued)."""
    services = stack.services
    handlers = JobHandlers()
    services.import_tasks.register(handlers)
    clock = (lambda: datetime.now(UTC) + ahead) if ahead else None
    return JobWorker(
        services.db,
        services.jobs,
        handlers,
        services.settings.jobs,
        clients=services.clients,
        services=services,
        clock=clock,
    )


async def run_pulls(stack: Any, *, ahead: timedelta | None = None) -> int:
    worker = pull_worker(stack, ahead=ahead)
    total = 0
    for _ in range(100):
        await worker.tasks.upkeep()
        claimed = await worker.run_once()
        if not claimed:
            return total
        total += len(claimed)
    raise AssertionError("pulls still due after 100 batches")


async def mirror_leads(stack: Any, owner: str = OWNER) -> list[Lead]:
    async with stack.services.db.read() as session:
        return list(await session.scalars(select(Lead).where(Lead.owner == owner)))


async def mirror_contacts(stack: Any, owner: str = OWNER) -> list[Contact]:
    async with stack.services.db.read() as session:
        return list(await session.scalars(select(Contact).where(Contact.owner == owner)))


async def mirror_links(stack: Any) -> list[LeadContact]:
    async with stack.services.db.read() as session:
        return list(await session.scalars(select(LeadContact)))


async def imports_of(stack: Any, kind: str) -> list[Import]:
    async with stack.services.db.read() as session:
        return list(
            await session.scalars(
                select(Import).where(Import.kind == kind).order_by(Import.created_at)
            )
        )


async def list_requests(stack: Any, path: str) -> list[dict[str, str]]:
    """The query of every GET the sandbox served on ``path`` (faults included), in order."""
    found = await stack.control.get(
        "/_sandbox/requests", params={"path_prefix": path, "method": "GET"}
    )
    assert found.status_code == 200, found.text
    return [
        {k: v[0] for k, v in parse_qs(r["query"]).items()} | {"status": str(r["status"])}
        for r in found.json()
        if r["path"] == path
    ]
