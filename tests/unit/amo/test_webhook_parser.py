"""The webhook parser on the bodies amoCRM sends and on the ones it should not."""

from __future__ import annotations

from urllib.parse import quote, urlencode

import pytest

from amobridge.amo.errors import AmoError
from amobridge.amo.webhooks import (
    MAX_FIELDS,
    MAX_KEY_DEPTH,
    CompanyEvent,
    ContactEvent,
    LeadEvent,
    NoteEvent,
    OtherEvent,
    WebhookCustomFieldValue,
    WebhookParseError,
    WebhookTag,
    parse_webhook,
)

# amoCRM's documented example, as it is on the wire: %-encoded keys, UTF-8 values.
SPEC_EXAMPLE = (
    "account%5Bsubdomain%5D=acme"
    "&account%5Bid%5D=30739638"
    "&account%5B_links%5D%5Bself%5D=https%3A%2F%2Facme.amocrm.ru"
    "&leads%5Bstatus%5D%5B0%5D%5Bid%5D=1190401"
    "&leads%5Bstatus%5D%5B0%5D%5Bstatus_id%5D=142"
    "&leads%5Bstatus%5D%5B0%5D%5Bold_status_id%5D=53861254"
    "&leads%5Bstatus%5D%5B0%5D%5Bpipeline_id%5D=6254262"
    "&leads%5Bstatus%5D%5B0%5D%5Bupdated_at%5D=1672189300"
    "&leads%5Bstatus%5D%5B0%5D%5Bcustom_fields%5D%5B0%5D%5Bvalues%5D%5B0%5D%5Bvalue%5D="
    "%D0%A1%D0%B0%D0%B9%D1%82"
    "&leads%5Bstatus%5D%5B0%5D%5Bcustom_fields%5D%5B0%5D%5Bvalues%5D%5B0%5D%5Benum%5D=139517"
)


def form(*pairs: tuple[str, str]) -> bytes:
    """A body encoded as amoCRM does: brackets %-encoded, UTF-8."""
    return urlencode(list(pairs), quote_via=quote).encode()


def test_spec_example_status_change() -> None:
    """The documented status_lead body, every value a string."""
    payload = parse_webhook(SPEC_EXAMPLE.encode())

    assert payload.account is not None
    assert payload.account.id == 30739638
    assert payload.account.subdomain == "acme"
    assert payload.account.self_url == "https://acme.amocrm.ru"
    assert payload.ignored == []
    [event] = payload.events
    assert isinstance(event, LeadEvent)
    assert (event.entity, event.entity_key, event.action) == ("leads", "leads", "status")
    assert event.id == 1190401
    assert event.status_id == 142
    assert event.old_status_id == 53861254
    assert event.pipeline_id == 6254262
    assert event.old_pipeline_id is None  # the sandbox and amoCRM omit it outside DP hooks
    assert event.updated_at == 1672189300
    [field] = event.custom_fields
    assert field.values == [WebhookCustomFieldValue(value="Сайт", enum=139517)]
    assert event.raw["status_id"] == "142"
    assert payload.leads == [event]
    assert payload.select("leads", "status") == [event]
    assert payload.select(action="add") == []


def test_str_and_bytes_bodies_agree() -> None:
    assert parse_webhook(SPEC_EXAMPLE) == parse_webhook(SPEC_EXAMPLE.encode())


