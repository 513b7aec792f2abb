"""The database schema (SQLAlchemy 2 declarative). Alembic migrations in ``migrations/`` create it;
``tests/migration`` checks that the migrated schema equals this one.

Columns ending in ``_enc`` hold Fernet ciphertext (``storage.crypto``), never plaintext. Times are
timezone-aware UTC. Owner-scoped tables carry ``owner``; they are read through repositories that
always filter by it (invariant 6).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every backend (SQLite stores naive text; we add UTC back on read)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime(), dict[str, Any]: JSON}


class Integration(Base):
    """An OAuth client: the configured one, or one the website button created for an owner."""

    __tablename__ = "integrations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    client_id: Mapped[str] = mapped_column(String(128), unique=True)
    client_secret_enc: Mapped[str] = mapped_column(Text)
    redirect_uri: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(16))  # settings | button | manual
    name: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Connection(Base):
    """One owner's link to one amoCRM account, with its encrypted tokens."""

    __tablename__ = "connections"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(255), unique=True)
    integration_id: Mapped[str | None] = mapped_column(
        ForeignKey("integrations.id", ondelete="SET NULL")
    )
    account_id: Mapped[int | None] = mapped_column(BigInteger)
    host: Mapped[str] = mapped_column(String(255))  # acme.amocrm.ru, acme.kommo.com
    status: Mapped[str] = mapped_column(String(24), default="active")
    # active | reauth_required | disconnected
    access_token_enc: Mapped[str | None] = mapped_column(Text)
    refresh_token_enc: Mapped[str | None] = mapped_column(Text)
    long_lived: Mapped[bool] = mapped_column(Boolean, default=False)
    expires_at: Mapped[datetime | None]
    # When the access token was issued: the refresh leeway is capped at half its lifetime, so a
    # short-lived token is not refreshed the moment it is stored.
    issued_at: Mapped[datetime | None]
    refresh_expires_at: Mapped[datetime | None]
    # Bumped by every write of the grant (connect, refresh, disconnect): cached clients compare it.
    token_version: Mapped[int] = mapped_column(Integer, default=0)
    last_refresh_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    refresh_lease_until: Mapped[datetime | None]
    refresh_lease_holder: Mapped[str | None] = mapped_column(String(64))
    # The URL secret of the connection's webhook (POST /webhooks/amocrm/{secret}): its SHA-256,
    # which an arriving webhook is looked up by, and the secret itself encrypted, so the
    # subscription's destination can be built again. NULL until the connection first needs one.
    webhook_secret_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    webhook_secret_enc: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (Index("ix_connections_status_expires", "status", "expires_at"),)


class OAuthState(Base):
    """A ``state`` we issued: bound to an owner, expiring, consumed once by the callback."""

    __tablename__ = "oauth_states"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the state value
    owner: Mapped[str] = mapped_column(String(255))
    flow: Mapped[str] = mapped_column(String(16))  # redirect | button
    return_to: Mapped[str] = mapped_column(String(16), default="web")  # web | app
    app_redirect: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    # The browser that started the flow: the SHA-256 of the cookie it holds, or "handle:<sha256>"
    # until a ``format=json`` link is first opened; NULL for a state no browser is bound to.
    browser_binding: Mapped[str | None] = mapped_column(String(80))
    # The pages at the flow's end: the language it started with (ru | en; NULL: the browser's),
    # and where a return=web success sends the browser back to (an allow-listed URL).
    lang: Mapped[str | None] = mapped_column(String(8))
    return_url: Mapped[str | None] = mapped_column(Text)
    # When the callback connected the account: the binding browser's reload shows the success
    # again (expires_at is then moved one lifetime on, so the row stays that long).
    succeeded_at: Mapped[datetime | None]

    __table_args__ = (Index("ix_oauth_states_expires_at", "expires_at"),)


