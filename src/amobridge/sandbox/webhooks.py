"""Webhooks out: amoCRM's form-encoded bodies, 2 s deadline, retries, auto-disable.

The API layer (and the control API, for changes "made in the UI") reports every data change with
:meth:`WebhookDispatcher.emit`. For each enabled subscription of the account whose ``settings`` ask
for it, the dispatcher builds amoCRM's body and POSTs it from an asyncio task through the sandbox's
outbound client:

- body: ``application/x-www-form-urlencoded`` with bracket keys (``leads[status][0][id]=…``), every
  value a string, nested lists and dicts flattened, plus the ``account[…]`` block;
- headers: ``User-Agent: amoCRM-Webhooks/3.0``, ``X-Amocrm-Requestid: {uuid4}`` (new per attempt),
  ``Accept-Encoding: gzip`` (undocumented: what amoCRM's deliveries carried in 2025);
- delivered: a 100–299 reply within ``webhook_timeout`` *real* seconds (2 s);
- retries: attempts 2 and 3 after any failure, attempts 4 and 5 only after a 499 or 5xx, at the
  ``webhook_retry_delays`` of *sandbox* time (5 min, 15 min, 15 min, 1 h) counted from when the
  previous attempt was due. Due retries go out when the clock is advanced (:meth:`run_due`) and from
  a background ticker while retries are pending;
- auto-disable: more than ``webhook_disable_after`` invalid replies within
  ``webhook_disable_window`` sandbox seconds, the latest one invalid, disables the subscription
  until it is re-enabled (re-POST of its destination, or the control API).

Events: one event is one (entity, action) pair of one change. A lead moved to another stage is two
events: ``status`` (with ``old_status_id``) for ``status_lead`` and ``update`` for ``update_lead``.
Each event goes in its own POST unless ``webhook_multi_per_post`` is on, then every event of one
``emit`` call for one subscription shares a POST (amoCRM does not document whether it batches).

Every attempt is kept in a bounded log that the control API serves
(``GET /_sandbox/webhook-deliveries``).

amoCRM documents the body format at
https://www.amocrm.ru/developers/content/crm_platform/webhooks-format.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import httpx

from amobridge.sandbox.config import SandboxConfig
from amobridge.sandbox.events import EntityChange
from amobridge.sandbox.state import Account, EntityType, WebhookSubscription

if TYPE_CHECKING:
    from amobridge.sandbox.app import Sandbox

log = logging.getLogger("amobridge.sandbox.webhooks")

USER_AGENT = "amoCRM-Webhooks/3.0"
DELIVERY_LOG_SIZE = 20_000
TICK_SECONDS = 0.5
"""How often (real seconds) the background ticker looks for due retries."""

_ENTITY_SETTINGS = {
    "add": ("lead", "contact", "company", "customer", "task"),
    "update": ("lead", "contact", "company", "customer", "task"),
    "delete": ("lead", "contact", "company", "customer", "task"),
    "responsible": ("lead", "contact", "company", "customer", "task"),
    "restore": ("lead", "contact", "company"),
    "note": ("lead", "contact", "company", "customer"),
}
WEBHOOK_SETTINGS: frozenset[str] = frozenset(
    {f"{action}_{entity}" for action, entities in _ENTITY_SETTINGS.items() for entity in entities}
    | {"status_lead", "add_talk", "update_talk", "add_chat_template_review"}
)
"""Every value ``settings`` may hold."""

# entity type -> (body key, settings suffix). Companies are sent as contacts[…] type=company.
_ENTITY_KEYS: dict[EntityType, tuple[str, str]] = {
    "leads": ("leads", "lead"),
    "contacts": ("contacts", "contact"),
    "companies": ("contacts", "company"),
}
# amoCRM's numeric element types, used in note hooks.
_ELEMENT_TYPES: dict[EntityType, int] = {"contacts": 1, "leads": 2, "companies": 3}


@dataclass(frozen=True)
class WebhookEvent:
    """One ``{entity}[{action}][i]`` item of a webhook body."""

    entity_key: str
    action: str
    fields: dict[str, Any]


def events_for(change: EntityChange, settings: Iterable[str]) -> list[WebhookEvent]:
    """The events of ``change`` that a subscription with ``settings`` receives."""
    wanted = set(settings)
    key, suffix = _ENTITY_KEYS[change.entity_type]
    events: list[WebhookEvent] = []

    def base() -> dict[str, Any]:
        fields = dict(change.snapshot)
        fields.setdefault("id", change.entity_id)
        if key == "contacts":
            fields["type"] = "company" if change.entity_type == "companies" else "contact"
        return fields

    if change.action == "add" and f"add_{suffix}" in wanted:
        fields = base()
        fields.pop("old_status_id", None)
        events.append(WebhookEvent(key, "add", fields))
    elif change.action == "update":
        if change.entity_type == "leads" and change.status_changed and "status_lead" in wanted:
            events.append(
                WebhookEvent(
                    key, "status", _insert_after(base(), "status_id", "old_status_id", change)
                )
            )
        if change.responsible_changed and f"responsible_{suffix}" in wanted:
            fields = base()
            fields["old_responsible_user_id"] = change.old_responsible_user_id
            events.append(WebhookEvent(key, "responsible", fields))
        if f"update_{suffix}" in wanted:
            events.append(WebhookEvent(key, "update", base()))
    elif change.action == "delete" and f"delete_{suffix}" in wanted:
        # Delete hooks seen from amoCRM carry only the id (it documents no more); the contacts key
        # also says which kind was deleted.
        fields = {"id": change.entity_id}
        if key == "contacts":
            fields["type"] = "company" if change.entity_type == "companies" else "contact"
        events.append(WebhookEvent(key, "delete", fields))
    elif change.action == "restore" and f"restore_{suffix}" in wanted:
        events.append(WebhookEvent(key, "restore", base()))
    elif change.action == "note" and f"note_{suffix}" in wanted:
        note = dict(change.note or {})
        note.setdefault("element_id", change.entity_id)
        note.setdefault("element_type", _ELEMENT_TYPES[change.entity_type])
        account_id = change.snapshot.get("account_id")
        if account_id is not None:
            note.setdefault("account_id", account_id)
        events.append(WebhookEvent(key, "note", {"note": note}))
    return events


def _insert_after(
    fields: dict[str, Any], after: str, name: str, change: EntityChange
) -> dict[str, Any]:
    """``fields`` with ``name = change.old_status_id`` right after ``after`` (amoCRM's order)."""
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if key == name:
            continue
        out[key] = value
        if key == after:
            out[name] = change.old_status_id
    out.setdefault(name, change.old_status_id)
    return out


def form_value(value: Any) -> str | None:
    """A scalar as PHP's ``http_build_query`` writes it: None is left out, booleans are 1/0."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def flatten(prefix: str, value: Any, out: list[tuple[str, str]]) -> None:
    """Append ``value`` under ``prefix`` as bracket keys: ``a[b][0][c]=…`` (empty lists vanish)."""
    if isinstance(value, dict):
        for key, item in value.items():
            flatten(f"{prefix}[{key}]", item, out)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            flatten(f"{prefix}[{index}]", item, out)
    else:
        text = form_value(value)
        if text is not None:
            out.append((prefix, text))


def form_fields(account: Account, events: list[WebhookEvent]) -> list[tuple[str, str]]:
    """The body of one POST as ordered (key, value) pairs: the account block, then the events."""
    pairs: list[tuple[str, str]] = [
        ("account[subdomain]", account.subdomain),
        ("account[id]", str(account.id)),
        ("account[_links][self]", f"https://{account.host}"),
    ]
    counters: dict[tuple[str, str], int] = {}
    for event in events:
        index = counters.get((event.entity_key, event.action), 0)
        counters[(event.entity_key, event.action)] = index + 1
        flatten(f"{event.entity_key}[{event.action}][{index}]", event.fields, pairs)
    return pairs


def is_delivered(status: int | None) -> bool:
    return status is not None and 100 <= status <= 299


def retry_delay(config: SandboxConfig, attempt: int, code: int) -> int | None:
    """Sandbox seconds until the attempt after failed ``attempt`` (1-based), or None: give up.

    ``code`` is the reply status, 0 for a timeout or a connection error.
    """
    delays = config.webhook_retry_delays
    if attempt < 1 or attempt > len(delays):
        return None
    if attempt + 1 > config.webhook_retry_any_failure_attempts and not (
        code == 499 or 500 <= code <= 599
    ):
        return None
    return delays[attempt - 1]


@dataclass
class _Job:
    """One attempt to come: what to send, where, and when it is due."""

    delivery_id: int
    account: Account
    subscription: WebhookSubscription
    pairs: list[tuple[str, str]]
    raw: str
    attempt: int
    due: float


@dataclass
class DeliveryRecord:
    """One attempt as the control API reports it."""

    id: int
    delivery_id: int
    account_id: int
    subscription_id: int
    destination: str
    attempt: int
    due_at: float
    time: float
    request_id: str
    body: dict[str, str]
    raw: str
    headers: dict[str, str]
    status: int | None
    error: str | None
    duration: float
    delivered: bool
    next_retry_at: float | None = None
    disabled_subscription: bool = False
    events: list[str] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "delivery_id": self.delivery_id,
            "account_id": self.account_id,
            "subscription_id": self.subscription_id,
            "destination": self.destination,
            "attempt": self.attempt,
            "due_at": self.due_at,
            "time": self.time,
            "request_id": self.request_id,
            "events": list(self.events),
            "body": dict(self.body),
            "raw": self.raw,
            "headers": dict(self.headers),
            "status": self.status,
            "code": self.status if self.status is not None else 0,
            "error": self.error,
            "duration": self.duration,
            "delivered": self.delivered,
            "next_retry_at": self.next_retry_at,
            "disabled_subscription": self.disabled_subscription,
        }


class WebhookDispatcher:
    """Sends one sandbox's webhooks; owned by :class:`~amobridge.sandbox.app.Sandbox`."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox
        self._record_ids = itertools.count(1)
        self._delivery_ids = itertools.count(1)
        self._sequence = itertools.count()  # heap tie-breaker
        self.log: deque[DeliveryRecord] = deque(maxlen=DELIVERY_LOG_SIZE)
        self._pending: list[tuple[float, int, _Job]] = []  # heap of retries by due time
        self._inflight: dict[asyncio.Task[None], _Job] = {}
        self._ticker: asyncio.Task[None] | None = None

    # --- lifecycle --------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget deliveries and pending retries; stop what is in flight and the ticker."""
        self._pending.clear()
        self.log.clear()
        for task in [*self._inflight, *([self._ticker] if self._ticker else [])]:
            _cancel(task)
        self._inflight.clear()
        self._ticker = None

    async def aclose(self) -> None:
        """Stop the ticker and every delivery in flight (on this loop), waiting for them to end."""
        tasks = [*self._inflight, *([self._ticker] if self._ticker else [])]
        self._inflight.clear()
        self._ticker = None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - aclose is awaited, so a loop runs
            loop = None
        mine = []
        for task in tasks:
            _cancel(task)
            if task.get_loop() is loop:
                mine.append(task)
        if mine:
            await asyncio.wait(mine)

    @property
    def pending_retries(self) -> int:
        return len(self._pending)

    # --- emitting ---------------------------------------------------------------------------------
    def emit(self, account: Account, changes: list[EntityChange]) -> None:
        """Queue deliveries for ``changes`` to every subscription of ``account`` that wants them."""
        config = self._sandbox.config
        subscriptions = sorted(
            (s for s in account.webhooks.values() if not s.disabled), key=lambda s: (s.sort, s.id)
        )
        now = self._sandbox.clock.now()
        for subscription in subscriptions:
            events = [e for change in changes for e in events_for(change, subscription.settings)]
            if not events:
                continue
            groups = [events] if config.webhook_multi_per_post else [[e] for e in events]
            for group in groups:
                pairs = form_fields(account, group)
                job = _Job(
                    delivery_id=next(self._delivery_ids),
                    account=account,
                    subscription=subscription,
                    pairs=pairs,
                    raw=urlencode(pairs),
                    attempt=1,
                    due=now,
                )
                self._start(job)

    # --- retries ----------------------------------------------------------------------------------
    async def run_due(self) -> None:
        """Send every retry whose time has come and wait for them (called when the clock moves).

        A retry that fails again schedules the next attempt; if that is due too (the clock jumped
        far), it goes out in the same call, so advancing by two hours plays the whole schedule.
        """
        loop = asyncio.get_running_loop()
        current = asyncio.current_task()
        while True:
            started = [self._spawn(job) for job in self._pop_due()]
            # Retries the ticker started a moment ago belong to this advance too.
            waiting = [
                task
                for task, job in self._inflight.items()
                if job.attempt > 1
                and task is not current
                and task.get_loop() is loop
                and not task.done()
            ]
            if not started and not waiting:
                return
            await asyncio.wait({*started, *waiting})

    async def flush(self) -> int:
        """Wait until no delivery of this loop is in flight; returns how many were awaited."""
        loop = asyncio.get_running_loop()
        current = asyncio.current_task()
        count = 0
        while True:
            tasks = {
                t
                for t in self._inflight
                if t is not current and t.get_loop() is loop and not t.done()
            }
            if not tasks:
                return count
            count += len(tasks)
            await asyncio.wait(tasks)

    def _pop_due(self) -> list[_Job]:
        now = self._sandbox.clock.now()
        due: list[_Job] = []
        while self._pending and self._pending[0][0] <= now:
            due.append(heapq.heappop(self._pending)[2])
        return due

    def _start(self, job: _Job) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            # No loop (a synchronous caller): the attempt waits for the next run_due or tick.
            self._schedule(job)
            return
        self._spawn(job)

    def _spawn(self, job: _Job) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(self._attempt(job))
        self._inflight[task] = job
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._inflight.pop(task, None)

    def _schedule(self, job: _Job) -> None:
        heapq.heappush(self._pending, (job.due, next(self._sequence), job))
        self._ensure_ticker()

    def _ensure_ticker(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        ticker = self._ticker
        if ticker is not None and not ticker.done() and ticker.get_loop() is loop:
            return
        self._ticker = loop.create_task(self._tick())

    async def _tick(self) -> None:
        """Start due retries while real time passes (a running, unfrozen clock)."""
        while self._pending:
            await asyncio.sleep(TICK_SECONDS)
            for job in self._pop_due():
                self._spawn(job)

    # --- sending ----------------------------------------------------------------------------------
    def _live(self, job: _Job) -> bool:
        """Whether the job's subscription still exists, unchanged in identity, and is enabled."""
        current = job.account.webhooks.get(job.subscription.destination)
        return current is job.subscription and not current.disabled

    async def _attempt(self, job: _Job) -> None:
        if not self._live(job):
            return
        sandbox = self._sandbox
        config = sandbox.config
        subscription = job.subscription
        request_id = str(uuid.uuid4())
        headers = {
            "User-Agent": USER_AGENT,
            "X-Amocrm-Requestid": request_id,
            "Accept-Encoding": "gzip",
            "Content-Type": "application/x-www-form-urlencoded",
        }
        sent_at = sandbox.clock.now()
        started = time.perf_counter()
        status: int | None = None
        error: str | None = None
        try:
            async with asyncio.timeout(config.webhook_timeout):
                reply = await sandbox.outbound().post(
                    subscription.destination, content=job.raw.encode(), headers=headers
                )
            status = reply.status_code
        except TimeoutError:
            error = f"no reply within {config.webhook_timeout:g} s"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # the destination is someone else's code: its crash is a failure
            log.warning("webhook to %s failed", subscription.destination, exc_info=exc)
            error = f"{type(exc).__name__}: {exc}"
        duration = time.perf_counter() - started
        delivered = is_delivered(status)
        record = DeliveryRecord(
            id=next(self._record_ids),
            delivery_id=job.delivery_id,
            account_id=job.account.id,
            subscription_id=subscription.id,
            destination=subscription.destination,
            attempt=job.attempt,
            due_at=job.due,
            time=sent_at,
            request_id=request_id,
            body=dict(job.pairs),
            raw=job.raw,
            headers=headers,
            status=status,
            error=error,
            duration=duration,
            delivered=delivered,
            events=_event_names(job.pairs),
        )
        if not delivered:
            self._failed(job, record, status if status is not None else 0)
        self.log.append(record)

    def _failed(self, job: _Job, record: DeliveryRecord, code: int) -> None:
        config = self._sandbox.config
        subscription = job.subscription
        if job.account.webhooks.get(subscription.destination) is not subscription:
            return  # deleted (or replaced) while the attempt was in flight
        now = self._sandbox.clock.now()
        failures = subscription.failures
        failures.append(now)
        while failures and failures[0] <= now - config.webhook_disable_window:
            failures.popleft()
        if not subscription.disabled and len(failures) > config.webhook_disable_after:
            subscription.disabled = True
            record.disabled_subscription = True
            log.warning(
                "webhook %s of account %s disabled after %d failures",
                subscription.destination,
                job.account.id,
                len(failures),
            )
        if subscription.disabled:
            return
        delay = retry_delay(config, job.attempt, code)
        if delay is None:
            return
        retry = _Job(
            delivery_id=job.delivery_id,
            account=job.account,
            subscription=subscription,
            pairs=job.pairs,
            raw=job.raw,
            attempt=job.attempt + 1,
            due=job.due + delay,
        )
        record.next_retry_at = retry.due
        self._schedule(retry)


def _event_names(pairs: list[tuple[str, str]]) -> list[str]:
    """``["leads[status][0]", …]``: which items a body carries, for the delivery log."""
    names: list[str] = []
    for key, _ in pairs:
        if key.startswith("account["):
            continue
        parts = key.split("]")
        if len(parts) >= 3:
            name = "]".join(parts[:2]) + "]"
            if name not in names:
                names.append(name)
    return names


def _cancel(task: asyncio.Task[None]) -> None:
    """Cancel ``task``, even when its loop is already closed (a previous test's)."""
    if task.done():
        return
    with contextlib.suppress(RuntimeError):  # its loop is closed: nothing will run it again
        task.cancel()