def test_lead_add_with_every_documented_field() -> None:
    """Leads carry name, price, responsible_user_id, date_create, last_modified, created_at,
    tags[i][id|name]; add lacks old_status_id."""
    payload = parse_webhook(
        form(
            ("leads[add][0][id]", "77"),
            ("leads[add][0][name]", "Заявка с сайта & co = 100%"),
            ("leads[add][0][status_id]", "53861254"),
            ("leads[add][0][pipeline_id]", "6254262"),
            ("leads[add][0][price]", "15000"),
            ("leads[add][0][responsible_user_id]", "504141"),
            ("leads[add][0][date_create]", "1672189200"),
            ("leads[add][0][created_at]", "1672189200"),
            ("leads[add][0][last_modified]", "1672189201"),
            ("leads[add][0][updated_at]", "1672189201"),
            ("leads[add][0][account_id]", "30739638"),
            ("leads[add][0][tags][0][id]", "11"),
            ("leads[add][0][tags][0][name]", "сайт"),
            ("leads[add][0][tags][1][id]", "12"),
            ("leads[add][0][tags][1][name]", "vip"),
            ("leads[add][0][custom_fields][0][id]", "501"),
            ("leads[add][0][custom_fields][0][name]", "Источник"),
            ("leads[add][0][custom_fields][0][values][0][value]", "Реклама"),
            ("leads[add][0][created_user_id]", "504141"),
        )
    )
    [lead] = payload.leads
    assert lead.name == "Заявка с сайта & co = 100%"
    assert (lead.status_id, lead.pipeline_id, lead.price) == (53861254, 6254262, 15000)
    assert lead.old_status_id is None
    assert (lead.date_create, lead.created_at) == (1672189200, 1672189200)
    assert (lead.last_modified, lead.updated_at) == (1672189201, 1672189201)
    assert lead.responsible_user_id == 504141
    assert lead.account_id == 30739638
    assert lead.tags == [WebhookTag(id=11, name="сайт"), WebhookTag(id=12, name="vip")]
    [source] = lead.custom_fields
    assert (source.id, source.name, source.code) == (501, "Источник", None)
    assert source.values[0].value == "Реклама"
    assert lead.created_user_id == 504141
    assert lead.model_extra == {}
    assert payload.account is None  # no account block: the receiver refuses such a body itself


def test_contact_with_phones_emails_and_links() -> None:
    """Contacts carry company_name, linked_company_id, linked_leads_id[{id}][ID], type=contact;
    custom fields have code only on PHONE, EMAIL, POSITION, IM."""
    payload = parse_webhook(
        form(
            ("contacts[update][0][id]", "3001"),
            ("contacts[update][0][name]", "Иван Петров"),
            ("contacts[update][0][type]", "contact"),
            ("contacts[update][0][company_name]", "ООО Ромашка"),
            ("contacts[update][0][linked_company_id]", "4001"),
            ("contacts[update][0][linked_leads_id][1190401][ID]", "1190401"),
            ("contacts[update][0][linked_leads_id][1190402][ID]", "1190402"),
            ("contacts[update][0][custom_fields][0][id]", "3"),
            ("contacts[update][0][custom_fields][0][name]", "Телефон"),
            ("contacts[update][0][custom_fields][0][code]", "PHONE"),
            ("contacts[update][0][custom_fields][0][values][0][value]", "+7 (912) 345-67-89"),
            ("contacts[update][0][custom_fields][0][values][0][enum]", "304677"),
            ("contacts[update][0][custom_fields][0][values][1][value]", "8 912 345 67 89"),
            ("contacts[update][0][custom_fields][0][values][1][enum]", "MOB"),
            ("contacts[update][0][custom_fields][0][values][2][value]", "не звонить"),
            ("contacts[update][0][custom_fields][1][id]", "5"),
            ("contacts[update][0][custom_fields][1][code]", "EMAIL"),
            ("contacts[update][0][custom_fields][1][values][0][value]", " Ivan@Mail.RU "),
            ("contacts[update][0][custom_fields][1][values][1][value]", "ivan@mail.ru"),
            ("contacts[update][0][custom_fields][2][id]", "7"),
            ("contacts[update][0][custom_fields][2][code]", "POSITION"),
            ("contacts[update][0][custom_fields][2][values][0][value]", "CEO"),
            ("contacts[update][0][updated_at]", "1672189300"),
        )
    )
    [contact] = payload.contacts
    assert isinstance(contact, ContactEvent)
    assert (contact.entity, contact.type) == ("contacts", "contact")
    assert contact.company_name == "ООО Ромашка"
    assert contact.linked_company_id == 4001
    assert contact.linked_leads_id == [1190401, 1190402]
    assert contact.phones == ["+7 (912) 345-67-89", "8 912 345 67 89", "не звонить"]
    assert contact.normalized_phones() == ["+79123456789"]
    assert contact.emails == [" Ivan@Mail.RU ", "ivan@mail.ru"]
    assert contact.normalized_emails() == ["ivan@mail.ru"]
    assert contact.field_values("position") == ["CEO"]
    phone = contact.custom_field("phone")
    assert phone is not None
    assert [value.enum for value in phone.values] == [304677, "MOB", None]
    assert contact.custom_field("IM") is None


