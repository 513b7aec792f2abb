"""The durable outbound job queue: our own ``jobs`` table in the service's database, so a change
and the work it calls for commit in one transaction (the transactional outbox).

The public interface, for the features that queue and run work:

- **Queue work** inside the caller's unit of work (no commit of its own)::

      job = await services.jobs.enqueue(
          session, kind="sync.push_lead", payload={"lead_id": 7}, owner="user-42",
          connection_id=conn.id, ordering_key=f"lead:7", dedup_key=None, run_after=None,
          max_attempts=None,
      )

  ``ordering_key``: jobs with the same key run one at a time, in id order. ``dedup_key``: at
  most one pending, running or paused job per key (enqueue returns the existing one).
  ``job.idempotency_key`` is made at enqueue: send it to amoCRM (``request_id``, a marker) so a
  re-run after an ambiguous failure can find what the first run created.

- **Handle a kind** (registered before the worker starts)::

      async def push_leads(context: JobContext, jobs: Sequence[Job]) -> None:
          amo = await context.client(jobs[0])      # the connection's AmoClient
          ...
          context.succeed(job, result={"amo_id": 123})
          context.retry(job, "amoCRM is busy", delay=30)   # counts an attempt
          context.fail(job, "the pipeline is gone")       # failed at once
          context.pause(job, "waiting_for_catalogue", until=later)

      services.job_handlers.register("sync.push_lead", push_leads, batch_size=50)

  The handler runs outside any database transaction. A job it does not report succeeds when the
  handler returns; when it raises, the error decides (:func:`outcome_for`): a dead grant or a
  disconnected connection pauses the connection's jobs until it is active again, a ban pauses
  them until it ends, a 429 reschedules without counting an attempt, amoCRM's 5xx, a network
  failure or an unusable database retry with capped exponential backoff, anything else fails.
  ``context.services`` is the service graph, ``context.clients`` its ``ConnectionClients``.

- **Run**: :class:`JobWorker` (``serve`` runs one when AMOBRIDGE_SERVER__RUN_WORKERS is on;
  ``amobridge worker`` runs one per process). See docs/sync.md, "Jobs".
"""

from amobridge.jobs.handlers import (
    CONNECTION_PAUSES,
    Handler,
    HandlerSpec,
    JobContext,
    JobHandlers,
    Outcome,
    outcome_for,
)
from amobridge.jobs.service import JobPage, JobQueue, JobSignal
from amobridge.jobs.worker import JobWorker
from amobridge.storage.tables import JOB_ACTIVE_STATES, JOB_STATES, Job

__all__ = [
    "CONNECTION_PAUSES",
    "JOB_ACTIVE_STATES",
    "JOB_STATES",
    "Handler",
    "HandlerSpec",
    "Job",
    "JobContext",
    "JobHandlers",
    "JobPage",
    "JobQueue",
    "JobSignal",
    "JobWorker",
    "Outcome",
    "outcome_for",
]
