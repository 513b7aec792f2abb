"""Handlers of job kinds, the context a handler reports through, and what an error means for a
job.

A handler is ``async def handler(context, jobs)``: ``jobs`` is the claimed batch (one job unless
the kind was registered with a larger ``batch_size``), all of one kind and one connection. It
runs outside any database transaction and reports each job's outcome through ``context``; the
worker commits the outcomes afterwards, in one unit, only for jobs it still holds.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from amobridge.amo._logging import mask_text
from amobridge.amo.errors import (
    AmoAmbiguousWrite,
    AmoAuthError,
    AmoBanned,
    AmoRateLimited,
    AmoReauthRequired,
    AmoServerError,
    AmoTokenStoreError,
    AmoTransportError,
)
from amobridge.connect.clients import ConnectionDisconnected
from amobridge.jobs.repository import JobRepository
from amobridge.storage.guard import StorageUnavailable
from amobridge.storage.tables import Job

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from amobridge.amo.client import AmoClient
    from amobridge.connect.clients import ConnectionClients
    from amobridge.storage.db import Database

# Pauses that hold every job of the connection: they end when the connection is active again
# (re-connected), or, for a ban, when it is over.
REAUTH_REQUIRED = "reauth_required"
DISCONNECTED = "disconnected"
BANNED = "banned"
CONNECTION_PAUSES = (REAUTH_REQUIRED, DISCONNECTED, BANNED)
WAIT_FOR_CONNECTION = (REAUTH_REQUIRED, DISCONNECTED)  # they end when it is active again
ERROR_TEXT_LIMIT = 2000

Handler = Callable[["JobContext", Sequence[Job]], Awaitable[object]]
# Called in the unit of work that fails jobs whose worker stopped on every attempt (the queue's
# upkeep, not the handler, decided it): what the jobs worked on learns it too.
AbandonedHook = Callable[["AsyncSession", Sequence[Job]], Awaitable[object]]
OutcomeKind = Literal["succeeded", "retry", "defer", "failed", "paused"]


@dataclass(frozen=True)
class HandlerSpec:
    kind: str
    handler: Handler
    batch_size: int = 1
    on_abandoned: AbandonedHook | None = None


class JobHandlers:
    """The handler of each job kind. Register before the worker starts; a worker claims only
    the kinds registered here."""

    def __init__(self) -> None:
        self._specs: dict[str, HandlerSpec] = {}

    def register(
        self,
        kind: str,
        handler: Handler,
        *,
        batch_size: int = 1,
        on_abandoned: AbandonedHook | None = None,
    ) -> None:
        """``handler`` runs the jobs of ``kind``, up to ``batch_size`` at a time.
        ``on_abandoned(session, jobs)``: those of its jobs the upkeep failed because their
        worker stopped before finishing on every attempt, in the unit that fails them."""
        if not kind or len(kind) > 64:
            raise ValueError("a job kind is 1 to 64 characters, e.g. sync.push_lead")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if kind in self._specs:
            raise ValueError(f"job kind {kind!r} already has a handler")
        self._specs[kind] = HandlerSpec(kind, handler, batch_size, on_abandoned)

    def handles(self, kind: str, *, batch_size: int = 1) -> Callable[[Handler], Handler]:
        """``register`` as a decorator."""

        def decorate(handler: Handler) -> Handler:
            self.register(kind, handler, batch_size=batch_size)
            return handler

        return decorate

    def get(self, kind: str) -> HandlerSpec | None:
        return self._specs.get(kind)

    def kinds(self) -> list[str]:
        return sorted(self._specs)

    def batch_sizes(self) -> dict[str, int]:
        return {kind: spec.batch_size for kind, spec in self._specs.items()}

    def __contains__(self, kind: object) -> bool:
        return kind in self._specs


@dataclass(frozen=True)
class Outcome:
    """What becomes of one claimed job.

    - ``succeeded``: done, with ``result``;
    - ``retry``: failed this attempt (``error``); runs again after ``delay`` seconds (None: the
      backoff), or is failed if it has used its attempts;
    - ``defer``: runs again after ``delay`` seconds without counting the attempt (a 429);
    - ``failed``: failed for good (``error``);
    - ``paused``: waits (``reason``) until ``until``, or, for the connection's pauses, until the
      connection is active again; the attempt is not counted.
    """

    kind: OutcomeKind
    result: dict[str, Any] | None = None
    error: str | None = None
    delay: float | None = None
    reason: str | None = None
    until: datetime | None = None


def describe_error(error: BaseException | str) -> str:
    """An error as ``last_error`` shows it: its class and message, tokens masked, cut short."""
    if isinstance(error, str):
        text = error
    else:
        message = str(error).strip()
        text = f"{type(error).__name__}: {message}" if message else type(error).__name__
    text = mask_text(text)
    if len(text) > ERROR_TEXT_LIMIT:
        text = text[:ERROR_TEXT_LIMIT] + "…"
    return text


# Errors worth another attempt later (besides those marked ``retryable``).
_RETRYABLE: tuple[type[BaseException], ...] = (
    AmoServerError,
    AmoTransportError,
    AmoAmbiguousWrite,  # the re-run reconciles by the idempotency key before sending again
    AmoTokenStoreError,
    StorageUnavailable,
    TimeoutError,
    ConnectionError,
)


def outcome_for(error: BaseException) -> Outcome:
    """What a handler's exception means for the jobs it had not reported."""
    text = describe_error(error)
    if isinstance(error, ConnectionDisconnected):
        return Outcome("paused", error=text, reason=DISCONNECTED)
    if isinstance(error, AmoReauthRequired):
        return Outcome("paused", error=text, reason=REAUTH_REQUIRED)
    if isinstance(error, AmoBanned):
        return Outcome(
            "paused", error=text, reason=BANNED, until=datetime.fromtimestamp(error.retry_at, UTC)
        )
    if isinstance(error, AmoRateLimited):
        return Outcome("defer", error=text, delay=error.retry_after)
    if isinstance(error, _RETRYABLE) or getattr(error, "retryable", False) is True:
        return Outcome("retry", error=text)
    if isinstance(error, AmoAuthError):
        # A 401 that outlived the client's one refresh, while the grant itself is alive (no
        # AmoReauthRequired): counted and retried, and failed if it keeps coming back.
        return Outcome("retry", error=text)
    return Outcome("failed", error=text)


