"""amoCRM's webhook bodies as typed events.

amoCRM POSTs ``application/x-www-form-urlencoded`` bodies with PHP-style bracket keys, every value a
string::

    account[subdomain]=acme
    account[id]=30739638
    leads[status][0][id]=1190401
    leads[status][0][status_id]=142
    leads[status][0][custom_fields][0][values][0][value]=Сайт

:func:`parse_webhook` unflattens the keys into a tree and turns every ``{entity}[{action}][{i}]``
item into one event: :class:`LeadEvent`, :class:`ContactEvent`, :class:`CompanyEvent` (companies come
as ``contacts[…]`` with ``type=company``, and perhaps as ``companies[…]``), :class:`NoteEvent` (the
``note`` action of any entity) or :class:`OtherEvent` (tasks, unsorted, messages, customers, talks, and
whatever amoCRM adds next). Every event keeps the fields it does not declare (``extra="allow"``) and
its raw item (:attr:`BaseWebhookEvent.raw`).

The body is input from the internet: a value that is not what a field expects becomes None (the raw
string stays in ``raw``), keys that cannot be read are listed in :attr:`WebhookPayload.ignored`, and the
only exception :func:`parse_webhook` raises is :class:`WebhookParseError`.

Authenticity is not the parser's business: amoCRM signs nothing, so the receiver checks a URL
secret and ``account[id]``, and re-reads the data through the API.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, ClassVar, Literal, TypeAlias
from urllib.parse import parse_qsl

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError

from amobridge.amo.errors import AmoError
from amobridge.amo.phones import normalize_email, normalize_phone

__all__ = [
    "BaseWebhookEvent",
    "CompanyEvent",
    "ContactEvent",
    "EventEntity",
    "LeadEvent",
    "NoteEvent",
    "OtherEvent",
    "WebhookAccount",
    "WebhookCustomField",
    "WebhookCustomFieldValue",
    "WebhookEvent",
    "WebhookParseError",
    "WebhookPayload",
    "WebhookTag",
    "parse_webhook",
]

# Bounds on what one body may make us build. amoCRM batches a few dozen events of ~50 fields; a body
# beyond these is not a webhook, and refusing it keeps a hostile one from costing memory or time.
MAX_FIELDS = 20_000
MAX_BODY_BYTES = 4 * 1024 * 1024
# Segments of one key, base included: leads[status][0][custom_fields][0][values][0][value] has 8.
MAX_KEY_DEPTH = 12

_KEY = re.compile(r"([^\[\]]+)((?:\[[^\[\]]*\])*)")
_SEGMENT = re.compile(r"\[([^\[\]]*)\]")
_INT = re.compile(r"[+-]?[0-9]{1,30}")
_INT_WITH_ZERO_FRACTION = re.compile(r"([+-]?[0-9]{1,30})\.0*")

# amoCRM's element_type of a note's parent (API v2 numbering, still used in webhooks).
_NOTE_PARENT_COMPANY = 3

Tree: TypeAlias = dict[str, Any]  # values: str (a leaf) or Tree
EventEntity = Literal["leads", "contacts", "companies", "other"]


class WebhookParseError(AmoError, ValueError):
    """The body is not an amoCRM webhook at all (empty, not form-encoded text, or too large).

    Answer such a request 400 and do not retry it: amoCRM resends only on a non-2xx reply, and the
    same body will fail the same way.
    """


# --- tolerant coercion: amoCRM sends strings; a bad one becomes None, never an exception ----------


def _to_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        if _INT.fullmatch(text):
            return int(text)
        match = _INT_WITH_ZERO_FRACTION.fullmatch(text)
        if match:
            return int(match.group(1))
    return None


def _to_int_or_str(value: object) -> int | str | None:
    number = _to_int(value)
    if number is not None:
        return number
    if isinstance(value, str) and value.strip():
        return value
    return None


def _to_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _to_dict(value: object) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def _index_keys(node: Mapping[str, Any]) -> list[str]:
    """The keys of an index node (``{"1": …, "0": …}``) in index order; non-numeric keys last."""
    numeric = sorted(
        ((int(key), position, key) for position, key in enumerate(node) if _INT.fullmatch(key)),
        key=lambda item: (item[0], item[1]),
    )
    return [key for _, _, key in numeric] + [key for key in node if not _INT.fullmatch(key)]


def _ordered_items(node: Mapping[str, Any]) -> list[Any]:
    return [node[key] for key in _index_keys(node)]


def _as_list(value: object) -> list[Any]:
    if isinstance(value, Mapping):
        return _ordered_items(value)
    if isinstance(value, list | tuple):
        return list(value)
    return []


def _to_values(value: object) -> list[Any]:
    # The 2018 capture sends a date field as a bare ``[values][0]=1546300800``: a string item.
    return [{"value": item} if isinstance(item, str) else item for item in _as_list(value)]


def _to_models(value: object) -> list[Any]:
    return [item for item in _as_list(value) if isinstance(item, Mapping | BaseModel)]


def _to_ids(value: object) -> list[int]:
    """``linked_leads_id[123][ID]=123`` (captures), ``[0]=123``, ``"1,2"`` or a list → ``[123]``.

    A set in amoCRM's terms, so sorted: the order fields arrive in carries no meaning.
    """
    ids: set[int] = set()
    if isinstance(value, str):
        candidates: list[tuple[object, object]] = [(part, None) for part in value.split(",")]
    elif isinstance(value, Mapping):
        candidates = [(item, key) for key, item in value.items()]
    elif isinstance(value, list | tuple):
        candidates = [(item, None) for item in value]
    else:
        candidates = []
    for item, key in candidates:
        if isinstance(item, Mapping):
            item = item.get("ID", item.get("id"))
        number = _to_int(item)
        if number is None and key is not None:
            number = _to_int(key)
        if number is not None:
            ids.add(number)
    return sorted(ids)


WebhookInt = Annotated[int | None, BeforeValidator(_to_int)]
WebhookStr = Annotated[str | None, BeforeValidator(_to_str)]
WebhookIntOrStr = Annotated[int | str | None, BeforeValidator(_to_int_or_str)]


class _Open(BaseModel):
    """Keeps every field amoCRM sends, declared or not."""

    model_config = ConfigDict(extra="allow")


class WebhookCustomFieldValue(_Open):
    value: WebhookStr = None
    # An enum id ("139517") as int; a value amoCRM sends as a code ("WORK") stays a string.
    enum: WebhookIntOrStr = None


class WebhookCustomField(_Open):
    id: WebhookInt = None
    name: WebhookStr = None
    code: WebhookStr = None  # only on PHONE, EMAIL, POSITION, IM
    values: Annotated[list[WebhookCustomFieldValue], BeforeValidator(_to_values)] = Field(
        default_factory=list
    )


class WebhookTag(_Open):
    id: WebhookInt = None
    name: WebhookStr = None


CustomFields = Annotated[list[WebhookCustomField], BeforeValidator(_to_models)]
Tags = Annotated[list[WebhookTag], BeforeValidator(_to_models)]
Ids = Annotated[list[int], BeforeValidator(_to_ids)]


class WebhookAccount(_Open):
    """The ``account[…]`` block: which amoCRM account sent the body."""

    id: WebhookInt = None
    subdomain: WebhookStr = None
    # ``account[_links][self]``, e.g. "https://acme.amocrm.ru" (the account's API host).
    self_url: WebhookStr = None


class BaseWebhookEvent(_Open):
    """One ``{entity}[{action}][{i}]`` item.

    ``entity`` is what the event is about (a company is ``"companies"`` however amoCRM keyed it);
    ``entity_key`` is the top-level key as sent (``"contacts"`` for most companies, ``"task"``, …);
    ``action`` is as sent: add, update, status, delete, responsible, restore, note, or a new one.
    """

    entity: EventEntity
    entity_key: str
    action: str
    id: WebhookInt = None
    _raw: dict[str, Any] = PrivateAttr(default_factory=dict)

    # Fields whose value tells one change of an entity from the next within the same second.
    _dedup_fields: ClassVar[dict[str, tuple[str, ...]]] = {}
    _version_fields: ClassVar[tuple[str, ...]] = (
        "updated_at",
        "last_modified",
        "created_at",
        "date_create",
    )

    @property
    def raw(self) -> dict[str, Any]:
        """The item exactly as unflattened from the body (every value a string)."""
        return self._raw

    @property
    def dedup_key(self) -> str:
        """The same for a redelivery of this event, different for a later change of the entity.

        ``{entity}:{action}:{id}:{version}[:{discriminators}]``, where version is ``updated_at``
        (else ``last_modified``, ``created_at``, ``date_create``) and the discriminators tell apart
        changes in the same second: the new status and pipeline for ``status``, the new responsible
        user for ``responsible``. Without an id the item's content hash stands in. Two updates in
        one second share a key; the receiver re-reads the entity through the API anyway.
        """
        identity = str(self.id) if self.id is not None else "sha256-" + _content_hash(self._raw)
        version = next(
            (str(value) for name in self._version_fields if (value := getattr(self, name, None))),
            "",
        )
        parts = [self.entity, self.action, identity, version]
        parts += [
            "" if getattr(self, name, None) is None else str(getattr(self, name))
            for name in self._dedup_fields.get(self.action, ())
        ]
        return ":".join(parts)


def _content_hash(raw: Mapping[str, Any]) -> str:
    canonical = json.dumps(raw, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class _CrmEntityEvent(BaseWebhookEvent):
    """Fields leads, contacts and companies share in webhooks."""

    name: WebhookStr = None
    responsible_user_id: WebhookInt = None
    old_responsible_user_id: WebhookInt = None
    created_user_id: WebhookInt = None
    modified_user_id: WebhookInt = None
    account_id: WebhookInt = None
    created_at: WebhookInt = None
    updated_at: WebhookInt = None
    date_create: WebhookInt = None
    last_modified: WebhookInt = None
    custom_fields: CustomFields = Field(default_factory=list)
    tags: Tags = Field(default_factory=list)

    _dedup_fields: ClassVar[dict[str, tuple[str, ...]]] = {
        "responsible": ("responsible_user_id",),
    }

    def custom_field(self, code: str) -> WebhookCustomField | None:
        """The first custom field with this ``code`` (case-insensitive), e.g. ``"PHONE"``."""
        wanted = code.casefold()
        return next(
            (field for field in self.custom_fields if (field.code or "").casefold() == wanted),
            None,
        )

    def field_values(self, code: str) -> list[str]:
        """Every non-empty value of the custom fields with this ``code``, in order."""
        wanted = code.casefold()
        return [
            value.value
            for field in self.custom_fields
            if (field.code or "").casefold() == wanted
            for value in field.values
            if value.value
        ]

    @property
    def phones(self) -> list[str]:
        """The PHONE field's values as typed in amoCRM."""
        return self.field_values("PHONE")

    @property
    def emails(self) -> list[str]:
        """The EMAIL field's values as typed in amoCRM."""
        return self.field_values("EMAIL")

    def normalized_phones(self, default_region: str = "RU") -> list[str]:
        """The phones in E.164, without duplicates; values that are no phone number are left out."""
        found = (normalize_phone(phone, default_region) for phone in self.phones)
        return list(dict.fromkeys(phone for phone in found if phone))

    def normalized_emails(self) -> list[str]:
        """The e-mails lower-cased, without duplicates; invalid values are left out."""
        found = (normalize_email(email) for email in self.emails)
        return list(dict.fromkeys(email for email in found if email))