class ButtonSecret(Base):
    """Credentials amoCRM POSTed for a button install: kept ≤ 10 min, used once, then deleted."""

    __tablename__ = "button_secrets"

    state_id: Mapped[str] = mapped_column(
        ForeignKey("oauth_states.id", ondelete="CASCADE"), primary_key=True
    )
    client_id: Mapped[str] = mapped_column(String(128))
    client_secret_enc: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]

    __table_args__ = (Index("ix_button_secrets_expires_at", "expires_at"),)


class UsedHookSignature(Base):
    """A signed amoCRM uninstall hook already acted on. The hook carries no timestamp and amoCRM
    signs the same ``client_uuid|account_id`` every time, so a logged hook URL would disconnect
    the account again: a second arrival of the same triple is refused as a replay. Rows of an
    account and integration are deleted when that account is connected again, so the next real
    uninstall works. ``id`` is the SHA-256 of ``client_uuid``, ``account_id`` and the signature."""

    __tablename__ = "used_hook_signatures"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    client_uuid: Mapped[str] = mapped_column(String(128))
    account_id: Mapped[int] = mapped_column(BigInteger)
    used_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        Index("ix_used_hook_signatures_client_uuid_account", "client_uuid", "account_id"),
    )


class ApiKey(Base):
    """A host app's API key. Only a SHA-256 of the key is stored; ``prefix`` identifies it."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(255))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # admin | app
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class AuditEntry(Base):
    """Who did what to which connection/lead/stage, with the outcome."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(255))  # api-key name, owner, system, amocrm
    owner: Mapped[str | None] = mapped_column(String(255))
    connection_id: Mapped[str | None] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(64))
    success: Mapped[bool] = mapped_column(Boolean)
    lead_id: Mapped[int | None] = mapped_column(BigInteger)
    stage_id: Mapped[int | None] = mapped_column(BigInteger)
    message: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict[str, Any] | None]

    __table_args__ = (
        Index("ix_audit_log_at", "at"),
        Index("ix_audit_log_owner_at", "owner", "at"),
    )


class RateLimitSlot(Base):
    """Cross-process pacing of one rate-limit key (``connect/ratelimit.py``). Times are unix
    seconds on the database's clock. ``grants``: the end times of the key's latest slots, written
    by a holder that hands the lease on; ``paused_until``: a pause amoCRM asked for (429
    ``retry_after``); ``lease_holder``/``lease_until``: the process pacing the key and until when;
    ``wanted_until``: another process waits for the lease (the holder hands it on)."""

    __tablename__ = "rate_limits"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    grants: Mapped[list[float]] = mapped_column(JSON, default=list)
    paused_until: Mapped[float] = mapped_column(Float, default=0.0)
    lease_holder: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[float] = mapped_column(Float, default=0.0, server_default=text("0"))
    wanted_until: Mapped[float] = mapped_column(Float, default=0.0, server_default=text("0"))

    __table_args__ = (Index("ix_rate_limits_lease_holder", "lease_holder"),)


# --- events to the host app (notify) -------------------------------------------------------------

# The states of one event's delivery to one endpoint (``event_deliveries.state``).
EVENT_DELIVERY_STATES = ("pending", "delivered", "failed", "cancelled")


class EventSubscription(Base):
    """An endpoint of the host app that events are POSTed to, added through the admin API (the
    one of ``AMOBRIDGE_EVENTS__URL`` lives in the settings, not here). ``secret_enc``: its
    signing secret, Fernet ciphertext like the tokens. ``types``: the event types it wants
    (``lead.*`` for a family); None for all."""

    __tablename__ = "event_subscriptions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    url: Mapped[str] = mapped_column(Text)
    secret_enc: Mapped[str] = mapped_column(Text)
    types: Mapped[list[str] | None] = mapped_column(JSON)
    description: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Event(Base):
    """Something that changed, written in the unit of work of the change itself (the
    transactional outbox): it exists if and only if the change committed. ``id`` is the
    ``webhook-id`` every delivery of it carries."""

    __tablename__ = "events"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    type: Mapped[str] = mapped_column(String(64))
    owner: Mapped[str | None] = mapped_column(String(255))
    connection_id: Mapped[str | None] = mapped_column(String(32))
    data: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_events_created_at", "created_at"),)


