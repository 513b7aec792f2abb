"""The events outbox: emit an event in the caller's unit of work, the endpoints that get it, the
signed request each delivery sends, and the admin's view (subscriptions, the delivery log,
retry). Nothing here commits: the caller's unit does.

**Signing** follows Standard Webhooks and uses its project's own library (``standardwebhooks``,
no dependencies, the same algorithm as its Node/TypeScript package the host app verifies with):
``webhook-id`` is the event's id (the same on every attempt: the host app deduplicates by it),
``webhook-timestamp`` the attempt's Unix time, ``webhook-signature`` ``v1,<base64 HMAC-SHA256>``
of ``id.timestamp.body`` with the endpoint's secret (``whsec_`` + base64 of its bytes).

**The reauth callback of earlier versions** (``AMOBRIDGE_HOOKS__REAUTH_CALLBACK_URL``) is the
endpoint ``legacy-reauth``: ``connection.reauth_required`` only, with the body it always had
(``{"event", "owner", "connection_id", "reason", "fix"}``) and, with
``AMOBRIDGE_HOOKS__REAUTH_CALLBACK_SECRET``, its ``X-Amobridge-Signature: sha256=<hex HMAC of
the body>``; the Standard Webhooks headers come too (signed with that secret's bytes).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncSession
from standardwebhooks import Webhook

from amobridge.errors import ConfigurationError, Conflict, NotFound, ServiceError
from amobridge.notify.repository import DeliveryRepository, EventRepository, SubscriptionRepository
from amobridge.settings import Settings
from amobridge.storage.crypto import Keyring
from amobridge.storage.tables import (
    EVENT_DELIVERY_STATES,
    Event,
    EventDelivery,
    EventDeliveryAttempt,
    EventSubscription,
    Lead,
)

if TYPE_CHECKING:
    from amobridge.jobs import JobQueue

EVENT_TYPES = (
    "lead.created",
    "lead.updated",
    "lead.stage_changed",
    "lead.deleted",
    "lead.sync_failed",
    "connection.reauth_required",
    "connection.disconnected",
)
# A filter names a type, or a family: ``lead.*``.
TYPE_FAMILIES = tuple(sorted({t.split(".", 1)[0] + ".*" for t in EVENT_TYPES}))
DELIVER_KIND = "notify.deliver"
SETTINGS_ID = "settings"
LEGACY_ID = "legacy-reauth"
LEGACY_TYPES = ("connection.reauth_required",)
MAX_PAGE = 200
DEFAULT_PAGE = 50
_CACHE = "amobridge.notify.endpoints"
_SECRET_BYTES = 32


def dedup_key(delivery_id: int) -> str:
    return f"{DELIVER_KIND}:{delivery_id}"


def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` and base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(_SECRET_BYTES)).decode()


def new_event_id() -> str:
    return "evt_" + uuid.uuid4().hex


def matches(filters: tuple[str, ...] | None, event_type: str) -> bool:
    """Does a type filter (None: everything) take ``event_type``?"""
    if filters is None:
        return True
    return any(
        f == event_type or (f.endswith(".*") and event_type.startswith(f[:-1])) for f in filters
    )


def lead_summary(lead: Lead) -> dict[str, Any]:
    """A lead as events carry it: its ids, what amoCRM shows of it, its sync state. The whole
    lead is ``GET /leads/{id}``."""
    return {
        "id": lead.id,
        "amo_id": lead.amo_id,
        "external_id": lead.external_id,
        "name": lead.name,
        "price": lead.price,
        "pipeline_id": lead.pipeline_id,
        "stage_id": lead.status_id,
        "responsible_user_id": lead.responsible_user_id,
        "tags": list(lead.tags or []),
        "state": lead.sync_state,
        "deleted": bool(lead.deleted),
        "amo_updated_at": _iso(lead.amo_updated_at),
        "updated_at": _iso(lead.updated_at),
    }


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Endpoint:
    """Where deliveries of one subscription go. ``secret`` is plaintext and only filled for the
    delivery that signs with it (never shown, logged or in a repr)."""

    id: str
    url: str
    types: tuple[str, ...] | None
    source: str  # "api", "settings" or "legacy"
    description: str | None = None
    created_at: datetime | None = None
    secret: str | None = field(default=None, repr=False)

    @property
    def legacy(self) -> bool:
        return self.source == "legacy"

    def wants(self, event_type: str) -> bool:
        return matches(self.types, event_type)


@dataclass(frozen=True)
class DeliveryPage:
    deliveries: list[EventDelivery]
    next_cursor: str | None


class NotifyService:
    def __init__(self, settings: Settings, *, keyring: Keyring, queue: JobQueue) -> None:
        self.settings = settings
        self._keyring = keyring
        self.queue = queue
        unknown = [
            t for t in settings.events.types if t not in EVENT_TYPES and t not in TYPE_FAMILIES
        ]
        if unknown:
            raise ConfigurationError(
                f"AMOBRIDGE_EVENTS__TYPES: unknown event type {unknown[0]!r}: use "
                + ", ".join((*EVENT_TYPES, *TYPE_FAMILIES))
            )

    @property
    def public_url(self) -> str:
        return self.settings.server.public_url.rstrip("/")

    # --- endpoints -----------------------------------------------------------------------------

    def configured(self) -> list[Endpoint]:
        """The endpoints the settings name (without their secrets)."""
        found: list[Endpoint] = []
        events, hooks = self.settings.events, self.settings.hooks
        if events.url:
            types = tuple(events.types) if events.types else None
            found.append(Endpoint(SETTINGS_ID, events.url, types, "settings"))
        if hooks.reauth_callback_url:
            found.append(Endpoint(LEGACY_ID, hooks.reauth_callback_url, LEGACY_TYPES, "legacy"))
        return found

    async def endpoints(self, session: AsyncSession) -> list[Endpoint]:
        """Every endpoint, the settings' first (without secrets); read once per unit of work."""
        cached: list[Endpoint] | None = session.info.get(_CACHE)
        if cached is not None:
            return cached
        found = self.configured() + [
            _from_row(row) for row in await SubscriptionRepository(session).all()
        ]
        session.info[_CACHE] = found
        return found

    async def endpoint(self, session: AsyncSession, subscription_id: str) -> Endpoint | None:
        """The endpoint deliveries of ``subscription_id`` go to now, with its secret; None when
        it was deleted or is no longer in the settings."""
        events, hooks = self.settings.events, self.settings.hooks
        if subscription_id == SETTINGS_ID:
            if not events.url or events.secret is None:
                return None
            types = tuple(events.types) if events.types else None
            return Endpoint(
                SETTINGS_ID,
                events.url,
                types,
                "settings",
                secret=events.secret.get_secret_value(),
            )
        if subscription_id == LEGACY_ID:
            if not hooks.reauth_callback_url:
                return None
            secret = hooks.reauth_callback_secret
            return Endpoint(
                LEGACY_ID,
                hooks.reauth_callback_url,
                LEGACY_TYPES,
                "legacy",
                secret=secret.get_secret_value() if secret is not None else None,
            )
        row = await SubscriptionRepository(session).get(subscription_id)
        if row is None:
            return None
        base = _from_row(row)
        return Endpoint(
            base.id,
            base.url,
            base.types,
            base.source,
            base.description,
            base.created_at,
            secret=self._keyring.decrypt(row.secret_enc),
        )

    # --- emit ----------------------------------------------------------------------------------

    async def emit(
        self,
        session: AsyncSession,
        event_type: str,
        *,
        owner: str | None,
        data: dict[str, Any],
        connection_id: str | None = None,
    ) -> Event | None:
        """Write ``event_type`` and a delivery (with its job) for each endpoint that wants it,
        in the caller's unit of work; None when none does (nothing is written)."""
        if event_type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {event_type!r}: one of {', '.join(EVENT_TYPES)}")
        if not isinstance(data, dict):
            raise TypeError("an event's data is a JSON object (a dict)")
        json.dumps(data)  # refuse what the JSON column could not store, here and now
        targets = [e for e in await self.endpoints(session) if e.wants(event_type)]
        if not targets:
            return None
        now = datetime.now(UTC)
        events = EventRepository(session)
        event = events.add(
            Event(
                id=new_event_id(),
                type=event_type,
                owner=owner,
                connection_id=connection_id,
                data=data,
                created_at=now,
            )
        )
        deliveries = DeliveryRepository(session)
        rows = [
            deliveries.add(
                EventDelivery(
                    event_id=event.id,
                    event_type=event_type,
                    owner=owner,
                    subscription_id=target.id,
                    url=target.url,
                    state="pending",
                    attempts=0,
                    next_attempt_at=now,
                    created_at=now,
                    updated_at=now,
                )
            )
            for target in targets
        ]
        await deliveries.flush()
        for row in rows:
            row.job_id = (await self._enqueue(session, row)).id
        return event

    async def emit_lead(
        self, session: AsyncSession, event_type: str, lead: Lead, **data: Any
    ) -> Event | None:
        """:meth:`emit` of a lead event: ``data`` is ``{"lead": lead_summary(lead), **data}``."""
        return await self.emit(
            session,
            event_type,
            owner=lead.owner,
            connection_id=lead.connection_id,
            data={
                "owner": lead.owner,
                "connection_id": lead.connection_id,
                "lead": lead_summary(lead),
                **data,
            },
        )

    async def amocrm_lead_change(
        self,
        session: AsyncSession,
        lead: Lead,
        action: str,
        changed: list[str],
        before: tuple[int | None, int | None] | None,
    ) -> None:
        """A lead change amoCRM's webhooks brought into the mirror, as events (the webhook
        applier's ``on_lead``): ``lead.deleted``; ``lead.created`` for a lead new to the mirror
        (``source: amocrm``) or for our own create whose webhook came before the push stored its
        id (``source: amobridge``, the push then announces nothing); ``lead.stage_changed`` for
        a move to another stage or pipeline, and ``lead.updated`` for any other field."""
        if action == "delete":
            await self.emit_lead(session, "lead.deleted", lead, source="amocrm")
            return
        if action in ("created", "adopted"):
            source = "amocrm" if action == "created" else "amobridge"
            await self.emit_lead(session, "lead.created", lead, source=source)
            return
        stage = {"pipeline_id", "status_id"}
        if before is not None and stage & set(changed):
            await self.emit_lead(
                session,
                "lead.stage_changed",
                lead,
                source="amocrm",
                **{
                    "from": {"pipeline_id": before[0], "stage_id": before[1]},
                    "to": {"pipeline_id": lead.pipeline_id, "stage_id": lead.status_id},
                },
            )
        others = [name for name in changed if name not in stage]
        if others:
            await self.emit_lead(session, "lead.updated", lead, source="amocrm", changed=others)

    async def _enqueue(self, session: AsyncSession, delivery: EventDelivery) -> Any:
        # No connection_id: a connection's pauses (reauth_required, disconnected) must not hold
        # the event that tells the host app about them.
        return await self.queue.enqueue(
            session,
            kind=DELIVER_KIND,
            payload={"delivery_id": delivery.id},
            owner=delivery.owner,
            dedup_key=dedup_key(delivery.id),
            max_attempts=self.settings.events.max_attempts,
        )

    # --- the request a delivery sends ----------------------------------------------------------

    def body(self, event: Event, endpoint: Endpoint) -> bytes:
        """The JSON body, the same bytes on every attempt."""
        if endpoint.legacy:
            payload: dict[str, Any] = {"event": event.type, **event.data}
        else:
            payload = {"type": event.type, "timestamp": _iso(event.created_at), "data": event.data}
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()

    def headers(
        self, event: Event, body: bytes, endpoint: Endpoint, *, at: datetime
    ) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "amobridge",
            "webhook-id": event.id,
            "webhook-timestamp": str(int(at.timestamp())),
        }
        if endpoint.secret is None:
            return headers  # only the legacy endpoint may have none
        key: str | bytes = endpoint.secret.encode() if endpoint.legacy else endpoint.secret
        headers["webhook-signature"] = Webhook(key).sign(event.id, at, body)
        if endpoint.legacy:
            digest = hmac.new(endpoint.secret.encode(), body, hashlib.sha256).hexdigest()
            headers["X-Amobridge-Signature"] = "sha256=" + digest
        return headers

    # --- subscriptions (admin) -----------------------------------------------------------------

    async def subscribe(
        self,
        session: AsyncSession,
        *,
        url: str,
        types: list[str] | None,
        description: str | None,
    ) -> tuple[Endpoint, str]:
        """A new endpoint and its secret (shown this once; stored encrypted)."""
        secret = new_secret()
        row = SubscriptionRepository(session).add(
            EventSubscription(
                url=url,
                secret_enc=self._keyring.encrypt(secret),
                types=sorted(set(types)) if types else None,
                description=description,
                created_at=datetime.now(UTC),
            )
        )
        await session.flush()
        session.info.pop(_CACHE, None)
        return _from_row(row), secret

    async def unsubscribe(self, session: AsyncSession, subscription_id: str) -> int:
        """Delete an endpoint added through the API; its unfinished deliveries are cancelled
        (how many)."""
        if subscription_id in (SETTINGS_ID, LEGACY_ID):
            variable = (
                "AMOBRIDGE_EVENTS__URL"
                if subscription_id == SETTINGS_ID
                else "AMOBRIDGE_HOOKS__REAUTH_CALLBACK_URL"
            )
            raise Conflict(
                f"subscription {subscription_id!r} comes from {variable}: unset it there and "
                "restart the service",
                code="subscription_in_settings",
            )
        if not await SubscriptionRepository(session).remove(subscription_id):
            raise _no_subscription(subscription_id)
        session.info.pop(_CACHE, None)
        return await DeliveryRepository(session).cancel_for(subscription_id, now=datetime.now(UTC))

    # --- the delivery log (admin) --------------------------------------------------------------

    async def deliveries(
        self,
        session: AsyncSession,
        *,
        event_type: str | None = None,
        state: str | None = None,
        subscription_id: str | None = None,
        owner: str | None = None,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> DeliveryPage:
        if state is not None and state not in EVENT_DELIVERY_STATES:
            raise ServiceError(
                f"unknown delivery state {state!r}: one of {', '.join(EVENT_DELIVERY_STATES)}"
            )
        size = DEFAULT_PAGE if limit is None else limit
        if not 1 <= size <= MAX_PAGE:
            raise ServiceError(f"limit must be 1 to {MAX_PAGE}")
        before: int | None = None
        if cursor:
            if not cursor.isdigit() or len(cursor) > 19:
                raise ServiceError(
                    "invalid cursor: pass the next_cursor of the previous page",
                    code="invalid_cursor",
                )
            before = int(cursor)
        rows = await DeliveryRepository(session).page(
            event_type=event_type,
            state=state,
            subscription_id=subscription_id,
            owner=owner,
            before_id=before,
            limit=size,
        )
        more = len(rows) > size
        rows = rows[:size]
        return DeliveryPage(rows, str(rows[-1].id) if more and rows else None)

    async def delivery(
        self, session: AsyncSession, delivery_id: int
    ) -> tuple[EventDelivery, Event, list[EventDeliveryAttempt]]:
        found = await DeliveryRepository(session).with_event(delivery_id)
        if found is None:
            raise NotFound(f"no event delivery {delivery_id}", code="event_delivery_not_found")
        delivery, event = found
        return delivery, event, await DeliveryRepository(session).attempts(delivery_id)

    async def retry(self, session: AsyncSession, delivery_id: int) -> EventDelivery:
        """Send a failed (or delivered) delivery again now, with all its attempts."""
        repo = DeliveryRepository(session)
        found = await repo.with_event(delivery_id)
        if found is None:
            raise NotFound(f"no event delivery {delivery_id}", code="event_delivery_not_found")
        delivery = found[0]
        if delivery.state == "pending":
            raise Conflict(
                f"event delivery {delivery_id} is pending already: its job sends it (see "
                f"job {delivery.job_id})",
                code="delivery_pending",
            )
        if delivery.state == "cancelled":
            raise Conflict(
                f"event delivery {delivery_id} was cancelled with its subscription: there is "
                "no endpoint to send it to",
                code="delivery_cancelled",
            )
        if await self.endpoint(session, delivery.subscription_id) is None:
            raise Conflict(
                f"the endpoint of event delivery {delivery_id} is no longer configured",
                code="delivery_cancelled",
            )
        now = datetime.now(UTC)
        delivery.state = "pending"
        delivery.next_attempt_at = now
        delivery.updated_at = now
        await session.flush()
        delivery.job_id = (await self._enqueue(session, delivery)).id
        await session.flush()
        return delivery

    async def purge(self, session: AsyncSession, *, before: datetime) -> int:
        return await EventRepository(session).purge(before=before)


def _from_row(row: EventSubscription) -> Endpoint:
    return Endpoint(
        row.id,
        row.url,
        tuple(row.types) if row.types else None,
        "api",
        row.description,
        row.created_at,
    )


def _no_subscription(subscription_id: str) -> NotFound:
    return NotFound(
        f"no event subscription {subscription_id!r}", code="event_subscription_not_found"
    )