@pytest.mark.parametrize(
    "linked",
    [
        [("contacts[add][0][linked_leads_id][0]", "10"), ("contacts[add][0][linked_leads_id][1]", "11")],
        [("contacts[add][0][linked_leads_id]", "10,11")],
        [("contacts[add][0][linked_leads_id][10][id]", "10"), ("contacts[add][0][linked_leads_id][11]", "")],
    ],
)  # fmt: skip
def test_linked_leads_in_other_shapes(linked: list[tuple[str, str]]) -> None:
    [contact] = parse_webhook(form(("contacts[add][0][id]", "1"), *linked)).contacts
    assert contact.linked_leads_id == [10, 11]


def test_companies_as_contacts_and_as_companies() -> None:
    """Companies come as contacts[…] with type=company; companies[…] is parsed too."""
    payload = parse_webhook(
        form(
            ("contacts[add][0][id]", "4001"),
            ("contacts[add][0][type]", "company"),
            ("contacts[add][0][name]", "ООО Ромашка"),
            ("contacts[add][1][id]", "3001"),
            ("contacts[add][1][type]", "contact"),
            ("companies[update][0][id]", "4002"),
            ("companies[update][0][name]", "ИП Иванов"),
            ("companies[update][0][linked_leads_id][5][ID]", "5"),
        )
    )
    first, contact, second = payload.events
    assert isinstance(first, CompanyEvent)
    assert (first.entity, first.entity_key, first.id, first.name) == (
        "companies",
        "contacts",
        4001,
        "ООО Ромашка",
    )
    assert isinstance(contact, ContactEvent)
    assert isinstance(second, CompanyEvent)
    assert (second.entity, second.entity_key, second.action) == ("companies", "companies", "update")
    assert second.linked_leads_id == [5]
    assert payload.companies == [first, second]
    assert payload.select("companies") == [first, second]


def test_delete_carries_only_the_id() -> None:
    """Deletions come as leads[delete][0][id] (the sandbox sends only id)."""
    payload = parse_webhook(form(("leads[delete][0][id]", "1190401"), ("account[id]", "1")))
    [event] = payload.events
    assert isinstance(event, LeadEvent)
    assert (event.action, event.id, event.name, event.custom_fields) == (
        "delete",
        1190401,
        None,
        [],
    )
    assert event.dedup_key == "leads:delete:1190401:"


def test_responsible_change() -> None:
    [event] = parse_webhook(
        form(
            ("leads[responsible][0][id]", "9"),
            ("leads[responsible][0][responsible_user_id]", "2"),
            ("leads[responsible][0][old_responsible_user_id]", "1"),
            ("leads[responsible][0][updated_at]", "1700000000"),
        )
    ).leads
    assert (event.responsible_user_id, event.old_responsible_user_id) == (2, 1)
    assert event.dedup_key == "leads:responsible:9:1700000000:2"


def test_notes_nested_and_flat() -> None:
    payload = parse_webhook(
        form(
            ("leads[note][0][note][id]", "901"),
            ("leads[note][0][note][note_type]", "4"),
            ("leads[note][0][note][text]", "Перезвонить завтра"),
            ("leads[note][0][note][element_id]", "1190401"),
            ("leads[note][0][note][element_type]", "2"),
            ("leads[note][0][note][created_by]", "504141"),
            ("leads[note][0][note][date_create]", "1700000000"),
            ("leads[note][0][note][attachement]", ""),
            ("contacts[note][0][id]", "902"),
            ("contacts[note][0][note_type]", "common"),
            ("contacts[note][0][text]", "about the company"),
            ("contacts[note][0][element_id]", "4001"),
            ("contacts[note][0][element_type]", "3"),
            ("contacts[note][1][id]", "903"),
            ("contacts[note][1][element_id]", "3001"),
            ("contacts[note][1][element_type]", "1"),
        )
    )
    lead_note, company_note, contact_note = payload.notes
    assert isinstance(lead_note, NoteEvent)
    assert (lead_note.entity, lead_note.action, lead_note.id) == ("leads", "note", 901)
    assert (lead_note.note_type, lead_note.text) == (4, "Перезвонить завтра")
    assert (lead_note.element_id, lead_note.element_type) == (1190401, 2)
    assert (lead_note.created_by, lead_note.date_create) == (504141, 1700000000)
    assert lead_note.model_extra == {"attachement": ""}
    assert lead_note.dedup_key == "leads:note:901:1700000000:1190401"
    assert (company_note.entity, company_note.note_type) == ("companies", "common")
    assert (contact_note.entity, contact_note.element_id) == ("contacts", 3001)
    assert payload.leads == []
    assert payload.contacts == []