class EventDelivery(Base):
    """One event to one endpoint, sent by a ``notify.deliver`` job (``job_id``): ``pending``
    until the endpoint answers 2xx (``delivered``), ``failed`` once the job is out of attempts,
    ``cancelled`` when its subscription was deleted. ``subscription_id`` is an
    ``event_subscriptions`` id, or ``settings`` / ``legacy-reauth`` for the endpoints the
    settings name. Type and owner are copied from the event so the log filters on them."""

    __tablename__ = "event_deliveries"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    event_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("events.id", ondelete="CASCADE"), index=True
    )
    event_type: Mapped[str] = mapped_column(String(64))
    owner: Mapped[str | None] = mapped_column(String(255))
    subscription_id: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    job_id: Mapped[int | None] = mapped_column(BigInteger)
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    delivered_at: Mapped[datetime | None]

    __table_args__ = (
        Index("ix_event_deliveries_state_id", "state", "id"),
        Index("ix_event_deliveries_event_type_id", "event_type", "id"),
        Index("ix_event_deliveries_subscription_id_state", "subscription_id", "state"),
    )


class EventDeliveryAttempt(Base):
    """The delivery log: one row per POST to the host app — its HTTP status (None when none
    came), how long it took, and an excerpt of what went wrong. Never a secret or a signature."""

    __tablename__ = "event_delivery_attempts"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    delivery_id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"),
        ForeignKey("event_deliveries.id", ondelete="CASCADE"),
    )
    attempt: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    status_code: Mapped[int | None] = mapped_column(Integer)
    duration_ms: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_event_delivery_attempts_delivery_id_id", "delivery_id", "id"),)


class StorageMarker(Base):
    """The database's identity: one row (``id`` 1) written when the service first starts on it.
    ``instance_id`` is also kept in a file next to a SQLite database, so a service that finds the
    database gone or replaced by an empty one refuses to start instead of starting afresh.
    ``probed_at`` is rewritten by the readiness probe (a cheap write that proves the database
    takes writes)."""

    __tablename__ = "storage_marker"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    instance_id: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    probed_at: Mapped[datetime | None]


# --- the lead mirror (sync) ----------------------------------------------------------------------


class Lead(Base):
    """A lead the host app gave amobridge, mirrored locally and pushed to amoCRM by a job.

    ``sync_state``: ``pending`` (accepted, not yet in amoCRM or a local change not yet pushed),
    ``synced`` or ``failed`` (``last_error`` says why). ``create_key`` is the idempotency key of
    the job that creates it in amoCRM, stored with the row and sent as the lead's marker;
    ``pushed_at`` is set before a create request leaves, so a later attempt knows it must look
    for the lead in amoCRM before sending again. ``dirty`` maps each field changed locally and not
    yet pushed to the ``version`` it was changed at. ``unresolved`` keeps pipeline, stage and
    field names that could not be checked when the lead was accepted (no catalogue could be
    read): the push resolves them."""

    __tablename__ = "leads"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(255))
    connection_id: Mapped[str] = mapped_column(String(32))
    amo_id: Mapped[int | None] = mapped_column(BigInteger)
    name: Mapped[str | None] = mapped_column(Text)
    name_folded: Mapped[str | None] = mapped_column(Text)  # casefolded, ё→е: for ``q``
    price: Mapped[int | None] = mapped_column(BigInteger)
    pipeline_id: Mapped[int | None] = mapped_column(BigInteger)
    status_id: Mapped[int | None] = mapped_column(BigInteger)
    responsible_user_id: Mapped[int | None] = mapped_column(BigInteger)
    custom_fields: Mapped[list[Any]] = mapped_column(JSON, default=list)
    tags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    external_id: Mapped[str | None] = mapped_column(String(255))
    sync_state: Mapped[str] = mapped_column(String(16), default="pending")
    last_error: Mapped[str | None] = mapped_column(Text)
    create_key: Mapped[str | None] = mapped_column(String(64))
    pushed_at: Mapped[datetime | None]
    version: Mapped[int] = mapped_column(Integer, default=1)
    dirty: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    unresolved: Mapped[dict[str, Any] | None]
    amo_updated_at: Mapped[datetime | None]
    synced_at: Mapped[datetime | None]
    local_updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)

    __table_args__ = (
        Index("ix_leads_owner_external_id", "owner", "external_id", unique=True),
        Index("ix_leads_connection_amo_id", "connection_id", "amo_id", unique=True),
        Index("ix_leads_owner_created", "owner", "created_at", "id"),
        Index("ix_leads_owner_updated", "owner", "updated_at", "id"),
        Index("ix_leads_owner_stage", "owner", "pipeline_id", "status_id"),
    )