class LeadEvent(_CrmEntityEvent):
    entity: Literal["leads"] = "leads"
    entity_key: str = "leads"
    status_id: WebhookInt = None
    old_status_id: WebhookInt = None  # absent on add
    pipeline_id: WebhookInt = None
    old_pipeline_id: WebhookInt = None  # digital-pipeline hooks only
    price: WebhookInt = None

    _dedup_fields: ClassVar[dict[str, tuple[str, ...]]] = {
        "status": ("pipeline_id", "status_id"),
        "responsible": ("responsible_user_id",),
    }


class ContactEvent(_CrmEntityEvent):
    entity: Literal["contacts"] = "contacts"
    entity_key: str = "contacts"
    type: WebhookStr = None  # "contact"
    company_name: WebhookStr = None
    linked_company_id: WebhookInt = None
    linked_leads_id: Ids = Field(default_factory=list)


class CompanyEvent(_CrmEntityEvent):
    entity: Literal["companies"] = "companies"
    entity_key: str = "contacts"  # amoCRM sends companies as contacts[…] with type=company
    type: WebhookStr = None  # "company"
    linked_leads_id: Ids = Field(default_factory=list)


class NoteEvent(BaseWebhookEvent):
    """A note added to a lead, contact or company (``leads[note][0][note][…]``).

    ``entity`` is the parent's kind, ``element_id`` the parent's id; the note's own fields come from
    the nested ``[note]`` block when there is one, else from the item itself.
    """

    action: str = "note"
    note_type: WebhookIntOrStr = None
    text: WebhookStr = None
    element_id: WebhookInt = None
    element_type: WebhookInt = None
    created_by: WebhookInt = None
    responsible_user_id: WebhookInt = None
    account_id: WebhookInt = None
    created_at: WebhookInt = None
    updated_at: WebhookInt = None
    date_create: WebhookInt = None
    last_modified: WebhookInt = None
    # Type-specific content, e.g. ``params[text]`` of a common note, ``params[phone]`` of a call.
    params: Annotated[dict[str, Any], BeforeValidator(_to_dict)] = Field(default_factory=dict)

    _dedup_fields: ClassVar[dict[str, tuple[str, ...]]] = {"note": ("element_id",)}

    @property
    def note_text(self) -> str | None:
        """The note's text: ``text``, else ``params[text]`` (API v4 notes keep it there)."""
        if self.text:
            return self.text
        text = self.params.get("text")
        return text if isinstance(text, str) else None


