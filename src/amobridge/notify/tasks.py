"""The background work of events to the host app:

- ``notify.deliver`` (a job per delivery): POST the event to its endpoint, signed. A 2xx is
  delivered; any other answer, a network failure or a timeout is retried by the job queue after
  30 s, 2 min, 10 min, 30 min, 1 h, 3 h, then every 6 h, until the delivery has had
  ``AMOBRIDGE_EVENTS__MAX_ATTEMPTS`` (8: about 11 hours); then it is ``failed`` (``POST
  /event-deliveries/{id}/retry`` sends it again). Every attempt is a row of the delivery log:
  status, duration, an excerpt of the error or of the answer's body, never a secret. A delivery
  may reach the host app more than once (an answer lost on the way back, a worker stopped
  mid-request): the host app deduplicates by ``webhook-id``.
- ``purge``: events older than ``AMOBRIDGE_EVENTS__RETENTION_DAYS`` whose deliveries are done.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx

from amobridge.amo._logging import mask_text
from amobridge.audit import AuditRepository
from amobridge.notify.repository import DeliveryRepository
from amobridge.notify.service import DELIVER_KIND, Endpoint, NotifyService
from amobridge.storage.db import Database
from amobridge.storage.tables import Event, EventDelivery

if TYPE_CHECKING:
    from amobridge.jobs import Job, JobContext, JobHandlers

log = logging.getLogger("amobridge.notify")

# After attempt n fails, the next waits RETRY_SCHEDULE[n-1]; the last one repeats.
RETRY_SCHEDULE = (
    timedelta(seconds=30),
    timedelta(minutes=2),
    timedelta(minutes=10),
    timedelta(minutes=30),
    timedelta(hours=1),
    timedelta(hours=3),
    timedelta(hours=6),
)
EXCERPT = 300


def retry_delay(attempt: int) -> timedelta:
    return RETRY_SCHEDULE[min(max(attempt, 1), len(RETRY_SCHEDULE)) - 1]


def _excerpt(text: str) -> str:
    text = mask_text(" ".join(text.split()))
    return text if len(text) <= EXCERPT else text[:EXCERPT] + "…"


class NotifyTasks:
    def __init__(
        self,
        settings: Any,
        db: Database,
        *,
        service: NotifyService,
        http: Any,
    ) -> None:
        self.settings = settings
        self.db = db
        self.service = service
        # A callable giving the service's one outbound httpx client (ConnectionClients.http).
        self._http = http

    def register(self, handlers: JobHandlers) -> None:
        handlers.register(DELIVER_KIND, self.deliver)

    async def deliver(self, context: JobContext, jobs: Sequence[Job]) -> None:
        for job in jobs:
            await self._deliver_one(context, job)

    async def _deliver_one(self, context: JobContext, job: Job) -> None:
        delivery_id = job.payload.get("delivery_id")
        if not isinstance(delivery_id, int):
            context.fail(job, "the job names no delivery_id")
            return
        async with self.db.read() as session:
            found = await DeliveryRepository(session).with_event(delivery_id)
            endpoint = (
                await self.service.endpoint(session, found[0].subscription_id)
                if found is not None
                else None
            )
        if found is None:
            context.succeed(job, {"skipped": "the delivery is gone"})
            return
        delivery, event = found
        if delivery.state in ("delivered", "cancelled"):
            context.succeed(job, {"skipped": f"the delivery is {delivery.state}"})
            return
        if endpoint is None:
            gone = (
                f"subscription {delivery.subscription_id!r} no longer exists (deleted, or "
                "removed from the settings): nothing was sent"
            )
            await self._record(job, delivery, event, endpoint, None, 0, gone, final=True)
            context.fail(job, gone)
            return
        status, duration_ms, error = await self._post(event, endpoint)
        final = error is not None and job.attempts >= job.max_attempts
        await self._record(job, delivery, event, endpoint, status, duration_ms, error, final=final)
        if error is None:
            context.succeed(job, {"status": status})
        else:
            log.info(
                "event delivery %s (attempt %s of %s) failed: %s",
                delivery.id,
                job.attempts,
                job.max_attempts,
                error,
            )
            context.retry(job, error, delay=retry_delay(job.attempts))

    async def _post(self, event: Event, endpoint: Endpoint) -> tuple[int | None, int, str | None]:
        """``(status, milliseconds, error)``: error None for a 2xx."""
        at = datetime.now(UTC)
        body = self.service.body(event, endpoint)
        headers = self.service.headers(event, body, endpoint, at=at)
        timeout = self.settings.events.timeout_seconds
        started = time.monotonic()
        try:
            reply = await self._http().post(
                endpoint.url, content=body, headers=headers, timeout=timeout
            )
        except httpx.TimeoutException:
            error = f"no answer within {timeout:g} s (AMOBRIDGE_EVENTS__TIMEOUT_SECONDS)"
            return None, _ms(started), error
        except httpx.HTTPError as exc:
            reason = str(exc).strip()
            text = f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__
            return None, _ms(started), _excerpt(text)
        duration = _ms(started)
        if reply.is_success:
            return reply.status_code, duration, None
        answer = reply.text.strip()
        error = f"HTTP {reply.status_code}" + (f": {answer}" if answer else "")
        return reply.status_code, duration, _excerpt(error)

    async def _record(
        self,
        job: Job,
        delivery: EventDelivery,
        event: Event,
        endpoint: Endpoint | None,
        status: int | None,
        duration_ms: int,
        error: str | None,
        *,
        final: bool,
    ) -> None:
        now = datetime.now(UTC)
        values: dict[str, Any] = {
            "last_status": status,
            "last_error": error,
            "updated_at": now,
        }
        if endpoint is not None:
            values["url"] = endpoint.url
        if error is None:
            values.update(state="delivered", delivered_at=now, next_attempt_at=None)
        elif final:
            values.update(state="failed", next_attempt_at=None)
        else:
            values.update(state="pending", next_attempt_at=now + retry_delay(job.attempts))
        async with self.db.transaction() as session:
            deliveries = DeliveryRepository(session)
            deliveries.log_attempt(
                delivery.id,
                attempt=job.attempts,
                started_at=now - timedelta(milliseconds=duration_ms),
                status_code=status,
                duration_ms=duration_ms,
                error=error,
            )
            await deliveries.settle(delivery.id, **values)
            if endpoint is not None and endpoint.legacy:
                # The reauth callback's attempts have always been audited.
                AuditRepository(session).record(
                    actor="system",
                    action="reauth_callback",
                    success=error is None,
                    owner=delivery.owner,
                    connection_id=event.connection_id,
                    error=error,
                    details={
                        "event": delivery.event_type,
                        "attempt": job.attempts,
                        "delivery": delivery.id,
                    },
                )

    async def purge(self) -> int:
        before = datetime.now(UTC) - timedelta(days=self.settings.events.retention_days)
        async with self.db.transaction() as session:
            return await self.service.purge(session, before=before)


def _ms(started: float) -> int:
    return max(0, round((time.monotonic() - started) * 1000))
