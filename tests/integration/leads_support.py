"""What the lead API tests share: a connected owner, the worker run until the queue is idle, and
a look at what the sandbox's account holds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from amobridge.jobs import JobWorker

OWNER = "user-42"


async def connected(stack: Any, owner: str = OWNER) -> None:
    done = await stack.connect(owner)
    assert done.status_code == 200, done.text


async def drain(stack: Any, *, ahead: timedelta | None = None, rounds: int = 100) -> int:
    """Run the job worker in-process (its upkeep too: paused jobs of a re-connected connection
    resume) until nothing is due; the number of jobs run. ``ahead``: the worker's clock runs
    that far ahead, so retries and deferrals scheduled within it are due now."""
    services = stack.services
    clock = (lambda: datetime.now(UTC) + ahead) if ahead else None
    worker = JobWorker(
        services.db,
        services.jobs,
        services.job_handlers,
        services.settings.jobs,
        clients=services.clients,
        services=services,
        clock=clock,
    )
    total = 0
    for _ in range(rounds):
        await worker.tasks.upkeep()
        claimed = await worker.run_once()
        if not claimed:
            return total
        total += len(claimed)
    raise AssertionError(f"the queue still had due jobs after {rounds} batches")


def account(stack: Any) -> Any:
    return stack.sandbox.state.accounts[stack.account["id"]]


def live_leads(stack: Any) -> list[Any]:
    return [lead for lead in account(stack).leads.values() if not lead.is_deleted]


def live_contacts(stack: Any) -> list[Any]:
    return [c for c in account(stack).contacts.values() if not c.is_deleted]


async def post_lead(
    stack: Any, body: dict[str, Any], *, headers: dict[str, str] | None = None
) -> httpx.Response:
    return await stack.http.post(
        "/leads", json={"owner": OWNER, **body}, headers={**stack.app_headers(), **(headers or {})}
    )


async def get_lead(stack: Any, lead_id: str, owner: str = OWNER) -> httpx.Response:
    return await stack.http.get(
        f"/leads/{lead_id}", params={"owner": owner}, headers=stack.app_headers()
    )


async def requests_to(stack: Any, path_prefix: str, method: str = "POST") -> list[dict[str, Any]]:
    found = await stack.control.get(
        "/_sandbox/requests", params={"path_prefix": path_prefix, "method": method}
    )
    assert found.status_code == 200, found.text
    return list(found.json())


async def add_pipeline(stack: Any, name: str, stages: list[str]) -> dict[str, Any]:
    made = await stack.control.post(
        f"/_sandbox/accounts/{stack.account['id']}/pipelines",
        json={"name": name, "statuses": stages},
    )
    assert made.status_code == 201, made.text
    return dict(made.json())


def add_lead_field(stack: Any, name: str, kind: str, options: list[str] | None = None) -> Any:
    """A custom field on the account's leads, made as a manager would in amoCRM's settings."""
    from amobridge.sandbox.api.fields import CustomFieldIn, EnumIn, create_custom_field

    model = CustomFieldIn(
        name=name, type=kind, enums=[EnumIn(value=o) for o in options] if options else None
    )
    return create_custom_field(stack.sandbox, account(stack), "leads", model)
