"""What ``bench/leads.py`` needs of the sandbox and of the service it talks to (beside the sandbox
process and its account, in ``_support``): the sandbox's clock and request log, the service's
environment pointed at it, the leads posted, and the database read back.

(``bench/run.py`` skips modules whose name starts with ``_``.)
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import httpx

from _support import Account

RATE = 7
OWNER = "bench-owner"


def sandbox_clock(sandbox: str) -> float:
    return float(httpx.get(f"{sandbox}/_sandbox/clock", timeout=10).json()["now"])


def sandbox_log(sandbox: str, account: Account, since: float) -> list[dict[str, Any]]:
    """The account's API requests that arrived at or after ``since`` (the sandbox's clock)."""
    reply = httpx.get(
        f"{sandbox}/_sandbox/requests",
        params={"account_id": account.id, "path_prefix": "/api/v4", "since": since},
        timeout=60,
    )
    reply.raise_for_status()
    return list(reply.json())


def pointed_at(env: dict[str, str], sandbox: str, account: Account) -> dict[str, str]:
    """The service's environment with every amoCRM call going to the sandbox."""
    return {
        **env,
        "AMOBRIDGE_AMO__API_BASE_URL": sandbox,
        "AMOBRIDGE_AMO__CLIENT_ID": account.client_id,
        "AMOBRIDGE_AMO__CLIENT_SECRET": "bench-client-secret-0123456789",
        "AMOBRIDGE_AMO__RATE_LIMIT_RPS": str(RATE),
        # The sandbox would deliver a webhook to the service for every lead pushed: the push
        # is measured, not the inbox (bench/webhooks.py measures that).
        "AMOBRIDGE_WEBHOOKS__AUTO_SUBSCRIBE": "false",
    }


def lead_body(prefix: str, n: int) -> dict[str, Any]:
    """A distinct lead with a distinct contact (e-mail and phone): the ``wrk`` script's body."""
    return {
        "owner": OWNER,
        "name": f"Заявка {prefix}-{n}",
        "price": 15000,
        "external_id": f"{prefix}-{n}",
        "contact": {
            "name": f"Клиент {n}",
            "email": f"c{n}.{prefix}@bench.example",
            "phone": f"+7 9{n % 1_000_000_000:09d}",
        },
    }


async def post_leads(
    base: str, key: str, prefix: str, count: int, *, concurrency: int = 16
) -> tuple[int, int]:
    """POST ``count`` leads, ``concurrency`` at a time; (answered 201, answered otherwise)."""
    created = other = 0
    numbers = iter(range(count))
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base, timeout=60, headers=headers) as client:

        async def one_by_one() -> None:
            nonlocal created, other
            for n in numbers:
                reply = await client.post("/leads", json=lead_body(prefix, n))
                if reply.status_code == 201:
                    created += 1
                else:
                    other += 1

        await asyncio.gather(*(one_by_one() for _ in range(concurrency)))
    return created, other


async def lead_counts(url: str) -> dict[str, Any]:
    """Leads by ``sync_state``, contacts stored, and the first and last ``synced_at``."""
    from sqlalchemy import func, select

    from amobridge.storage.db import Database
    from amobridge.storage.tables import Contact, Lead

    database = Database(url)
    try:
        async with database.read() as session:
            states = dict(
                (
                    await session.execute(
                        select(Lead.sync_state, func.count()).group_by(Lead.sync_state)
                    )
                ).all()
            )
            contacts = await session.scalar(select(func.count()).select_from(Contact))
            first, last = (
                await session.execute(select(func.min(Lead.synced_at), func.max(Lead.synced_at)))
            ).one()
    finally:
        await database.dispose()
    return {
        "states": {str(k): int(v) for k, v in states.items()},
        "leads": sum(int(v) for v in states.values()),
        "contacts": int(contacts or 0),
        "first_synced": _epoch(first),
        "last_synced": _epoch(last),
    }


def _epoch(value: datetime | None) -> float | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite gives naive UTC back
        from datetime import UTC

        value = value.replace(tzinfo=UTC)
    return value.timestamp()
