"""The job routes and the ``amobridge jobs`` commands: owner-scoped lists (an app key names the
owner, a user's token sees its own jobs, an admin every owner's), pages, one job, retry and
cancel with the error shape of the whole API."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from _jobs import job_queue
from typer.testing import CliRunner

from amobridge.amo.errors import AmoValidationError
from amobridge.cli import app as cli
from amobridge.jobs import Job, JobContext
from amobridge.jobs.schemas import JobOut
from amobridge.storage.crypto import generate_key


async def enqueue(stack: Any, *owners: str | None, kind: str = "t.api") -> list[Job]:
    async with stack.services.db.transaction() as session:
        return [
            await stack.services.jobs.enqueue(session, kind=kind, payload={"n": n}, owner=owner)
            for n, owner in enumerate(owners)
        ]


async def fail_all(stack: Any) -> None:
    async def refuse(context: JobContext, batch: Sequence[Job]) -> None:
        raise AmoValidationError("amoCRM rejected the lead's data", status=400)

    if "t.api" not in stack.services.job_handlers:
        stack.services.job_handlers.register("t.api", refuse)
    worker = stack.services.new_job_worker()
    while await worker.run_once():
        pass


async def test_lists_are_scoped_to_the_caller(stack: Any) -> None:
    mine, theirs, system = await enqueue(stack, "user-1", "user-2", None)
    app_key = await stack.http.get("/jobs", params={"owner": "user-1"}, headers=stack.app_headers())
    assert app_key.status_code == 200, app_key.text
    assert [item["id"] for item in app_key.json()["items"]] == [mine.id]
    item = app_key.json()["items"][0]
    assert JobOut.model_validate(item).idempotency_key == mine.idempotency_key
    assert item["state"] == "pending"

    unnamed = await stack.http.get("/jobs", headers=stack.app_headers())
    assert unnamed.status_code == 400
    assert unnamed.json()["error"] == "owner_required"

    user = {"Authorization": f"Bearer {stack.user_token('user-2')}"}
    own = await stack.http.get("/jobs", headers=user)
    assert [i["id"] for i in own.json()["items"]] == [theirs.id]
    other = await stack.http.get("/jobs", params={"owner": "user-1"}, headers=user)
    assert other.status_code == 403
    assert other.json()["error"] == "owner_mismatch"

    admin = await stack.http.get("/jobs", headers=stack.admin_headers())
    assert {i["id"] for i in admin.json()["items"]} >= {mine.id, theirs.id, system.id}
    one_owner = await stack.http.get(
        "/jobs", params={"owner": "user-2"}, headers=stack.admin_headers()
    )
    assert [i["id"] for i in one_owner.json()["items"]] == [theirs.id]
    assert (await stack.http.get("/jobs")).status_code == 401


async def test_one_job_pages_and_bad_parameters(stack: Any) -> None:
    jobs = await enqueue(stack, "user-1", "user-1", "user-1", "user-2")
    headers = stack.app_headers()
    page = await stack.http.get("/jobs", params={"owner": "user-1", "limit": 2}, headers=headers)
    body = page.json()
    assert [i["id"] for i in body["items"]] == [jobs[2].id, jobs[1].id]
    rest = await stack.http.get(
        "/jobs", params={"owner": "user-1", "cursor": body["next_cursor"]}, headers=headers
    )
    assert [i["id"] for i in rest.json()["items"]] == [jobs[0].id]
    assert rest.json()["next_cursor"] is None

    found = await stack.http.get(f"/jobs/{jobs[0].id}", params={"owner": "user-1"}, headers=headers)
    assert found.status_code == 200
    assert found.json()["payload"] == {"n": 0}
    hidden = await stack.http.get(
        f"/jobs/{jobs[3].id}", params={"owner": "user-1"}, headers=headers
    )
    assert hidden.status_code == 404
    assert hidden.json()["error"] == "not_found"

    for params in ({"state": "sleeping"}, {"cursor": "abc"}, {"limit": 0}):
        bad = await stack.http.get("/jobs", params={"owner": "user-1", **params}, headers=headers)
        assert bad.status_code == 422, params
        assert bad.json()["error"] == "validation_error"


async def test_retry_and_cancel(stack: Any) -> None:
    (job,) = await enqueue(stack, "user-1")
    headers, owner = stack.app_headers(), {"owner": "user-1"}
    early = await stack.http.post(f"/jobs/{job.id}/retry", params=owner, headers=headers)
    assert early.status_code == 409
    assert early.json()["error"] == "conflict"

    await fail_all(stack)
    failed = (await stack.http.get(f"/jobs/{job.id}", params=owner, headers=headers)).json()
    assert failed["state"] == "failed"
    assert failed["last_error"].startswith("AmoValidationError: amoCRM rejected")

    retried = await stack.http.post(f"/jobs/{job.id}/retry", params=owner, headers=headers)
    assert retried.status_code == 200, retried.text
    assert (retried.json()["state"], retried.json()["attempts"]) == ("pending", 0)
    cancelled = await stack.http.post(f"/jobs/{job.id}/cancel", params=owner, headers=headers)
    assert cancelled.json()["state"] == "cancelled"
    again = await stack.http.post(f"/jobs/{job.id}/cancel", params=owner, headers=headers)
    assert again.status_code == 409
    other = await stack.http.post(
        f"/jobs/{job.id}/retry", params={"owner": "user-2"}, headers=headers
    )
    assert other.status_code == 404


def test_the_jobs_commands(
    database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async def prepare() -> list[Job]:
        async with job_queue(database_url) as jobs:

            async def refuse(context: JobContext, batch: Sequence[Job]) -> None:
                raise AmoValidationError("the pipeline is gone", status=400)

            jobs.handlers.register("t.cli", refuse)
            made = await jobs.many(2, kind="t.cli", owner="user-1")
            await jobs.worker().run_once()  # the first fails
            return made

    failed, waiting = asyncio.run(prepare())
    monkeypatch.setenv("AMOBRIDGE_DATABASE__URL", database_url)
    monkeypatch.setenv("AMOBRIDGE_SECURITY__SECRET_KEYS", generate_key())
    monkeypatch.setenv("AMOBRIDGE_ENVIRONMENT", "test")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    table = runner.invoke(cli, ["jobs", "list", "--state", "failed"])
    assert table.exit_code == 0, table.output
    assert "1 pending, 1 failed" in table.stdout
    assert "the pipeline is gone" in table.stdout
    rows = table.stdout.split("LAST ERROR", 1)[1].splitlines()
    assert [row.split()[0] for row in rows if row.strip()] == [str(failed.id)]

    listed = runner.invoke(cli, ["jobs", "list", "--owner", "user-1", "--json"])
    assert [item["id"] for item in json.loads(listed.stdout)] == [waiting.id, failed.id]

    retried = runner.invoke(cli, ["jobs", "retry", str(failed.id)])
    assert retried.exit_code == 0, retried.output
    assert f"job {failed.id} (t.cli) is pending" in retried.stdout
    cancelled = runner.invoke(cli, ["jobs", "cancel", str(waiting.id)])
    assert "is cancelled" in cancelled.stdout
    missing = runner.invoke(cli, ["jobs", "retry", "999999"])
    assert missing.exit_code == 1
    assert "no job 999999" in missing.stderr
    bad_state = runner.invoke(cli, ["jobs", "list", "--state", "sleeping"])
    assert bad_state.exit_code == 1
    assert "unknown job state" in bad_state.stderr

    # The operating page's commands for a failed or stuck job run as written.
    page = (Path(__file__).parents[2] / "docs" / "operating.md").read_text(encoding="utf-8")
    section = page.split("## A job failed or seems stuck", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].split() for line in block.strip().splitlines()]
    assert len(commands) >= 3
    for command in commands:
        assert command[0] == "amobridge", command
        done = runner.invoke(cli, command[1:])
        assert done.exit_code == 0, (command, done.output)