class OtherEvent(BaseWebhookEvent):
    """An entity the SDK has no model for (tasks, unsorted, messages, customers, talks, …)."""

    entity: Literal["other"] = "other"


WebhookEvent: TypeAlias = LeadEvent | ContactEvent | CompanyEvent | NoteEvent | OtherEvent


class WebhookPayload(BaseModel):
    """One webhook body: the sending account and its events in body order."""

    account: WebhookAccount | None = None
    events: list[WebhookEvent] = Field(default_factory=list)
    # Keys (or unflattened paths) that could not be read: malformed brackets, too deep, a value where
    # a group was expected, … Logged by the receiver; never a reason to refuse the body.
    ignored: list[str] = Field(default_factory=list)
    # The whole unflattened body.
    raw: dict[str, Any] = Field(default_factory=dict)

    def select(
        self, entity: EventEntity | None = None, action: str | None = None
    ) -> list[WebhookEvent]:
        """The events about ``entity`` and/or with ``action``, in body order."""
        return [
            event
            for event in self.events
            if (entity is None or event.entity == entity)
            and (action is None or event.action == action)
        ]

    @property
    def leads(self) -> list[LeadEvent]:
        return [event for event in self.events if isinstance(event, LeadEvent)]

    @property
    def contacts(self) -> list[ContactEvent]:
        return [event for event in self.events if isinstance(event, ContactEvent)]

    @property
    def companies(self) -> list[CompanyEvent]:
        return [event for event in self.events if isinstance(event, CompanyEvent)]

    @property
    def notes(self) -> list[NoteEvent]:
        return [event for event in self.events if isinstance(event, NoteEvent)]