def _seconds(delay: float | timedelta | None) -> float | None:
    if isinstance(delay, timedelta):
        return delay.total_seconds()
    return None if delay is None else float(delay)


@dataclass
class JobContext:
    """What a handler works with: the service graph, the connections' amoCRM clients, and the
    outcome of each job it was given. The last report of a job wins."""

    jobs: Sequence[Job]
    services: Any
    clients: ConnectionClients
    db: Database
    worker_id: str
    # Jobs this attempt took over from a worker whose lease ran out: that worker may still be
    # running them (stalled, not dead), its requests still on their way.
    taken_over: frozenset[int] = frozenset()
    # The queue's clock when the attempt started (tests run it ahead of the wall).
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    outcomes: dict[int, Outcome] = field(default_factory=dict)

    def _own(self, job: Job) -> int:
        if all(job.id != mine.id for mine in self.jobs):
            raise ValueError(f"job {job.id} is not one of this handler's jobs")
        return job.id

    def succeed(self, job: Job, result: dict[str, Any] | None = None) -> None:
        self.outcomes[self._own(job)] = Outcome("succeeded", result=result)

    def retry(
        self, job: Job, error: BaseException | str, delay: float | timedelta | None = None
    ) -> None:
        """Failed this attempt: again after ``delay`` (None: the backoff), or failed for good
        once the job has used its attempts."""
        self.outcomes[self._own(job)] = Outcome(
            "retry", error=describe_error(error), delay=_seconds(delay)
        )

    def defer(
        self, job: Job, delay: float | timedelta, error: BaseException | str | None = None
    ) -> None:
        """Run again after ``delay`` without counting this attempt (amoCRM asked us to wait)."""
        text = describe_error(error) if error is not None else None
        self.outcomes[self._own(job)] = Outcome("defer", error=text, delay=_seconds(delay))

    def fail(self, job: Job, error: BaseException | str) -> None:
        self.outcomes[self._own(job)] = Outcome("failed", error=describe_error(error))

    def pause(self, job: Job, reason: str, until: datetime | None = None) -> None:
        """Hold the job. ``reauth_required``, ``disconnected`` and ``banned`` hold every job of
        its connection until it is active again (a ban: until ``until``); another reason holds
        this job until ``until``, or, without one, until an operator retries it."""
        if not reason or len(reason) > 64:
            raise ValueError("a pause reason is 1 to 64 characters")
        if until is not None and until.tzinfo is None:
            raise ValueError("until must be timezone-aware")
        self.outcomes[self._own(job)] = Outcome("paused", reason=reason, until=until)

    def report_error(self, error: BaseException, jobs: Iterable[Job] | None = None) -> None:
        """Give every unreported job (of ``jobs``, default all) the outcome ``error`` means."""
        outcome = outcome_for(error)
        for job in self.jobs if jobs is None else jobs:
            self.outcomes.setdefault(self._own(job), outcome)

    async def client(self, job: Job | str) -> AmoClient:
        """The amoCRM client of a job's connection (or of a connection id), shared by the
        process; raises :class:`ConnectionDisconnected` for a connection that is gone."""
        connection_id = job if isinstance(job, str) else job.connection_id
        if connection_id is None:
            raise ValueError(f"job {getattr(job, 'id', '?')} has no connection")
        async with self.db.read() as session:
            row = await JobRepository(session).connection_row(connection_id)
        if row is None or row.status == DISCONNECTED:
            raise ConnectionDisconnected(connection_id)
        return await self.clients.client(row)
