"""Generated webhook bodies: random events round-trip through amoCRM's encoding; garbage never crashes.

The encoder here is written from amoCRM's webhook format, not from the parser: keys
``{entity}[{action}][{i}][{field}]``, every value a string, %-encoded.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any
from urllib.parse import quote, quote_plus, urlencode

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amobridge.amo.webhooks import (
    BaseWebhookEvent,
    CompanyEvent,
    ContactEvent,
    LeadEvent,
    NoteEvent,
    OtherEvent,
    WebhookAccount,
    WebhookCustomField,
    WebhookCustomFieldValue,
    WebhookEvent,
    WebhookParseError,
    WebhookPayload,
    WebhookTag,
    parse_webhook,
)

SETTINGS = settings(deadline=None, max_examples=120, suppress_health_check=[HealthCheck.too_slow])

ints = st.one_of(st.none(), st.integers(min_value=-(2**63), max_value=2**63))
ids = st.integers(min_value=0, max_value=2**53)
texts = st.text(max_size=24)
maybe_texts = st.one_of(st.none(), texts)

# Unknown fields amoCRM may add: plain names that are no declared field.
RESERVED = {"note", "entity", "entity_key", "action", "type"}


def extras_for(model: type[BaseWebhookEvent]) -> st.SearchStrategy[dict[str, str]]:
    names = st.from_regex(r"[a-z][a-z_]{0,10}", fullmatch=True).filter(
        lambda name: name not in model.model_fields and name not in RESERVED
    )
    return st.dictionaries(names, texts, max_size=3)


values = st.builds(
    WebhookCustomFieldValue,
    value=texts,
    enum=st.one_of(st.none(), ids, st.from_regex(r"[A-Z]{1,6}", fullmatch=True)),
)
custom_fields = st.lists(
    st.builds(
        WebhookCustomField,
        id=st.one_of(st.none(), ids),
        name=maybe_texts,
        code=st.one_of(st.none(), st.sampled_from(["PHONE", "EMAIL", "POSITION", "IM"])),
        values=st.lists(values, min_size=1, max_size=3),
    ),
    max_size=3,
)
tags = st.lists(st.builds(WebhookTag, id=ids, name=maybe_texts), max_size=3)
entity_actions = st.one_of(
    st.sampled_from(["add", "update", "status", "delete", "responsible", "restore"]),
    st.from_regex(r"[a-z_]{1,12}", fullmatch=True).filter(lambda action: action != "note"),
)
common = {
    "id": ints,
    "name": maybe_texts,
    "responsible_user_id": ints,
    "old_responsible_user_id": ints,
    "created_user_id": ints,
    "modified_user_id": ints,
    "account_id": ints,
    "created_at": ints,
    "updated_at": ints,
    "date_create": ints,
    "last_modified": ints,
    "custom_fields": custom_fields,
    "tags": tags,
}


def with_extras(model: type[BaseWebhookEvent], **fields: Any) -> st.SearchStrategy[Any]:
    def attach(built: tuple[BaseWebhookEvent, dict[str, str]]) -> BaseWebhookEvent:
        event, extras = built
        for name, value in extras.items():
            setattr(event, name, value)
        return event

    return st.tuples(st.builds(model, **fields), extras_for(model)).map(attach)


leads = with_extras(
    LeadEvent,
    action=entity_actions,
    status_id=ints,
    old_status_id=ints,
    pipeline_id=ints,
    old_pipeline_id=ints,
    price=ints,
    **common,
)
contacts = with_extras(
    ContactEvent,
    action=entity_actions,
    type=st.sampled_from([None, "contact"]),
    company_name=maybe_texts,
    linked_company_id=ints,
    linked_leads_id=st.lists(ids, unique=True, max_size=3).map(sorted),
    **common,
)
companies = st.one_of(
    with_extras(
        CompanyEvent,
        entity_key=st.just("contacts"),
        action=entity_actions,
        type=st.just("company"),
        linked_leads_id=st.lists(ids, unique=True, max_size=3).map(sorted),
        **common,
    ),
    with_extras(
        CompanyEvent,
        entity_key=st.just("companies"),
        action=entity_actions,
        type=st.sampled_from([None, "company"]),
        **common,
    ),
)


def note_parent(entity_key: str, element_type: int | None) -> str:
    if entity_key in ("leads", "companies"):
        return entity_key
    if entity_key == "contacts":
        return "companies" if element_type == 3 else "contacts"
    return "other"


def note_events(entity_key: str, element_type: int | None) -> st.SearchStrategy[Any]:
    return with_extras(
        NoteEvent,
        entity=st.just(note_parent(entity_key, element_type)),
        entity_key=st.just(entity_key),
        id=ints,
        note_type=st.one_of(st.none(), ids, st.sampled_from(["common", "call_in"])),
        text=maybe_texts,
        element_id=ints,
        element_type=st.just(element_type),
        created_by=ints,
        date_create=ints,
        last_modified=ints,
    )


notes = st.one_of(
    [
        note_events(entity_key, element_type)
        for entity_key in ("leads", "contacts", "companies", "customers")
        for element_type in (None, 1, 2, 3, 12)
    ]
)
others = with_extras(
    OtherEvent,
    entity_key=st.sampled_from(["task", "unsorted", "message", "customers", "talk"]),
    action=entity_actions,
    id=ints,
)
events = st.one_of(leads, contacts, companies, notes, others)
accounts = st.one_of(
    st.none(),
    st.builds(WebhookAccount, id=ids, subdomain=maybe_texts, self_url=maybe_texts),
)


def flatten(prefix: str, value: Any) -> list[tuple[str, str]]:
    if value is None:
        return []
    if isinstance(value, dict):
        return [pair for key, item in value.items() for pair in flatten(f"{prefix}[{key}]", item)]
    if isinstance(value, list):
        return [pair for i, item in enumerate(value) for pair in flatten(f"{prefix}[{i}]", item)]
    return [(prefix, str(value))]


def encode_event(prefix: str, event: WebhookEvent, rng: random.Random) -> list[tuple[str, str]]:
    fields = event.model_dump(exclude={"entity", "entity_key", "action"}, exclude_none=True)
    for field in fields.get("custom_fields", []):
        field["values"] = [
            # the 2018 form: a bare [values][i] when there is no enum
            value["value"] if set(value) == {"value"} and rng.random() < 0.5 else value
            for value in field["values"]
        ]
    if "linked_leads_id" in fields:  # captures: linked_leads_id[{id}][ID]={id}
        fields["linked_leads_id"] = {str(i): {"ID": i} for i in fields["linked_leads_id"]}
    if isinstance(event, NoteEvent) and rng.random() < 0.5:
        return flatten(f"{prefix}[note]", fields)  # leads[note][0][note][text]=…
    return flatten(prefix, fields)


def encode(
    account: WebhookAccount | None, items: list[WebhookEvent], rng: random.Random
) -> tuple[list[tuple[str, str]], list[WebhookEvent]]:
    """The form fields of a body, and the events in it (one with no field set cannot be sent)."""
    pairs: list[tuple[str, str]] = []
    sent: list[WebhookEvent] = []
    if account is not None:
        pairs += flatten("account", account.model_dump(exclude={"self_url"}, exclude_none=True))
        if account.self_url is not None:
            pairs.append(("account[_links][self]", account.self_url))
    next_index: dict[tuple[str, str], int] = defaultdict(int)
    for event in items:
        group = (event.entity_key, event.action)
        index = next_index[group] + rng.choice([0, 0, 1, 7, 1000])  # sparse indices
        next_index[group] = index + 1
        fields = encode_event(f"{event.entity_key}[{event.action}][{index}]", event, rng)
        if fields:
            pairs += fields
            sent.append(event)
    return pairs, sent


def grouped(items: list[WebhookEvent]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for event in items:
        groups[(event.entity_key, event.action)].append(
            {"class": type(event).__name__, **event.model_dump()}
        )
    return dict(groups)


@SETTINGS
@given(
    accounts,
    st.lists(events, max_size=6),
    st.randoms(use_true_random=False),
    st.sampled_from(["bytes", "str", "mapping"]),
)
def test_generated_events_round_trip(
    account: WebhookAccount | None,
    items: list[WebhookEvent],
    rng: random.Random,
    shape: str,
) -> None:
    pairs, items = encode(account, items, rng)
    if not pairs:
        return  # nothing to send: an empty body, covered by the example tests
    rng.shuffle(pairs)  # fields in any order: the indices carry the order
    quote_via = rng.choice([quote, quote_plus])
    body: bytes | str | dict[str, str] = {
        "bytes": urlencode(pairs, quote_via=quote_via).encode(),
        "str": urlencode(pairs, quote_via=quote_via),
        "mapping": dict(pairs),
    }[shape]

    payload = parse_webhook(body)

    assert payload.ignored == []
    assert payload.account == account
    assert grouped(payload.events) == grouped(items)
    by_group = defaultdict(list)
    for event in payload.events:
        by_group[(event.entity_key, event.action)].append(event)
    for event in items:
        parsed = by_group[(event.entity_key, event.action)].pop(0)
        if event.id is not None:  # without an id the key hashes the raw item
            assert parsed.dedup_key == event.dedup_key


@settings(SETTINGS, max_examples=50)  # a corollary of the round trip: fewer examples suffice
@given(st.lists(events, min_size=1, max_size=4), st.randoms(use_true_random=False))
def test_redelivery_in_another_field_order_keeps_dedup_keys(
    items: list[WebhookEvent], rng: random.Random
) -> None:
    pairs, _ = encode(None, items, rng)
    if not pairs:
        return
    first = parse_webhook(urlencode(pairs))
    rng.shuffle(pairs)
    second = parse_webhook(urlencode(pairs))
    assert sorted(e.dedup_key for e in first.events) == sorted(e.dedup_key for e in second.events)


def assert_usable(payload: WebhookPayload) -> None:
    """Everything a receiver does with a payload works on whatever the parser returned."""
    payload.model_dump_json()
    for event in payload.events:
        assert isinstance(event.dedup_key, str)
        assert event.entity in ("leads", "contacts", "companies", "other")
        if isinstance(event, LeadEvent | ContactEvent | CompanyEvent):
            event.normalized_phones()
            event.normalized_emails()
    assert len(payload.leads) + len(payload.contacts) + len(payload.companies) + len(
        payload.notes
    ) <= len(payload.events)


def parse_or_refuse(body: Any) -> None:
    try:
        payload = parse_webhook(body)
    except WebhookParseError:
        return
    assert_usable(payload)


@SETTINGS
@given(st.binary(max_size=2000))
def test_random_bytes_never_crash(body: bytes) -> None:
    parse_or_refuse(body)


@SETTINGS
@given(st.text(alphabet="[]%&=+ab01_\n\x00ё", max_size=300))
def test_random_bracket_soup_never_crashes(body: str) -> None:
    parse_or_refuse(body)


segments = st.one_of(
    st.sampled_from(
        ["leads", "contacts", "companies", "account", "task", "add", "update", "status", "note",
         "delete", "0", "1", "07", "-1", "", "id", "ID", "custom_fields", "values", "value", "enum",
         "tags", "type", "company", "linked_leads_id", "_links", "self", "href", "name",
         "element_type", "status_id", "updated_at", "model_config", "__class__", "raw"]
    ),
    st.text(max_size=6),
)  # fmt: skip
field_values = st.one_of(
    st.sampled_from(["", "0", "3", "-7", "1.0", "company", "contact", "PHONE", "EMAIL",
                     "+7 912 345-67-89", "a@b.ru", "1" * 40, "nan", "1e5"]),
    st.text(max_size=12),
)  # fmt: skip


@st.composite
def garbage_keys(draw: st.DrawFn) -> str:
    parts = draw(st.lists(segments, min_size=1, max_size=9))
    key = parts[0] + "".join(f"[{part}]" for part in parts[1:])
    if draw(st.booleans()):  # break it somewhere
        position = draw(st.integers(min_value=0, max_value=len(key)))
        key = (
            key[:position]
            + draw(st.sampled_from(["[", "]", "][", "[[", "]]", ""]))
            + key[position:]
        )
    return key


@SETTINGS
@given(st.lists(st.tuples(garbage_keys(), field_values), max_size=40), st.booleans())
def test_structured_garbage_never_crashes(pairs: list[tuple[str, str]], as_mapping: bool) -> None:
    if as_mapping:
        mapping: dict[str, list[str]] = defaultdict(list)
        for key, value in pairs:
            mapping[key].append(value)
        parse_or_refuse(dict(mapping))
    else:
        parse_or_refuse(urlencode(pairs, quote_via=quote).encode())


@SETTINGS
@given(
    st.dictionaries(
        st.one_of(garbage_keys(), st.integers()),
        st.one_of(field_values, st.lists(field_values), st.integers(), st.none(), st.binary()),
        max_size=20,
    )
)
def test_mappings_of_any_values_never_crash(mapping: dict[Any, Any]) -> None:
    parse_or_refuse(mapping)