# --- unflattening ----------------------------------------------------------------------------------


def _fields(body: bytes | str | Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    if isinstance(body, bytes | bytearray | memoryview):
        raw = bytes(body)
        if len(raw) > MAX_BODY_BYTES:
            raise WebhookParseError(f"webhook body too large: {len(raw)} bytes")
        body = raw.decode("utf-8", errors="replace")
    if isinstance(body, str):
        if len(body) > MAX_BODY_BYTES:
            raise WebhookParseError(f"webhook body too large: {len(body)} characters")
        if body.isspace():
            return
        try:
            pairs = parse_qsl(
                body,
                keep_blank_values=True,
                encoding="utf-8",
                errors="replace",
                max_num_fields=MAX_FIELDS,
            )
        except ValueError as exc:  # more than MAX_FIELDS fields
            raise WebhookParseError(f"webhook body has more than {MAX_FIELDS} fields") from exc
        yield from pairs
        return
    if isinstance(body, Mapping):
        count = 0
        for key, value in body.items():
            values = value if isinstance(value, list | tuple) else [value]
            for item in values:
                count += 1
                if count > MAX_FIELDS:
                    raise WebhookParseError(f"webhook body has more than {MAX_FIELDS} fields")
                if isinstance(item, bytes):
                    item = item.decode("utf-8", errors="replace")
                elif isinstance(item, int | float) and not isinstance(item, bool):
                    item = str(item)
                yield (key if isinstance(key, str) else repr(key)), item
        return
    raise WebhookParseError(
        f"webhook body must be bytes, str or a mapping of form fields, not {type(body).__name__}"
    )


def _split_key(key: str) -> list[str] | None:
    match = _KEY.fullmatch(key)
    if match is None:
        return None
    return [match.group(1), *_SEGMENT.findall(match.group(2))]


class _Unflattener:
    """Builds the tree of one body, PHP's way: ``a[b][0]=x`` → ``{"a": {"b": {"0": "x"}}}``."""

    def __init__(self) -> None:
        self.tree: Tree = {}
        self.ignored: list[str] = []
        # For "a[]=x": the next free index of each group, so appending stays O(1) per field.
        self._next_index: dict[int, int] = {}

    def add(self, key: str, value: object) -> None:
        segments = _split_key(key) if isinstance(value, str) else None
        if segments is None or len(segments) > MAX_KEY_DEPTH or not self._insert(segments, value):
            self.ignored.append(key)

    def _insert(self, segments: list[str], value: object) -> bool:
        """Put ``value`` at ``segments``; False when that collides with a value of another shape."""
        node = self.tree
        last = len(segments) - 1
        for depth, segment in enumerate(segments):
            if segment == "":  # "a[]=x": the next free index, as PHP does
                segment = str(self._next_index.get(id(node), 0))
            if _INT.fullmatch(segment):
                following = int(segment) + 1
                if following > self._next_index.get(id(node), 0):
                    self._next_index[id(node)] = following
            if depth == last:
                if isinstance(node.get(segment), dict):
                    return False
                node[segment] = value  # a repeated key: the last one wins, as in PHP
                return True
            child = node.setdefault(segment, {})
            if not isinstance(child, dict):
                return False
            node = child
        return False  # no segments: unreachable, _KEY needs a base


# --- events ----------------------------------------------------------------------------------------


def _event(entity_key: str, action: str, item: Tree) -> WebhookEvent:
    data: dict[str, Any] = {**item, "entity_key": entity_key, "action": action}
    event: WebhookEvent
    if action == "note":
        note = item.get("note")
        if isinstance(note, dict):
            data = {**{k: v for k, v in item.items() if k != "note"}, **note}
            data.update(entity_key=entity_key, action=action)
        data["entity"] = _note_parent(entity_key, _to_int(data.get("element_type")))
        event = NoteEvent.model_validate(data)
    elif entity_key == "leads":
        data["entity"] = "leads"
        event = LeadEvent.model_validate(data)
    elif entity_key == "companies" or (entity_key == "contacts" and item.get("type") == "company"):
        data["entity"] = "companies"
        event = CompanyEvent.model_validate(data)
    elif entity_key == "contacts":
        data["entity"] = "contacts"
        event = ContactEvent.model_validate(data)
    else:
        data["entity"] = "other"
        event = OtherEvent.model_validate(data)
    event._raw = item
    return event


def _note_parent(entity_key: str, element_type: int | None) -> EventEntity:
    if entity_key == "leads":
        return "leads"
    if entity_key == "companies" or (
        entity_key == "contacts" and element_type == _NOTE_PARENT_COMPANY
    ):
        return "companies"
    if entity_key == "contacts":
        return "contacts"
    return "other"


def _account(node: object, ignored: list[str]) -> WebhookAccount | None:
    if node is None:
        return None
    if not isinstance(node, dict):
        ignored.append("account")
        return None
    links = node.get("_links")
    self_url = links.get("self") if isinstance(links, dict) else None
    if isinstance(self_url, dict):  # HAL style, account[_links][self][href]
        self_url = self_url.get("href")
    fields = {key: value for key, value in node.items() if key != "_links"}
    return WebhookAccount.model_validate({**fields, "self_url": self_url})


def parse_webhook(body: bytes | str | Mapping[str, str | list[str]]) -> WebhookPayload:
    """Parse one amoCRM webhook body into its account and events.

    ``body`` is the raw request body (bytes or str, %-encoded form fields) or the form fields
    already decoded (a mapping of key to value or list of values, e.g. Starlette's ``FormData``).
    Several entities and actions in one body give several events, in body order; items of one action
    are ordered by their index whatever order they arrived in.

    Raises :class:`WebhookParseError` for a body that is empty, too large, or not form fields; any
    other oddity is tolerated (see :attr:`WebhookPayload.ignored`).
    """
    unflattener = _Unflattener()
    for key, value in _fields(body):
        unflattener.add(key, value)
    tree, ignored = unflattener.tree, unflattener.ignored
    if not tree and not ignored:
        raise WebhookParseError(
            "empty webhook body: amoCRM sends form fields like leads[add][0][id]"
        )
    account = _account(tree.get("account"), ignored)
    events: list[WebhookEvent] = []
    try:
        for entity_key, actions in tree.items():
            if entity_key == "account":
                continue
            if not isinstance(actions, dict):
                ignored.append(entity_key)
                continue
            for action, items in actions.items():
                if not isinstance(items, dict):
                    ignored.append(f"{entity_key}[{action}]")
                    continue
                for index in _index_keys(items):
                    item = items[index]
                    if isinstance(item, dict):
                        events.append(_event(entity_key, action, item))
                    else:
                        ignored.append(f"{entity_key}[{action}][{index}]")
    # The coercers make this unreachable; should one miss a case, a body still never crashes us.
    except ValidationError as exc:
        raise WebhookParseError(
            f"webhook body could not be read: {exc.error_count()} errors"
        ) from exc
    return WebhookPayload(account=account, events=events, ignored=ignored, raw=tree)
