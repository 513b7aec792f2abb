"""``POST /leads`` in groups: requests that arrive together are written in one unit of work, and
each is still answered as if it had been alone — a retried key replayed, an ``external_id`` taken
once, a shared new contact made once, one failing lead failing only its own request (SQLite,
PostgreSQL)."""

from __future__ import annotations

import asyncio
from typing import Any

from leads_support import OWNER, connected
from sqlalchemy import func, select

from amobridge.storage.tables import Contact, Job, Lead
from amobridge.sync import kinds
from amobridge.sync.intake import LeadIntake


async def _post(stack: Any, body: dict[str, Any], key: str | None = None) -> Any:
    headers = dict(stack.app_headers())
    if key is not None:
        headers["Idempotency-Key"] = key
    return await stack.http.post("/leads", json={"owner": OWNER, **body}, headers=headers)


async def _count(stack: Any, model: Any, *where: Any) -> int:
    async with stack.services.db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(model).where(*where)))


async def test_requests_arriving_together_are_answered_as_if_alone(stack: Any) -> None:
    await connected(stack)
    units: list[int] = []
    intake = stack.services.sync.intake
    write = intake._write

    async def counted(items: list[Any]) -> list[Any]:
        units.append(len(items))
        return await write(items)

    intake.batch._write = counted
    bodies: list[tuple[dict[str, Any], str | None]] = []
    for n in range(30):  # 30 distinct leads, every third sharing the previous one's contact
        email = f"client{n - n % 3}@example.ru"
        bodies.append(({"name": f"Lead {n}", "contact": {"name": "C", "email": email}}, None))
    same = {"name": "Keyed", "contact": {"email": "keyed@example.ru"}}
    bodies += [(same, "key-1"), (same, "key-1")]  # a retry arriving with its first try
    external = {"name": "External", "external_id": "crm-7"}
    bodies += [(external, None), (external, None)]
    answers = await asyncio.gather(*(_post(stack, body, key) for body, key in bodies))

    assert max(units) > 1, units  # they were written together
    assert sum(units) == len(bodies)
    statuses = [a.status_code for a in answers]
    assert statuses[:31] == [201] * 31, [a.text for a in answers if a.status_code >= 300]
    assert answers[31].status_code == 201
    assert answers[31].json() == answers[30].json()  # the retry got the first answer
    replays = [a.headers.get("idempotent-replayed") for a in answers[30:32]]
    assert sorted(replays, key=str) == [None, "true"], (
        replays,
        answers[30].headers,
        answers[31].headers,
    )
    assert sorted(statuses[32:]) == [200, 201]
    assert answers[32].json()["id"] == answers[33].json()["id"]

    assert await _count(stack, Lead) == 32  # 30 + one keyed + one external
    assert await _count(stack, Contact) == 10 + 1  # the shared ones made once
    assert await _count(stack, Job, Job.kind == kinds.LEAD_CREATE) == 32
    shared = [a.json()["contact"]["id"] for a in answers[:3]]
    assert len(set(shared)) == 1


async def test_a_failing_lead_fails_only_its_own_request(stack: Any, monkeypatch: Any) -> None:
    await connected(stack)
    one = LeadIntake._one

    def failing(self: LeadIntake, unit: Any, item: Any) -> Any:
        if item.body.name == "Broken":
            raise RuntimeError("this lead cannot be written")
        return one(self, unit, item)

    monkeypatch.setattr(LeadIntake, "_one", failing)
    names = ["A", "Broken", "B", "C"]
    answers = await asyncio.gather(
        *(_post(stack, {"name": name}) for name in names), return_exceptions=True
    )
    # The test client re-raises what the app did not handle (a server answers 500 with it).
    assert isinstance(answers[1], RuntimeError)
    assert [a.status_code for a in (answers[0], answers[2], answers[3])] == [201, 201, 201]
    async with stack.services.db.read() as session:
        stored = sorted((await session.scalars(select(Lead.name))).all())
    assert stored == ["A", "B", "C"]