def test_several_entities_and_actions_in_one_body() -> None:
    """Several entities or actions per POST (unverified on amoCRM): parse it."""
    payload = parse_webhook(
        form(
            ("account[id]", "30739638"),
            ("leads[add][0][id]", "1"),
            ("leads[add][1][id]", "2"),
            ("contacts[add][0][id]", "10"),
            ("leads[status][0][id]", "1"),
            ("leads[status][0][status_id]", "142"),
            ("task[add][0][id]", "55"),
            ("task[add][0][complete_till]", "2024-01-01 12:00:00"),
            ("unsorted[add][0][uid]", "abc"),
        )
    )
    assert [(e.entity_key, e.action, e.id) for e in payload.events] == [
        ("leads", "add", 1),
        ("leads", "add", 2),
        ("leads", "status", 1),
        ("contacts", "add", 10),
        ("task", "add", 55),
        ("unsorted", "add", None),
    ]
    task, unsorted = payload.select("other")
    assert isinstance(task, OtherEvent)
    assert task.model_extra == {"complete_till": "2024-01-01 12:00:00"}  # tasks keep Y-m-d H:i:s
    assert unsorted.dedup_key.startswith("other:add:sha256-")
    assert len({event.dedup_key for event in payload.events}) == len(payload.events)


def test_sparse_and_out_of_order_indices() -> None:
    payload = parse_webhook(
        form(
            ("leads[update][7][id]", "7"),
            ("leads[update][2][id]", "2"),
            ("leads[update][10][id]", "10"),
            ("leads[update][2][custom_fields][3][values][9][value]", "b"),
            ("leads[update][2][custom_fields][3][values][1][value]", "a"),
            ("leads[update][x][id]", "99"),
        )
    )
    assert [event.id for event in payload.events] == [2, 7, 10, 99]
    assert [value.value for value in payload.leads[0].custom_fields[0].values] == ["a", "b"]


def test_repeated_key_last_wins() -> None:
    [lead] = parse_webhook(
        form(
            ("leads[add][0][id]", "1"),
            ("leads[add][0][name]", "old"),
            ("leads[add][0][name]", "new"),
        )
    ).leads
    assert lead.name == "new"


def test_empty_brackets_append() -> None:
    [lead] = parse_webhook(
        form(
            ("leads[add][0][id]", "1"),
            ("leads[add][0][tags][][name]", "a"),
            ("leads[add][0][tags][][name]", "b"),
        )
    ).leads
    assert [tag.name for tag in lead.tags] == ["a", "b"]


def test_2018_bare_values() -> None:
    """A 2018 capture sends date fields as a bare [values][0]."""
    [lead] = parse_webhook(
        form(
            ("leads[update][0][id]", "1"),
            ("leads[update][0][custom_fields][0][id]", "600"),
            ("leads[update][0][custom_fields][0][name]", "Дата"),
            ("leads[update][0][custom_fields][0][values][0]", "1546300800"),
        )
    ).leads
    assert lead.custom_fields[0].values == [WebhookCustomFieldValue(value="1546300800")]


