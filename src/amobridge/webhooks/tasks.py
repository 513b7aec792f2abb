"""The webhook jobs and the housekeeping round.

- ``webhooks.process``: apply stored deliveries to the mirror (``service.py``); no amoCRM call.
- ``webhooks.subscribe``: make sure amoCRM sends the connection's changes to its URL —
  ``GET /api/v4/webhooks?filter[destination]=…``, and ``POST /api/v4/webhooks`` when the
  subscription is missing, disabled or lacks events (posting a known destination updates it and
  re-enables it). Queued when a connection becomes active, and by the periodic check for every
  active connection each ``AMOBRIDGE_WEBHOOKS__CHECK_INTERVAL_SECONDS``: a subscription amoCRM
  disabled (after more than 100 failed deliveries in 2 hours) or someone removed is subscribed
  again, with an audit entry (``webhook.restored``). amoCRM refusing it (403: the connecting user
  is no account administrator) fails the job for good, audited with what to do.
- ``webhooks.unsubscribe``: after a disconnect, ``DELETE /api/v4/webhooks`` with the destination,
  best effort (three attempts for amoCRM's 5xx and network failures), audited either way.

No job logs or stores the URL secret: destinations are shown with the secret cut to 4 characters.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from amobridge.amo.auth import StaticTokenProvider
from amobridge.amo.client import AmoClient
from amobridge.amo.errors import (
    AmoBanned,
    AmoError,
    AmoForbidden,
    AmoServerError,
    AmoTransportError,
)
from amobridge.amo.models.webhooks import WebhookSubscription as AmoWebhook
from amobridge.audit import AuditRepository
from amobridge.connect.clients import ConnectionClients
from amobridge.connect.repository import ConnectionRepository
from amobridge.jobs import Job, JobContext, JobHandlers
from amobridge.jobs.handlers import describe_error
from amobridge.storage.crypto import Keyring
from amobridge.storage.db import Database
from amobridge.webhooks.repository import SubscriptionRepository, WebhookConnectionRepository
from amobridge.webhooks.service import (
    EVENTS,
    PROCESS,
    SUBSCRIBE,
    UNSUBSCRIBE,
    WebhookService,
)

log = logging.getLogger("amobridge.webhooks")

PROCESS_BATCH = 10
NOT_ADMIN = (
    "amoCRM refused to subscribe the webhook ({error}): only an account administrator's grant "
    "may manage webhooks. Connect the account again as an administrator, or add the webhook by "
    "hand in amoCRM (Settings → Integrations → WEB HOOKS) with the events {events}"
)


class WebhookTasks:
    def __init__(
        self,
        db: Database,
        *,
        keyring: Keyring,
        service: WebhookService,
        clients: ConnectionClients,
    ) -> None:
        self.db = db
        self.keyring = keyring
        self.service = service
        self.clients = clients

    def register(self, handlers: JobHandlers) -> None:
        handlers.register(PROCESS, self.process, batch_size=PROCESS_BATCH)
        handlers.register(SUBSCRIBE, self.subscribe)
        handlers.register(UNSUBSCRIBE, self.unsubscribe)

    # --- webhooks.process ------------------------------------------------------------------------
    async def process(self, context: JobContext, jobs: Sequence[Job]) -> None:
        for job in jobs:
            raw = job.payload.get("deliveries")
            ids = [i for i in raw if isinstance(i, int)] if isinstance(raw, list) else []
            context.succeed(job, await self.service.process(ids))

    # --- webhooks.subscribe ----------------------------------------------------------------------
    async def subscribe(self, context: JobContext, jobs: Sequence[Job]) -> None:
        for job in jobs:
            await self._subscribe(context, job)

    async def _secret(self, connection_id: str) -> str | None:
        """The connection's URL secret; a new one when it has none that can be read (a
        connection from before secrets were encrypted)."""
        async with self.db.read() as session:
            row = await ConnectionRepository(session, self.keyring).get(connection_id)
            if row is None or row.status == "disconnected":
                return None
            secret = self.service.secret_of(row)
        if secret is not None:
            return secret
        async with self.db.transaction() as session:
            row = await ConnectionRepository(session, self.keyring).get(connection_id)
            if row is None:
                return None
            return self.service.secret_of(row) or self.service.new_secret(row)

    async def _subscribe(self, context: JobContext, job: Job) -> None:
        connection_id = job.connection_id or ""
        secret = await self._secret(connection_id)
        if secret is None:
            context.succeed(job, {"skipped": "the connection is gone or disconnected"})
            return
        destination = self.service.destination(secret)
        shown = self.service.masked(secret)
        client = await context.client(job)
        try:
            found = await client.webhooks.list(destination=destination)
            current = next((w for w in found if w.destination == destination), None)
            healthy = (
                current is not None
                and not current.disabled
                and set(EVENTS) <= set(current.settings or [])
            )
            made = current if healthy else await client.webhooks.subscribe(destination, EVENTS)
        except AmoForbidden as exc:
            if isinstance(exc, AmoBanned):
                raise
            message = NOT_ADMIN.format(error=describe_error(exc), events=", ".join(EVENTS))
            await self._failed(connection_id, job.owner or "", message, shown)
            context.fail(job, message)
            return
        except AmoError as exc:
            await self._note(connection_id, f"will try again: {describe_error(exc)}")
            raise
        assert made is not None
        result = await self._subscribed(
            connection_id, job.owner or "", made, shown, was=current, subscribed=not healthy
        )
        context.succeed(job, result)

    async def _subscribed(
        self,
        connection_id: str,
        owner: str,
        made: AmoWebhook,
        shown: str,
        *,
        was: AmoWebhook | None,
        subscribed: bool,
    ) -> dict[str, object]:
        now = datetime.now(UTC)
        async with self.db.transaction() as session:
            repo = SubscriptionRepository(session)
            row = await repo.ensure(connection_id, owner)
            before = row.state
            audit = AuditRepository(session)
            row.checked_at = now
            row.amo_webhook_id = made.id
            row.settings = list(made.settings or EVENTS)
            if made.disabled:
                row.state = "failed"
                row.last_error = (
                    "amoCRM keeps the webhook disabled: re-enable it in amoCRM (Settings → "
                    "Integrations → WEB HOOKS)"
                )
                audit.record(
                    actor="system",
                    action="webhook.restore_failed",
                    success=False,
                    owner=owner,
                    connection_id=connection_id,
                    message=f"the webhook {shown} is disabled in amoCRM and stays so",
                    error=row.last_error,
                )
                return {"webhook_id": made.id, "disabled": True}
            row.state = "active"
            row.last_error = None
            restored = subscribed and before == "active"
            if subscribed:
                row.subscribed_at = now
            if restored:
                why = (
                    "amoCRM had disabled it (deliveries failed)"
                    if was is not None and was.disabled
                    else "it was missing in amoCRM (removed, or its events changed)"
                    if was is None
                    else "its events had changed"
                )
                row.restores = (row.restores or 0) + 1
                row.restored_at = now
                audit.record(
                    actor="system",
                    action="webhook.restored",
                    success=True,
                    owner=owner,
                    connection_id=connection_id,
                    message=f"subscribed the webhook {shown} again: {why}; changes made in "
                    "amoCRM while it was off did not arrive",
                    details={"webhook_id": made.id},
                )
                log.warning("connection %s: webhook restored (%s)", connection_id, why)
            elif subscribed or before != "active":
                audit.record(
                    actor="system",
                    action="webhook.subscribed",
                    success=True,
                    owner=owner,
                    connection_id=connection_id,
                    message=f"amoCRM sends lead and contact changes to {shown}",
                    details={"webhook_id": made.id, "events": list(EVENTS)},
                )
        return {"webhook_id": made.id, "subscribed": subscribed, "restored": restored}

    async def _failed(self, connection_id: str, owner: str, message: str, shown: str) -> None:
        async with self.db.transaction() as session:
            row = await SubscriptionRepository(session).ensure(connection_id, owner)
            row.state = "failed"
            row.last_error = message
            row.checked_at = datetime.now(UTC)
            AuditRepository(session).record(
                actor="system",
                action="webhook.subscribe_failed",
                success=False,
                owner=owner,
                connection_id=connection_id,
                message=f"the webhook {shown} could not be subscribed",
                error=message,
            )

    async def _note(self, connection_id: str, error: str) -> None:
        async with self.db.transaction() as session:
            row = await SubscriptionRepository(session).of(connection_id)
            if row is not None:
                row.last_error = error

    # --- webhooks.unsubscribe --------------------------------------------------------------------
    async def unsubscribe(self, context: JobContext, jobs: Sequence[Job]) -> None:
        for job in jobs:
            await self._unsubscribe(context, job)

    async def _unsubscribe(self, context: JobContext, job: Job) -> None:
        connection_id = str(job.payload.get("connection_id") or "")
        async with self.db.read() as session:
            row = await SubscriptionRepository(session).of(connection_id)
            connection = await ConnectionRepository(session, self.keyring).get(connection_id)
            token_enc = row.unsubscribe_token_enc if row is not None else None
            host = row.unsubscribe_host if row is not None else None
            secret = self.service.secret_of(connection) if connection is not None else None
        if token_enc is None or host is None or secret is None:
            context.succeed(job, {"skipped": "nothing to unsubscribe (connected again?)"})
            return
        shown = self.service.masked(secret)
        # The connection's own client refuses a disconnected connection: this one carries the
        # access token it had, for this one request, and is closed at once.
        client = AmoClient(
            host,
            token_provider=StaticTokenProvider(self.keyring.decrypt(token_enc)),
            transport=self.clients.transport,
            base_url=self.clients.base_url,
        )
        error: str | None = None
        removed = False
        try:
            removed = await client.webhooks.unsubscribe(self.service.destination(secret))
        except (AmoServerError, AmoTransportError) as exc:
            if job.attempts < job.max_attempts:
                context.retry(job, exc)
                return
            error = describe_error(exc)
        except AmoError as exc:
            error = describe_error(exc)
        finally:
            await client.aclose()
        await self._unsubscribed(connection_id, job.owner, shown, removed=removed, error=error)
        context.succeed(job, {"removed": removed, "error": error})

    async def _unsubscribed(
        self, connection_id: str, owner: str | None, shown: str, *, removed: bool, error: str | None
    ) -> None:
        async with self.db.transaction() as session:
            row = await SubscriptionRepository(session).of(connection_id, for_update=True)
            if row is not None:
                row.unsubscribe_token_enc = None
                row.unsubscribe_host = None
                row.last_error = error
            AuditRepository(session).record(
                actor="system",
                action="webhook.unsubscribed" if error is None else "webhook.unsubscribe_failed",
                success=error is None,
                owner=owner,
                connection_id=connection_id,
                message=(
                    f"removed the webhook {shown} from amoCRM"
                    if removed
                    else f"the webhook {shown} was not in amoCRM any more"
                )
                if error is None
                else f"could not remove the webhook {shown} from amoCRM: remove it by hand "
                "(Settings → Integrations → WEB HOOKS); its deliveries are refused meanwhile",
                error=error,
            )

    # --- housekeeping ----------------------------------------------------------------------------
    async def check_subscriptions(self, *, interval: timedelta | None = None) -> int:
        """Queue a check of every active connection's subscription not checked for
        ``interval`` (default the setting), and a first subscription for active connections
        that have none; how many were queued."""
        if not self.service.auto_subscribe:
            return 0
        every = (
            interval
            if interval is not None
            else timedelta(seconds=self.service.settings.webhooks.check_interval_seconds)
        )
        queued = 0
        async with self.db.transaction() as session:
            subscriptions = SubscriptionRepository(session)
            for row in await WebhookConnectionRepository(session).without_subscription():
                if row.webhook_secret_enc is None:
                    self.service.new_secret(row)
                await subscriptions.ensure(row.id, row.owner)
                await self.service.queue_subscribe(session, row.id, row.owner)
                queued += 1
            due = await subscriptions.due_for_check(checked_before=datetime.now(UTC) - every)
            for connection_id, owner in due:
                await self.service.queue_subscribe(session, connection_id, owner, check=True)
                queued += 1
        return queued

    async def housekeeping(self) -> None:
        """One round: subscription checks, stranded deliveries queued again, old ones purged."""
        await self.check_subscriptions()
        await self.service.requeue_stranded()
        await self.service.purge()