class Contact(Base):
    """A contact of the lead mirror. ``emails`` are lower-cased, ``phones`` E.164; ``email`` and
    ``phone`` are the first of each, the keys contacts are deduplicated by (per connection)."""

    __tablename__ = "contacts"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(255))
    connection_id: Mapped[str] = mapped_column(String(32))
    amo_id: Mapped[int | None] = mapped_column(BigInteger)
    name: Mapped[str | None] = mapped_column(Text)
    name_folded: Mapped[str | None] = mapped_column(Text)
    email: Mapped[str | None] = mapped_column(String(254))
    phone: Mapped[str | None] = mapped_column(String(32))
    emails: Mapped[list[Any]] = mapped_column(JSON, default=list)
    phones: Mapped[list[Any]] = mapped_column(JSON, default=list)
    tags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    external_id: Mapped[str | None] = mapped_column(String(255))
    sync_state: Mapped[str] = mapped_column(String(16), default="pending")
    last_error: Mapped[str | None] = mapped_column(Text)
    create_key: Mapped[str | None] = mapped_column(String(64))
    pushed_at: Mapped[datetime | None]
    version: Mapped[int] = mapped_column(Integer, default=1)
    dirty: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    amo_updated_at: Mapped[datetime | None]
    synced_at: Mapped[datetime | None]
    local_updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)

    __table_args__ = (
        Index("ix_contacts_owner_external_id", "owner", "external_id", unique=True),
        Index("ix_contacts_connection_amo_id", "connection_id", "amo_id", unique=True),
        Index("ix_contacts_connection_email", "connection_id", "email"),
        Index("ix_contacts_connection_phone", "connection_id", "phone"),
        Index("ix_contacts_owner_created", "owner", "created_at", "id"),
    )


class LeadContact(Base):
    """A lead's link to a contact of the mirror (``is_main``: the lead's main contact)."""

    __tablename__ = "lead_contacts"

    lead_id: Mapped[str] = mapped_column(
        ForeignKey("leads.id", ondelete="CASCADE"), primary_key=True
    )
    contact_id: Mapped[str] = mapped_column(
        ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True
    )
    is_main: Mapped[bool] = mapped_column(Boolean, default=True)

    __table_args__ = (Index("ix_lead_contacts_contact_id", "contact_id"),)


class IdempotencyKey(Base):
    """A POST's ``Idempotency-Key``: the request it came with (``request_hash``, a SHA-256 of the
    route and the body) and the answer given, replayed for a retry with the same key."""

    __tablename__ = "idempotency_keys"

    owner: Mapped[str] = mapped_column(String(255), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int | None] = mapped_column(Integer)
    response: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_idempotency_keys_created_at", "created_at"),)


