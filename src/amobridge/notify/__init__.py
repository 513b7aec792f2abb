"""Events to the host app: what changed, POSTed to the host app's endpoints, so it never polls.

The public interface, for the features whose changes are events:

- **Emit** inside the unit of work that makes the change (no commit of its own)::

      await services.notify.emit(
          session, "lead.stage_changed", owner=lead.owner, connection_id=lead.connection_id,
          data={"lead": lead_summary(lead), "from": {...}, "to": {...}},
      )
      await services.notify.emit_lead(session, "lead.created", lead, source="amobridge")

  The event and one delivery per endpoint that wants its type are written in that unit, with a
  ``notify.deliver`` job each (the transactional outbox): an event exists if and only if the
  change committed, and nothing is written when no endpoint wants it. The types are
  :data:`EVENT_TYPES`; ``data`` is a JSON object of the caller's.

- **Endpoints**: ``AMOBRIDGE_EVENTS__URL`` (with its secret and an optional type filter), the
  ones added through ``POST /event-subscriptions`` (secret encrypted with the service's
  keyring), and ``AMOBRIDGE_HOOKS__REAUTH_CALLBACK_URL``, the earlier versions' reauth callback,
  which gets ``connection.reauth_required`` only, in its old body.

- **Delivery** (``tasks.py``): signed as Standard Webhooks say, retried by the job queue on
  any answer but a 2xx, each attempt in the delivery log. Per endpoint, order is not kept: two
  events may arrive in either order (``data`` carries what the host app needs to order them).

See docs/sync.md, "Events to the host app".
"""

from amobridge.notify.service import (
    DELIVER_KIND,
    EVENT_TYPES,
    Endpoint,
    NotifyService,
    lead_summary,
)

__all__ = ["DELIVER_KIND", "EVENT_TYPES", "Endpoint", "NotifyService", "lead_summary"]
