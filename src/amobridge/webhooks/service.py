"""amoCRM's webhooks into the mirror: receive, store, apply; list and replay deliveries; the
connection's URL secret and the subscription's bookkeeping.

**Receive** (:meth:`WebhookService.receive`, ``POST /webhooks/amocrm/{secret}``): the secret
names a connection (404 when it names none, or a disconnected one), the body's ``account[id]``
must be that connection's account (403); nothing is stored for either. Otherwise the raw body,
its content type, a few headers and its SHA-256 are committed in ``webhook_deliveries`` with a
``webhooks.process`` job — in one unit of work shared with whatever other deliveries arrived
meanwhile (``ingest.py``) — and only then answered 200. No amoCRM call, no parsing beyond the
account fields. A body already received for the connection within
``AMOBRIDGE_WEBHOOKS__DEDUP_WINDOW_SECONDS`` is stored as a ``duplicate`` of the first, without
its body, and gets no job: amoCRM resends what it thinks failed (a reply after 2 s counts as
failed), and each change is applied once. An unusable database answers 503, so amoCRM retries.

**Process** (:meth:`WebhookService.process`, run by the ``webhooks.process`` job): the
deliveries are parsed and applied to the mirror (``apply.py``) in one unit of work, each in a
savepoint of its own, oldest first. A body that cannot be parsed, or an item the mirror cannot
take, turns its delivery ``failed`` with the reason (kept, listed, replayable), never dropped.
The job names no connection (``connection_id`` null, the connection in its payload) so that
applying webhooks, which needs no token, goes on while a connection waits for re-authorization;
its ordering key (``webhooks:{connection}``) keeps one connection's deliveries in order.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection as SyncConnection
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from amobridge.amo.webhooks import WebhookParseError, parse_webhook
from amobridge.audit import AuditRepository
from amobridge.errors import Conflict, Forbidden, NotFound, ServiceError
from amobridge.jobs import JobQueue
from amobridge.jobs.handlers import describe_error
from amobridge.settings import Settings
from amobridge.storage.batch import GroupCommit
from amobridge.storage.crypto import Keyring
from amobridge.storage.db import Database
from amobridge.storage.tables import WEBHOOK_DELIVERY_STATES, Connection, WebhookDelivery, utcnow
from amobridge.webhooks.apply import MirrorApplier
from amobridge.webhooks.ingest import (
    Incoming,
    Stored,
    Targets,
    account_of,
    account_problem,
    body_digest,
    kept_headers,
    secret_digest,
)
from amobridge.webhooks.repository import (
    DeliveryRepository,
    DeliveryUnitRepository,
    SubscriptionRepository,
    WebhookConnectionRepository,
)
from amobridge.webhooks.schemas import subscription_out

log = logging.getLogger("amobridge.webhooks")

PROCESS = "webhooks.process"
SUBSCRIBE = "webhooks.subscribe"
UNSUBSCRIBE = "webhooks.unsubscribe"
ROUTE = "/webhooks/amocrm/"
# What the mirror needs to hear of: leads and contacts (a stage move is status_lead).
EVENTS = (
    "add_lead",
    "update_lead",
    "delete_lead",
    "restore_lead",
    "status_lead",
    "add_contact",
    "update_contact",
    "delete_contact",
    "restore_contact",
)
MAX_PAGE = 200
DEFAULT_PAGE = 50
SHOWN_SECRET = 4  # characters of a URL secret a masked destination shows


@dataclass(frozen=True)
class DeliveryPage:
    items: list[WebhookDelivery]
    next_cursor: str | None


def process_ordering_key(connection_id: str) -> str:
    return f"webhooks:{connection_id}"


def subscription_ordering_key(connection_id: str) -> str:
    return f"webhooks.subscription:{connection_id}"


class WebhookService:
    def __init__(
        self, settings: Settings, db: Database, *, keyring: Keyring, queue: JobQueue
    ) -> None:
        self.settings = settings
        self.db = db
        self.keyring = keyring
        self.queue = queue
        self.targets = Targets(db, settings.amo.connection_check_ms / 1000)
        # One writer: the cost of a unit is mostly per unit (the processing job's insert, the
        # statements' compilation), so fewer, larger units answer more deliveries per second —
        # on PostgreSQL too, where four overlapping writers measured slower than one.
        self.batcher: GroupCommit[Incoming, Stored] = GroupCommit(
            self._write, what="a webhook delivery"
        )
        self.applier = MirrorApplier(phone_region=settings.sync.phone_region)

    @property
    def auto_subscribe(self) -> bool:
        return self.settings.webhooks.auto_subscribe

    # --- the URL ---------------------------------------------------------------------------------
    def destination(self, secret: str) -> str:
        return self.settings.server.public_url.rstrip("/") + ROUTE + secret

    def masked(self, secret: str) -> str:
        """The destination as logs, audit entries and answers show it: the secret cut short."""
        return self.destination(secret[:SHOWN_SECRET] + "…")

    def new_secret(self, row: Connection) -> str:
        """A new URL secret for ``row`` (in the caller's unit of work): only its SHA-256 and its
        ciphertext are stored."""
        secret = secrets.token_urlsafe(32)
        row.webhook_secret_hash = secret_digest(secret)
        row.webhook_secret_enc = self.keyring.encrypt(secret)
        self.targets.forget(row.id)
        return secret

    def secret_of(self, row: Connection) -> str | None:
        return self.keyring.decrypt(row.webhook_secret_enc) if row.webhook_secret_enc else None

    # --- receive ---------------------------------------------------------------------------------
    async def receive(
        self, secret: str, body: bytes, *, content_type: str | None, headers: Mapping[str, str]
    ) -> Stored:
        target = await self.targets.find(secret)
        if target is None or target.status == "disconnected":
            raise NotFound(
                "no webhook at this URL: its secret is unknown or its connection was "
                "disconnected (nothing was stored)",
                code="webhook_not_found",
            )
        problem = account_problem(target, account_of(body))
        if problem is not None:
            raise Forbidden(f"{problem} (nothing was stored)", code="account_mismatch")
        return await self.batcher.submit(
            Incoming(
                target=target,
                body=body,
                body_hash=body_digest(body),
                content_type=(content_type or None) and content_type[:255],
                headers=kept_headers(headers),
                received_at=datetime.now(UTC),
            )
        )

    async def _write(self, batch: list[Incoming]) -> list[Stored]:
        """One unit of work for ``batch``, run in one call (the receiver's hot path)."""
        stored, enqueued = await self.db.run_unit(lambda connection: self._store(connection, batch))
        if enqueued:
            self.queue.wake()
        return stored

    def _store(
        self, connection: SyncConnection, batch: list[Incoming]
    ) -> tuple[list[Stored], bool]:
        """The deliveries, the duplicates, a processing job per connection; and whether a job
        was queued."""
        window = self.settings.webhooks.dedup_window_seconds
        repo = DeliveryUnitRepository(connection)
        known: dict[tuple[str, str], int] = {}
        if window > 0:
            since = min(item.received_at for item in batch) - timedelta(seconds=window)
            known = repo.originals(
                ((item.target.connection_id, item.body_hash) for item in batch), since=since
            )
        first: dict[tuple[str, str], int] = {}  # key -> index of its first copy in batch
        fresh: list[int] = []
        for index, item in enumerate(batch):
            key = (item.target.connection_id, item.body_hash)
            if key not in known and (window <= 0 or key not in first):
                first.setdefault(key, index)
                fresh.append(index)
        ids = repo.insert_many([_row(batch[i], state="received") for i in fresh])
        stored: dict[int, Stored] = {i: Stored(id_) for i, id_ in zip(fresh, ids, strict=True)}
        copies = [i for i in range(len(batch)) if i not in stored]
        originals = {
            i: known.get(key) or stored[first[key]].delivery_id
            for i in copies
            for key in [(batch[i].target.connection_id, batch[i].body_hash)]
        }
        copy_ids = repo.insert_many(
            [_row(batch[i], state="duplicate", duplicate_of=originals[i]) for i in copies]
        )
        for i, id_ in zip(copies, copy_ids, strict=True):
            stored[i] = Stored(id_, duplicate_of=originals[i])
        by_connection: dict[str, tuple[str, list[int]]] = {}
        for i in fresh:
            target = batch[i].target
            by_connection.setdefault(target.connection_id, (target.owner, []))[1].append(
                stored[i].delivery_id
            )
        enqueued = False
        for connection_id, (owner, delivery_ids) in by_connection.items():
            enqueued |= self.queue.enqueue_in(
                connection,
                **self._processing(connection_id, owner, delivery_ids),
            )
        return [stored[i] for i in range(len(batch))], enqueued

    @staticmethod
    def _processing(connection_id: str, owner: str, delivery_ids: list[int]) -> dict[str, Any]:
        return {
            "kind": PROCESS,
            "payload": {"connection_id": connection_id, "deliveries": delivery_ids},
            "owner": owner,
            "ordering_key": process_ordering_key(connection_id),
        }

    async def enqueue_processing(
        self, session: AsyncSession, connection_id: str, owner: str, delivery_ids: list[int]
    ) -> None:
        await self.queue.enqueue(session, **self._processing(connection_id, owner, delivery_ids))

    # --- process ---------------------------------------------------------------------------------
    async def process(self, delivery_ids: Sequence[int]) -> dict[str, int]:
        """Apply the ``received`` ones of ``delivery_ids``; how many were processed, failed."""
        counts = {"processed": 0, "failed": 0}
        async with self.db.transaction() as session:
            for row in await DeliveryRepository(session).to_process(delivery_ids):
                row.attempts = (row.attempts or 0) + 1
                row.processed_at = utcnow()
                error = await self._apply(session, row)
                if error is None:
                    counts["processed"] += 1
                else:
                    row.state, row.error, row.result = "failed", error, None
                    counts["failed"] += 1
                    log.warning("webhook delivery %s failed: %s", row.id, error)
        return counts

    async def _apply(self, session: AsyncSession, row: WebhookDelivery) -> str | None:
        """Apply one delivery in a savepoint; the reason it failed, or None."""
        try:
            payload = parse_webhook(row.body or b"")
        except WebhookParseError as exc:
            return describe_error(exc)
        try:
            async with session.begin_nested():
                outcome = await self.applier.apply(
                    session, connection_id=row.connection_id, owner=row.owner, payload=payload
                )
        # What hostile or unexpected content can raise while it is written; a database that
        # fails raises something else and the job is retried.
        except (IntegrityError, DataError, ValueError, TypeError, KeyError) as exc:
            return describe_error(exc)
        row.state, row.error, row.result = "processed", None, outcome.public()
        return None

    # --- deliveries: list, show, replay ----------------------------------------------------------
    async def list(
        self,
        session: AsyncSession,
        *,
        owner: str | None,
        state: str | None = None,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> DeliveryPage:
        if state is not None and state not in WEBHOOK_DELIVERY_STATES:
            raise ServiceError(
                f"unknown state {state!r}: one of {', '.join(WEBHOOK_DELIVERY_STATES)}",
                code="bad_request",
            )
        size = DEFAULT_PAGE if limit is None else limit
        if not 1 <= size <= MAX_PAGE:
            raise ServiceError(f"limit must be 1 to {MAX_PAGE}", code="bad_request")
        before: int | None = None
        if cursor:
            if not cursor.isdigit() or len(cursor) > 19:
                raise ServiceError(
                    "invalid cursor: pass the next_cursor of the previous page", code="bad_request"
                )
            before = int(cursor)
        rows = await DeliveryRepository(session).page(
            owner=owner, state=state, before_id=before, limit=size
        )
        more = len(rows) > size
        rows = rows[:size]
        return DeliveryPage(rows, str(rows[-1].id) if more and rows else None)

    async def get(
        self, session: AsyncSession, delivery_id: int, *, owner: str | None
    ) -> WebhookDelivery:
        found = await DeliveryRepository(session).find(delivery_id, owner=owner)
        if found is None:
            raise NotFound(
                f"no webhook delivery {delivery_id}" + (f" for owner {owner!r}" if owner else ""),
                code="delivery_not_found",
            )
        return found

    async def replay(
        self, session: AsyncSession, delivery_id: int, *, owner: str | None, actor: str
    ) -> WebhookDelivery:
        """Apply a processed or failed delivery again (after a fix; an event older than the
        mirror still changes nothing)."""
        row = await self.get(session, delivery_id, owner=owner)
        if row.state == "duplicate":
            raise Conflict(
                f"delivery {delivery_id} is a duplicate of {row.duplicate_of}: replay that one"
            )
        if row.state == "received":
            raise Conflict(f"delivery {delivery_id} is waiting to be applied already")
        row.state, row.error, row.result, row.processed_at = "received", None, None, None
        await self.enqueue_processing(session, row.connection_id, row.owner, [row.id])
        AuditRepository(session).record(
            actor=actor,
            action="webhook.replay",
            success=True,
            owner=row.owner,
            connection_id=row.connection_id,
            message=f"webhook delivery {row.id} queued to be applied again",
            details={"delivery_id": row.id},
        )
        return row

    # --- housekeeping ----------------------------------------------------------------------------
    async def requeue_stranded(self, *, older_than: timedelta = timedelta(minutes=10)) -> int:
        """Deliveries still ``received`` long after they arrived (their job was cancelled, or
        failed for good): queued again. Processing takes only ``received`` rows, so a job that
        was merely slow does no harm."""
        async with self.db.transaction() as session:
            repo = DeliveryRepository(session)
            stranded = await repo.received_before(datetime.now(UTC) - older_than, limit=500)
            grouped: dict[str, tuple[str, list[int]]] = {}
            for delivery_id, connection_id, owner in stranded:
                grouped.setdefault(connection_id, (owner, []))[1].append(delivery_id)
            for connection_id, (owner, ids) in grouped.items():
                await self.enqueue_processing(session, connection_id, owner, ids)
        return len(stranded)

    async def purge(self) -> int:
        keep = timedelta(days=self.settings.webhooks.retention_days)
        before = datetime.now(UTC) - keep
        async with self.db.transaction() as session:
            return await DeliveryRepository(session).purge(done_before=before, failed_before=before)

    # --- the subscription's side of a connection's life -------------------------------------------
    async def on_connected(self, session: AsyncSession, connection: Connection) -> None:
        """A connection became active: it gets a URL secret if it has none, and — unless
        auto-subscription is off — a ``webhooks.subscribe`` job in the same commit."""
        if connection.webhook_secret_enc is None:
            self.new_secret(connection)
        self.targets.forget(connection.id)
        if not self.auto_subscribe:
            return
        subscriptions = SubscriptionRepository(session)
        row = await subscriptions.ensure(connection.id, connection.owner)
        row.owner = connection.owner
        if row.state != "active":
            row.state = "pending"
        # A disconnect's unsubscribe that has not run yet must not remove the new subscription.
        row.unsubscribe_token_enc = None
        row.unsubscribe_host = None
        await self.queue_subscribe(session, connection.id, connection.owner)

    async def queue_subscribe(
        self, session: AsyncSession, connection_id: str, owner: str, *, check: bool = False
    ) -> None:
        await self.queue.enqueue(
            session,
            kind=SUBSCRIBE,
            payload={"check": check},
            owner=owner,
            connection_id=connection_id,
            ordering_key=subscription_ordering_key(connection_id),
            dedup_key=f"{SUBSCRIBE}:{connection_id}",
        )

    async def on_disconnecting(self, session: AsyncSession, connection: Connection) -> None:
        """The owner disconnects: the webhook is removed from amoCRM by a job, best effort.
        The disconnect erases the connection's tokens, so the job gets a copy of the access
        token (still encrypted) in the subscription row, and erases it when done."""
        self.targets.forget(connection.id)
        row = await SubscriptionRepository(session).of(connection.id)
        if row is None or row.state == "unsubscribed":
            return
        if (
            self.auto_subscribe
            and connection.access_token_enc is not None
            and connection.webhook_secret_enc is not None
        ):
            row.unsubscribe_token_enc = connection.access_token_enc
            row.unsubscribe_host = connection.host
            await self.queue.enqueue(
                session,
                kind=UNSUBSCRIBE,
                payload={"connection_id": connection.id},
                owner=connection.owner,
                max_attempts=3,
            )
        row.state = "unsubscribed"

    async def subscription(self, session: AsyncSession, owner: str) -> dict[str, Any]:
        row = await SubscriptionRepository(session).for_owner(owner)
        connection = await WebhookConnectionRepository(session).owned_by(owner)
        secret = self.secret_of(connection) if connection is not None else None
        return subscription_out(
            owner,
            connection.id if connection is not None else None,
            row,
            self.masked(secret) if secret else None,
        )


def _row(item: Incoming, *, state: str, duplicate_of: int | None = None) -> dict[str, Any]:
    return {
        "connection_id": item.target.connection_id,
        "owner": item.target.owner,
        "received_at": item.received_at,
        "body": item.body if duplicate_of is None else None,
        "content_type": item.content_type,
        "headers": item.headers,
        "body_hash": item.body_hash,
        "state": state,
        "duplicate_of": duplicate_of,
        "attempts": 0,
    }