class AmoCatalogue(Base):
    """What a connection's amoCRM account offers, cached: ``kind`` ``pipelines`` (with their
    stages), ``lead_fields`` or ``contact_fields``, as amoCRM sent them, and when they were read."""

    __tablename__ = "amo_catalogue"

    connection_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    data: Mapped[list[Any]] = mapped_column(JSON, default=list)
    fetched_at: Mapped[datetime] = mapped_column(default=utcnow)


# The states of an import or catch-up (``imports.state``); see ``amobridge.sync.imports``.
IMPORT_STATES = ("queued", "running", "waiting", "succeeded", "failed")


class Import(Base):
    """One pull of a connection's account into the mirror: a full ``import`` (pipelines, custom
    fields, contacts, leads) or a ``catchup`` (contacts and leads changed since ``since``).

    The cursor — ``entity``, ``page``, ``bound`` (the unix time the pages are filtered from)
    and ``seen`` (ids at ``bound`` already applied) — is committed with every page it
    applied, so a run that stopped goes on from the next page. ``counts`` and ``pages`` per
    entity; ``total`` once known (amoCRM sends no totals). ``started_at`` is the run's mark:
    everything changed in amoCRM before it is in the mirror once the run has succeeded."""

    __tablename__ = "imports"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(16), default="import")  # import | catchup
    connection_id: Mapped[str] = mapped_column(String(32))
    owner: Mapped[str] = mapped_column(String(255))
    job_id: Mapped[int | None] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16), default="queued")  # IMPORT_STATES
    entity: Mapped[str | None] = mapped_column(String(32))
    page: Mapped[int] = mapped_column(Integer, default=1)
    bound: Mapped[int | None] = mapped_column(BigInteger)
    seen: Mapped[list[Any]] = mapped_column(JSON, default=list)
    since: Mapped[datetime | None]
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    pages: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    total: Mapped[int | None] = mapped_column(BigInteger)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (
        Index("ix_imports_connection_kind_state", "connection_id", "kind", "state"),
        Index("ix_imports_owner_created", "owner", "created_at"),
    )


# The states of a job (``jobs.state``); see ``amobridge.jobs`` for the transitions.
JOB_STATES = ("pending", "running", "succeeded", "failed", "paused", "cancelled")
# A job in one of these is not finished: a dedup key names at most one of them.
JOB_ACTIVE_STATES = ("pending", "running", "paused")
_ACTIVE_JOB = text("state IN ('pending', 'running', 'paused')")


