"""HTTP routes of the job queue: see what is queued, failed or paused, retry or cancel a job.

Owner-scoped like every route that takes credentials: an app key sees the owner it names, a
user's token its own jobs, an admin key any owner's (every owner's when it names none)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from amobridge.auth.dependencies import CurrentPrincipal
from amobridge.auth.principal import Principal, identifier_problem
from amobridge.dependencies import ReadSession, WriteSession
from amobridge.errors import ServiceError
from amobridge.jobs.schemas import (
    CANCELLED_EXAMPLES,
    JOB_EXAMPLES,
    PAGE_EXAMPLES,
    RETRIED_EXAMPLES,
    CursorQuery,
    JobIdPath,
    JobOut,
    JobPage,
    KindFilter,
    LimitQuery,
    OwnerFilter,
    StateFilter,
    error_answers,
    job_out,
    json_answer,
)
from amobridge.jobs.service import JobQueue

router = APIRouter(tags=["jobs"])


async def queue(request: Request) -> JobQueue:
    found: JobQueue = request.app.state.services.jobs
    return found


Queue = Annotated[JobQueue, Depends(queue)]


def owner_scope(principal: Principal, owner: str | None) -> str | None:
    """Whose jobs the caller may see: an admin any owner's (None: every owner's), others the
    owner they act for."""
    if not principal.is_admin:
        return principal.owner_for(owner)
    if owner is not None and (problem := identifier_problem(owner)):
        raise ServiceError(problem, code="invalid_owner")
    return owner


@router.get(
    "/jobs",
    summary="List jobs (newest first)",
    response_model=JobPage,
    responses={
        200: json_answer("A page of jobs", PAGE_EXAMPLES),
        **error_answers(400, 401, 403, 422),
    },
)
async def list_jobs(
    jobs: Queue,
    session: ReadSession,
    principal: CurrentPrincipal,
    owner: OwnerFilter = None,
    state: StateFilter = None,
    kind: KindFilter = None,
    cursor: CursorQuery = None,
    limit: LimitQuery = 50,
) -> dict[str, Any]:
    """The outbound work of an owner: what is waiting, running, done, failed (with
    `last_error`) or paused with its connection. `state=failed` lists what needs a look."""
    page = await jobs.list(
        session,
        owner=owner_scope(principal, owner),
        state=state,
        kind=kind,
        cursor=cursor,
        limit=limit,
    )
    return {"items": [job_out(job) for job in page.jobs], "next_cursor": page.next_cursor}


@router.get(
    "/jobs/{job_id}",
    summary="One job",
    response_model=JobOut,
    responses={200: json_answer("The job", JOB_EXAMPLES), **error_answers(400, 401, 403, 404, 422)},
)
async def get_job(
    job_id: JobIdPath,
    jobs: Queue,
    session: ReadSession,
    principal: CurrentPrincipal,
    owner: OwnerFilter = None,
) -> dict[str, Any]:
    return job_out(await jobs.get(session, job_id, owner=owner_scope(principal, owner)))


@router.post(
    "/jobs/{job_id}/retry",
    summary="Retry a failed, cancelled or paused job",
    response_model=JobOut,
    responses={
        200: json_answer("Pending again, its attempts reset", RETRIED_EXAMPLES),
        **error_answers(400, 401, 403, 404, 409, 422),
    },
)
async def retry_job(
    job_id: JobIdPath,
    jobs: Queue,
    session: WriteSession,
    principal: CurrentPrincipal,
    owner: OwnerFilter = None,
) -> dict[str, Any]:
    """Runs the job again now, with all its attempts. A paused job is tried at once (it pauses
    again if its connection still cannot be used)."""
    return job_out(await jobs.retry(session, job_id, owner=owner_scope(principal, owner)))


@router.post(
    "/jobs/{job_id}/cancel",
    summary="Cancel a pending, paused or failed job",
    response_model=JobOut,
    responses={
        200: json_answer("Cancelled: it will not run", CANCELLED_EXAMPLES),
        **error_answers(400, 401, 403, 404, 409, 422),
    },
)
async def cancel_job(
    job_id: JobIdPath,
    jobs: Queue,
    session: WriteSession,
    principal: CurrentPrincipal,
    owner: OwnerFilter = None,
) -> dict[str, Any]:
    """A running job is not interrupted (409); a cancelled one can be retried later."""
    return job_out(await jobs.cancel(session, job_id, owner=owner_scope(principal, owner)))
