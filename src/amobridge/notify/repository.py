"""SQL of the events outbox: subscriptions, events, their deliveries and the delivery log.

Nothing here is owner-scoped: every route of this feature is for admins, and the delivery job
works by id."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, exists, select, update

from amobridge.storage.repository import Repository
from amobridge.storage.tables import (
    Event,
    EventDelivery,
    EventDeliveryAttempt,
    EventSubscription,
)

UNFINISHED = ("pending",)


class SubscriptionRepository(Repository[EventSubscription]):
    model = EventSubscription

    async def all(self) -> list[EventSubscription]:
        found = await self.session.scalars(
            select(EventSubscription).order_by(EventSubscription.created_at, EventSubscription.id)
        )
        return list(found)

    async def remove(self, subscription_id: str) -> bool:
        gone = await self.session.execute(
            delete(EventSubscription)
            .where(EventSubscription.id == subscription_id)
            .returning(EventSubscription.id)
        )
        return gone.first() is not None


class EventRepository(Repository[Event]):
    model = Event

    async def purge(self, *, before: datetime, limit: int = 500) -> int:
        """Events older than ``before`` whose deliveries are all finished (and those the
        deliveries' cascade takes with them); how many."""
        unfinished = exists().where(
            EventDelivery.event_id == Event.id, EventDelivery.state.in_(UNFINISHED)
        )
        ids = list(
            await self.session.scalars(
                select(Event.id).where(Event.created_at < before, ~unfinished).limit(limit)
            )
        )
        if not ids:
            return 0
        # Explicit, not only by the foreign keys' cascade: it holds whatever the database's
        # foreign key setting.
        deliveries = select(EventDelivery.id).where(EventDelivery.event_id.in_(ids))
        await self.session.execute(
            delete(EventDeliveryAttempt).where(EventDeliveryAttempt.delivery_id.in_(deliveries))
        )
        await self.session.execute(delete(EventDelivery).where(EventDelivery.event_id.in_(ids)))
        await self.session.execute(delete(Event).where(Event.id.in_(ids)))
        return len(ids)


class DeliveryRepository(Repository[EventDelivery]):
    model = EventDelivery

    async def with_event(self, delivery_id: int) -> tuple[EventDelivery, Event] | None:
        row = (
            await self.session.execute(
                select(EventDelivery, Event)
                .join(Event, Event.id == EventDelivery.event_id)
                .where(EventDelivery.id == delivery_id)
            )
        ).first()
        return None if row is None else (row[0], row[1])

    async def page(
        self,
        *,
        event_type: str | None,
        state: str | None,
        subscription_id: str | None,
        owner: str | None,
        before_id: int | None,
        limit: int,
    ) -> list[EventDelivery]:
        """Newest first; one more than ``limit`` when there is a next page."""
        statement = select(EventDelivery)
        if event_type is not None:
            statement = statement.where(EventDelivery.event_type == event_type)
        if state is not None:
            statement = statement.where(EventDelivery.state == state)
        if subscription_id is not None:
            statement = statement.where(EventDelivery.subscription_id == subscription_id)
        if owner is not None:
            statement = statement.where(EventDelivery.owner == owner)
        if before_id is not None:
            statement = statement.where(EventDelivery.id < before_id)
        found = await self.session.scalars(
            statement.order_by(EventDelivery.id.desc()).limit(limit + 1)
        )
        return list(found)

    async def attempts(self, delivery_id: int) -> list[EventDeliveryAttempt]:
        found = await self.session.scalars(
            select(EventDeliveryAttempt)
            .where(EventDeliveryAttempt.delivery_id == delivery_id)
            .order_by(EventDeliveryAttempt.id)
        )
        return list(found)

    def log_attempt(
        self,
        delivery_id: int,
        *,
        attempt: int,
        started_at: datetime,
        status_code: int | None,
        duration_ms: int,
        error: str | None,
    ) -> None:
        self.session.add(
            EventDeliveryAttempt(
                delivery_id=delivery_id,
                attempt=attempt,
                started_at=started_at,
                status_code=status_code,
                duration_ms=duration_ms,
                error=error,
            )
        )

    async def settle(self, delivery_id: int, **values: Any) -> None:
        """One attempt's outcome on the delivery: its fields, and one more attempt counted."""
        await self.session.execute(
            update(EventDelivery)
            .where(EventDelivery.id == delivery_id)
            .values(attempts=EventDelivery.attempts + 1, **values)
        )

    async def cancel_for(self, subscription_id: str, *, now: datetime) -> int:
        """The unfinished deliveries to a subscription, cancelled; how many."""
        done = await self.session.execute(
            update(EventDelivery)
            .where(
                EventDelivery.subscription_id == subscription_id,
                EventDelivery.state.in_(UNFINISHED),
            )
            .values(state="cancelled", next_attempt_at=None, updated_at=now)
            .returning(EventDelivery.id)
        )
        return len(done.all())

    async def by_ids(self, ids: Sequence[int]) -> list[EventDelivery]:
        found = await self.session.scalars(select(EventDelivery).where(EventDelivery.id.in_(ids)))
        return list(found)