class Job(Base):
    """A durable unit of outbound work (push a lead, subscribe a webhook, deliver a host-app
    event), queued in the same transaction as the change it comes from and run by a worker.

    ``turn`` is the job's place in the rotation across connections (given at enqueue: the
    connection's last turn + 1, never before the queue's current one), so a connection's backlog
    never holds up another's next job. ``locked_by``/``locked_until``: the worker running it and
    its lease, renewed while the handler runs; a lease that ran out is taken over.
    ``idempotency_key``: sent to amoCRM with the request, so a re-run after an ambiguous
    failure finds what the first run created instead of creating it again."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    kind: Mapped[str] = mapped_column(String(64))  # e.g. sync.push_lead
    owner: Mapped[str | None] = mapped_column(String(255))
    connection_id: Mapped[str | None] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]]
    state: Mapped[str] = mapped_column(String(16), default="pending")  # JOB_STATES
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # claims so far
    max_attempts: Mapped[int] = mapped_column(Integer)
    run_after: Mapped[datetime] = mapped_column(default=utcnow)
    turn: Mapped[int] = mapped_column(BigInteger, default=0)
    # Jobs with the same ordering key run one at a time, in id order.
    ordering_key: Mapped[str | None] = mapped_column(String(255))
    # At most one pending, running or paused job per dedup key (the partial unique index below).
    dedup_key: Mapped[str | None] = mapped_column(String(255))
    idempotency_key: Mapped[str] = mapped_column(String(64), unique=True)
    locked_by: Mapped[str | None] = mapped_column(String(64))
    locked_until: Mapped[datetime | None]
    started_at: Mapped[datetime | None]  # when the current or last attempt was claimed
    last_error: Mapped[str | None] = mapped_column(Text)  # masked, never a token
    # Why a paused job waits (reauth_required, disconnected, banned, or a handler's reason) and,
    # when it resumes by itself at a time, until when.
    paused_reason: Mapped[str | None] = mapped_column(String(64))
    paused_until: Mapped[datetime | None]
    result: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    finished_at: Mapped[datetime | None]

    __table_args__ = (
        # The claim walks pending (and lease-expired running) jobs in turn order.
        Index("ix_jobs_state_turn", "state", "turn", "id"),
        # A connection's running jobs (its concurrency), paused jobs and last turn.
        Index("ix_jobs_connection_state", "connection_id", "state", "turn"),
        Index("ix_jobs_ordering_key_state", "ordering_key", "state", "id"),
        Index("ix_jobs_owner_state", "owner", "state", "id"),
        # The worker's next wake-up: the earliest run_after of the pending jobs.
        Index("ix_jobs_state_run_after", "state", "run_after"),
        Index(
            "uq_jobs_dedup_key_active",
            "dedup_key",
            unique=True,
            postgresql_where=_ACTIVE_JOB,
            sqlite_where=_ACTIVE_JOB,
        ),
    )


# --- the webhook inbox ------------------------------------------------------------------------

# The states of a delivery (``webhook_deliveries.state``); see ``amobridge.webhooks``.
WEBHOOK_DELIVERY_STATES = ("received", "processed", "failed", "duplicate")


class WebhookDelivery(Base):
    """One webhook body amoCRM POSTed, stored raw before it was answered, then applied to the
    mirror. ``body_hash`` (SHA-256 of the body) finds a redelivery: that one is kept as a row
    of its own in state ``duplicate`` (``duplicate_of`` the first, no body of its own) and never
    applied. ``headers`` keeps the few amoCRM sends that help an operator (its request id, the
    user agent); ``result`` what applying it did (applied, stale, echo, skipped items)."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    connection_id: Mapped[str] = mapped_column(String(32))
    owner: Mapped[str] = mapped_column(String(255))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    body: Mapped[bytes | None] = mapped_column(LargeBinary)
    content_type: Mapped[str | None] = mapped_column(String(255))
    headers: Mapped[dict[str, Any] | None]
    body_hash: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="received")
    duplicate_of: Mapped[int | None] = mapped_column(BigInteger)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None]
    processed_at: Mapped[datetime | None]

    __table_args__ = (
        Index("ix_webhook_deliveries_connection_hash", "connection_id", "body_hash"),
        Index("ix_webhook_deliveries_owner_id", "owner", "id"),
        Index("ix_webhook_deliveries_state_id", "state", "id"),
        Index("ix_webhook_deliveries_received_at", "received_at"),
    )


class WebhookSubscription(Base):
    """What amobridge knows of a connection's webhook subscription in amoCRM.

    ``state``: ``pending`` (a subscribe job is queued), ``active`` (amoCRM has it enabled),
    ``failed`` (amoCRM refused it: ``last_error`` says why), ``unsubscribed`` (the connection
    was disconnected). ``unsubscribe_token_enc`` holds, between a disconnect and the
    unsubscribe job that follows it, the encrypted access token the connection had (the
    disconnect erases the connection's own); the job deletes it whether amoCRM answered or not.
    """

    __tablename__ = "webhook_subscriptions"

    connection_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16), default="pending")
    amo_webhook_id: Mapped[int | None] = mapped_column(BigInteger)
    settings: Mapped[list[Any]] = mapped_column(JSON, default=list)
    subscribed_at: Mapped[datetime | None]
    checked_at: Mapped[datetime | None]
    restored_at: Mapped[datetime | None]
    restores: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    unsubscribe_host: Mapped[str | None] = mapped_column(String(255))
    unsubscribe_token_enc: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (Index("ix_webhook_subscriptions_state_checked", "state", "checked_at"),)