def test_string_coercion_is_tolerant() -> None:
    [lead] = parse_webhook(
        form(
            ("leads[update][0][id]", " 12 "),
            ("leads[update][0][price]", ""),
            ("leads[update][0][status_id]", "abc"),
            ("leads[update][0][pipeline_id]", "5.00"),
            ("leads[update][0][responsible_user_id]", "1" * 5000),
            ("leads[update][0][updated_at]", "2024-01-01 12:00:00"),
            ("leads[update][0][name][first]", "not a string"),
            ("leads[update][0][custom_fields]", "oops"),
            ("leads[update][0][tags][0]", "no id"),
            ("leads[update][0][custom_fields_values][0][field_id]", "3"),
        )
    ).leads
    assert lead.id == 12
    assert lead.price is None
    assert lead.status_id is None
    assert lead.pipeline_id == 5
    assert lead.responsible_user_id is None
    assert lead.updated_at is None
    assert lead.name is None
    assert lead.custom_fields == []
    assert lead.tags == []
    # what could not be typed is still there, as sent
    assert lead.raw["status_id"] == "abc"
    assert lead.raw["name"] == {"first": "not a string"}
    assert lead.model_extra == {"custom_fields_values": {"0": {"field_id": "3"}}}


def test_account_block_variants() -> None:
    payload = parse_webhook(form(("account[id]", "x"), ("account[subdomain]", "acme")))
    assert payload.account is not None
    assert (payload.account.id, payload.account.subdomain) == (None, "acme")
    assert payload.events == []
    hal = parse_webhook(form(("account[_links][self][href]", "https://acme.kommo.com")))
    assert hal.account is not None
    assert hal.account.self_url == "https://acme.kommo.com"
    flat = parse_webhook(form(("account", "30739638"), ("leads[add][0][id]", "1")))
    assert flat.account is None
    assert "account" in flat.ignored


@pytest.mark.parametrize(
    "key",
    [
        "leads[add",
        "leads]add[",
        "[add][0][id]",
        "leads[add]]",
        "leads[add][0]x",
        "leads[a[d]d][0][id]",
        "plain",
        "",
    ],
)
def test_malformed_keys_are_ignored_not_fatal(key: str) -> None:
    payload = parse_webhook(form((key, "1"), ("leads[add][0][id]", "5")))
    assert [event.id for event in payload.events] == [5]
    assert key in payload.ignored


def test_shape_conflicts_are_ignored() -> None:
    payload = parse_webhook(
        form(
            ("leads[add][0][id]", "1"),
            ("leads[add][0][id][deeper]", "2"),  # a group where a value is
            ("leads[add][1][tags][0][id]", "3"),
            ("leads[add][1][tags]", "x"),  # a value where a group is
            ("leads[add][2]", "scalar item"),
            ("leads[restore]", "scalar action"),
            ("contacts", "scalar entity"),
        )
    )
    assert [event.id for event in payload.events] == [1, None]
    assert payload.events[1].tags == [WebhookTag(id=3)]  # type: ignore[union-attr]
    assert payload.ignored == [
        "leads[add][0][id][deeper]",
        "leads[add][1][tags]",
        "leads[add][2]",
        "leads[restore]",
        "contacts",
    ]


def test_keys_deeper_than_the_limit_are_ignored() -> None:
    deep = "leads[add][0]" + "[x]" * MAX_KEY_DEPTH
    payload = parse_webhook(form((deep, "1"), ("leads[add][0][id]", "1")))
    assert payload.ignored == [deep]
    assert payload.leads[0].id == 1


def test_plus_is_a_space_and_percent_2b_a_plus() -> None:
    [contact] = parse_webhook(
        "contacts[add][0][custom_fields][0][code]=PHONE"
        "&contacts[add][0][custom_fields][0][values][0][value]=%2B7+912+345-67-89"
    ).contacts
    assert contact.phones == ["+7 912 345-67-89"]


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    [lead] = parse_webhook(b"leads[add][0][id]=1&leads[add][0][name]=%FF%FE\xff").leads
    assert lead.name == "\ufffd\ufffd\ufffd"


def test_mapping_input() -> None:
    payload = parse_webhook(
        {
            "account[id]": "30739638",
            "leads[add][0][id]": ["1", "2"],  # repeated: the last wins
            "leads[add][0][price]": b"100",  # type: ignore[dict-item]
            "leads[add][0][status_id]": 142,  # type: ignore[dict-item]
            "leads[add][0][pipeline_id]": None,  # type: ignore[dict-item]
        }
    )
    assert payload.account is not None
    assert payload.account.id == 30739638
    [lead] = payload.leads
    assert (lead.id, lead.price, lead.status_id, lead.pipeline_id) == (2, 100, 142, None)
    assert payload.ignored == ["leads[add][0][pipeline_id]"]


async def test_starlette_form_data() -> None:
    """What a receiver built on Starlette/FastAPI has in hand: ``await request.form()``."""
    from starlette.requests import Request

    body = SPEC_EXAMPLE.encode()
    sent = False

    async def receive() -> dict[str, object]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "headers": [(b"content-type", b"application/x-www-form-urlencoded")],
    }
    async with Request(scope, receive).form() as fields:
        payload = parse_webhook(fields)  # type: ignore[arg-type]
    assert payload == parse_webhook(body)


def test_redelivery_has_the_same_dedup_key_and_a_new_change_does_not() -> None:
    def update(updated_at: str, status: str = "142") -> str:
        return (
            parse_webhook(
                form(
                    ("leads[status][0][id]", "1"),
                    ("leads[status][0][status_id]", status),
                    ("leads[status][0][pipeline_id]", "6254262"),
                    ("leads[status][0][updated_at]", updated_at),
                )
            )
            .events[0]
            .dedup_key
        )

    assert update("1700000000") == update("1700000000")
    assert update("1700000000") == "leads:status:1:1700000000:6254262:142"
    assert update("1700000001") != update("1700000000")
    assert update("1700000000", "143") != update("1700000000")  # two moves in one second


def test_dedup_key_falls_back_to_last_modified() -> None:
    [contact] = parse_webhook(
        form(("contacts[update][0][id]", "3"), ("contacts[update][0][last_modified]", "17"))
    ).contacts
    assert contact.dedup_key == "contacts:update:3:17"


@pytest.mark.parametrize("body", [b"", "", {}, b"&&&", "   "])
def test_empty_body_is_a_parse_error(body: bytes | str) -> None:
    with pytest.raises(WebhookParseError, match="empty webhook body"):
        parse_webhook(body)


def test_wrong_type_is_a_parse_error() -> None:
    with pytest.raises(WebhookParseError, match="bytes, str or a mapping"):
        parse_webhook(12)  # type: ignore[arg-type]


def test_too_many_fields_is_a_parse_error() -> None:
    with pytest.raises(WebhookParseError, match="more than"):
        parse_webhook("&".join(f"leads[add][{i}][id]={i}" for i in range(MAX_FIELDS + 1)))
    with pytest.raises(WebhookParseError, match="more than"):
        parse_webhook({"leads[add][0][id]": ["1"] * (MAX_FIELDS + 1)})


def test_too_large_is_a_parse_error() -> None:
    with pytest.raises(WebhookParseError, match="too large"):
        parse_webhook(b"leads[add][0][name]=" + b"x" * (4 * 1024 * 1024))


def test_parse_error_is_an_amo_value_error() -> None:
    assert issubclass(WebhookParseError, AmoError)
    assert issubclass(WebhookParseError, ValueError)


def test_events_serialise_with_their_unknown_fields() -> None:
    payload = parse_webhook(
        form(("leads[add][0][id]", "1"), ("leads[add][0][is_price_computed]", "0"))
    )
    dumped = payload.model_dump(mode="json")
    assert dumped["events"][0]["is_price_computed"] == "0"
    assert dumped["events"][0]["entity"] == "leads"


def test_note_text_from_params() -> None:
    """API v4 notes keep their text in params[text] (the sandbox sends them so)."""
    first, second, third = parse_webhook(
        form(
            ("leads[note][0][note][id]", "1"),
            ("leads[note][0][note][params][text]", "Перезвонить"),
            ("leads[note][1][note][id]", "2"),
            ("leads[note][1][note][text]", "top-level"),
            ("leads[note][1][note][params][text]", "params"),
            ("leads[note][2][note][id]", "3"),
            ("leads[note][2][note][params]", "not a group"),
        )
    ).notes
    assert (first.note_text, first.params) == ("Перезвонить", {"text": "Перезвонить"})
    assert second.note_text == "top-level"
    assert (third.note_text, third.params) == (None, {})
