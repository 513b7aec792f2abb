"""The SDK's models: tolerant of amoCRM's nulls, keeping unknown fields, building request bodies."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from amobridge.amo.models import (
    Account,
    Company,
    ComplexCreated,
    ComplexLeadCreate,
    Contact,
    ContactCreate,
    ContactUpdate,
    CustomField,
    CustomFieldClear,
    CustomFieldType,
    CustomFieldValue,
    EmailType,
    EntityLink,
    Lead,
    LeadCreate,
    LeadUpdate,
    Note,
    NoteCreate,
    NoteType,
    Page,
    PhoneType,
    Pipeline,
    TagRef,
    User,
    WebhookSubscription,
    email_field,
    field_value,
    phone_field,
)

PHONE_AND_EMAIL = [
    {
        "field_id": 500001,
        "field_name": "Телефон",
        "field_code": "PHONE",
        "field_type": "multitext",
        "values": [
            {"value": "+7 (912) 345-67-89", "enum_id": 700001, "enum_code": "WORK"},
            {"value": "8 912 000 00 00", "enum_id": 700003, "enum_code": "MOB"},
        ],
    },
    {
        "field_id": 500002,
        "field_name": "Email",
        "field_code": "EMAIL",
        "field_type": "multitext",
        "values": [{"value": "Ivan@Example.com", "enum_id": 700007, "enum_code": "WORK"}],
    },
    {
        "field_id": 500010,
        "field_name": "Источник",
        "field_code": None,
        "field_type": "select",
        "values": [{"value": "Сайт", "enum_id": 139517}],
    },
]


# --- reading -----------------------------------------------------------------------------------


def test_unknown_fields_are_kept_at_every_level() -> None:
    lead = Lead.model_validate(
        {
            "id": 1,
            "brand_new_field": {"a": 1},
            "custom_fields_values": [
                {"field_id": 3, "values": [{"value": "x", "subtype": "city"}], "is_computed": True}
            ],
            "_embedded": {
                "tags": [{"id": 5, "name": "vip", "color": None, "is_system": False}],
                "contacts": [{"id": 7, "is_main": True, "_links": {"self": {"href": "h"}}}],
                "source": {"id": 9},
            },
        }
    )
    assert lead.model_extra == {"brand_new_field": {"a": 1}}
    assert lead.custom_fields_values[0].model_extra == {"is_computed": True}
    assert lead.custom_fields_values[0].values[0].model_extra == {"subtype": "city"}
    assert lead.tags[0].model_extra == {"is_system": False}
    assert lead.embedded.model_extra == {"source": {"id": 9}}
    assert lead.embedded.contacts[0].links == {"self": {"href": "h"}}


def test_amocrm_nulls_and_php_empty_objects_are_tolerated() -> None:
    lead = Lead.model_validate(
        {
            "id": 1,
            "name": None,
            "price": None,
            "custom_fields_values": None,
            "closed_at": None,
            "_embedded": [],  # PHP's json_encode of an empty object
            "_links": None,
        }
    )
    assert lead.custom_fields_values == []
    assert lead.price is None
    assert lead.tags == []
    assert lead.contact_ids == []
    assert lead.main_contact_id is None
    assert lead.links == {}
    pipeline = Pipeline.model_validate({"id": 1, "_embedded": {"statuses": None}})
    assert pipeline.statuses == []
    field = CustomField.model_validate({"id": 1, "enums": None, "settings": [], "type": "text"})
    assert field.enums == []
    assert field.settings == {}
    hook = WebhookSubscription.model_validate({"destination": "https://x", "settings": None})
    assert hook.settings == []
    note = Note.model_validate({"id": 1, "params": []})
    assert note.params == {}
    assert note.text is None


def test_lead_links_and_flags() -> None:
    lead = Lead.model_validate(
        {
            "id": 1,
            "status_id": "142",  # amoCRM-style string ids coerce
            "_embedded": {
                "contacts": [{"id": 10, "is_main": False}, {"id": 11, "is_main": True}],
                "companies": [{"id": 20}],
            },
        }
    )
    assert lead.status_id == 142
    assert lead.is_won
    assert not lead.is_lost
    assert lead.contact_ids == [10, 11]
    assert lead.main_contact_id == 11
    assert lead.company_id == 20
    first_when_none_main = Lead.model_validate({"id": 2, "_embedded": {"contacts": [{"id": 3}]}})
    assert first_when_none_main.main_contact_id == 3


def test_contact_phones_emails_and_custom_field_lookup() -> None:
    contact = Contact.model_validate({"id": 1, "custom_fields_values": PHONE_AND_EMAIL})
    assert contact.phones == ["+7 (912) 345-67-89", "8 912 000 00 00"]
    assert contact.emails == ["Ivan@Example.com"]
    assert contact.custom_field_value("источник") == "Сайт"  # by name, case-insensitive
    assert contact.custom_field_value(500010) == "Сайт"  # by id
    assert contact.custom_field_values("phone") == ["+7 (912) 345-67-89", "8 912 000 00 00"]
    assert contact.custom_field("nope") is None
    assert contact.custom_field_values(999) == []
    empty = Contact.model_validate({"id": 2, "custom_fields_values": None})
    assert empty.phones == []
    assert empty.emails == []
    company = Company.model_validate({"id": 3, "custom_fields_values": PHONE_AND_EMAIL[:1]})
    assert company.phones[0] == "+7 (912) 345-67-89"


def test_code_wins_over_a_name_when_reading_a_field() -> None:
    values = [
        {"field_id": 1, "field_name": "phone", "field_code": None, "values": [{"value": "decoy"}]},
        {"field_id": 2, "field_name": "Телефон", "field_code": "PHONE", "values": [{"value": "1"}]},
    ]
    contact = Contact.model_validate({"id": 1, "custom_fields_values": values})
    assert contact.phones == ["1"]


def test_enums_keep_unknown_values_as_strings() -> None:
    assert CustomField.model_validate({"id": 1, "type": "multitext"}).type is (
        CustomFieldType.MULTITEXT
    )
    assert CustomField.model_validate({"id": 1, "type": "hologram"}).type == "hologram"
    assert Note.model_validate({"id": 1, "note_type": "common"}).note_type is NoteType.COMMON
    assert Note.model_validate({"id": 1, "note_type": "telepathy"}).note_type == "telepathy"


def test_custom_field_enum_by_code_or_value() -> None:
    field = CustomField.model_validate(
        {
            "id": 1,
            "enums": [
                {"id": 10, "value": "WORK", "sort": 2, "code": "WORK"},
                {"id": 11, "value": "Мобильный", "sort": 4},
            ],
        }
    )
    work = field.enum("work")
    mobile = field.enum("мобильный")
    assert work is not None
    assert work.id == 10
    assert mobile is not None
    assert mobile.id == 11
    assert field.enum("fax") is None


def test_pipeline_finds_statuses_by_name_or_id() -> None:
    pipeline = Pipeline.model_validate(
        {
            "id": 7,
            "name": "Воронка",
            "_embedded": {
                "statuses": [
                    {"id": 1, "name": "Неразобранное", "type": 1},
                    {"id": 2, "name": "Первичный  контакт", "type": 0},
                    {"id": 142, "name": "Успешно реализовано", "type": 0},
                ]
            },
        }
    )
    found = pipeline.status("  первичный контакт ")
    assert found is not None
    assert found.id == 2
    won = pipeline.status(142)
    assert won is not None
    assert won.is_won
    assert won.is_closed
    by_digits = pipeline.status("142")
    assert by_digits is not None
    assert by_digits.id == 142
    unsorted = pipeline.status(1)
    assert unsorted is not None
    assert unsorted.is_unsorted
    assert pipeline.status("Оплачено") is None


def test_stage_names_match_with_yo_read_as_ye() -> None:
    """A stage written "Прошёл второй урок" in amoCRM is found as "ПРОШЕЛ ВТОРОЙ УРОК" in a rule,
    and the other way round: people type «е» for «ё» all the time."""
    pipeline = Pipeline.model_validate(
        {
            "id": 9,
            "name": "onAI Academy",
            "_embedded": {
                "statuses": [
                    {"id": 11, "name": "Прошёл второй урок", "type": 0},
                    {"id": 12, "name": "ПРОШЕЛ ТРЕТИЙ УРОК", "type": 0},
                ]
            },
        }
    )
    second = pipeline.status("ПРОШЕЛ ВТОРОЙ УРОК")
    assert second is not None
    assert second.id == 11
    third = pipeline.status("прошёл третий урок")
    assert third is not None
    assert third.id == 12


def test_account_and_user() -> None:
    account = Account.model_validate(
        {"id": 30000001, "subdomain": "acme", "_embedded": {"users_groups": []}, "x": 1}
    )
    assert account.subdomain == "acme"
    assert account.embedded == {"users_groups": []}
    assert account.model_extra == {"x": 1}
    user = User.model_validate({"id": 1, "rights": {"is_admin": True}})
    assert user.is_admin is True
    assert User.model_validate({"id": 2, "rights": []}).is_admin is None


def test_complex_reply_request_id_is_a_list() -> None:
    assert ComplexCreated.model_validate({"id": 1, "request_id": ["a"]}).request_id == ["a"]
    assert ComplexCreated.model_validate({"id": 1, "request_id": "a"}).request_id == ["a"]


def test_page_iterates_its_items() -> None:
    page = Page(items=[1, 2], page=3, has_next=False)
    assert list(page) == [1, 2]
    assert len(page) == 2


# --- building requests ---------------------------------------------------------------------------


def test_phone_and_email_builders() -> None:
    assert phone_field("+79120001122", "+79130001122").model_dump(exclude_unset=True) == {
        "field_code": "PHONE",
        "values": [
            {"value": "+79120001122", "enum_code": "WORK"},
            {"value": "+79130001122", "enum_code": "WORK"},
        ],
    }
    assert email_field("a@b.c", enum_code=EmailType.PRIV).model_dump(exclude_unset=True) == {
        "field_code": "EMAIL",
        "values": [{"value": "a@b.c", "enum_code": "PRIV"}],
    }
    assert phone_field("1", enum_code=PhoneType.MOB).values[0].enum_code == "MOB"


def test_field_value_by_id_code_and_enum() -> None:
    assert field_value(512345, "Сайт").model_dump(exclude_unset=True) == {
        "field_id": 512345,
        "values": [{"value": "Сайт"}],
    }
    assert field_value(512346, enum_id=7001).model_dump(exclude_unset=True) == {
        "field_id": 512346,
        "values": [{"enum_id": 7001}],
    }
    with pytest.raises(ValueError, match="at least one value"):
        field_value(1)
    with pytest.raises(ValidationError):
        CustomFieldValue.model_validate({"values": [{"value": 1}]})  # names no field


def test_lead_create_body() -> None:
    lead = LeadCreate(
        name="Заявка с сайта",
        price=15000,
        pipeline_id=6000001,
        status_id=50000002,
        custom_fields_values=[field_value(512345, "Сайт")],
        tags_to_add=["vip", 100001, TagRef(name="web")],
        contacts=[2000001, EntityLink(id=2000002, is_main=True)],
        companies=[3000001],
    )
    assert lead.to_api() == {
        "name": "Заявка с сайта",
        "price": 15000,
        "pipeline_id": 6000001,
        "status_id": 50000002,
        "custom_fields_values": [{"field_id": 512345, "values": [{"value": "Сайт"}]}],
        "tags_to_add": [{"name": "vip"}, {"id": 100001}, {"name": "web"}],
        "_embedded": {
            "contacts": [{"id": 2000001}, {"id": 2000002, "is_main": True}],
            "companies": [{"id": 3000001}],
        },
    }
    assert LeadCreate().to_api() == {}  # every field optional; nothing unset is sent


def test_input_models_reject_typos_and_bad_tags() -> None:
    with pytest.raises(ValidationError, match="nmae"):
        LeadCreate(nmae="x")  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        LeadCreate(tags_to_add=[{}])
    with pytest.raises(ValidationError):
        LeadCreate(contacts=["not an id"])


def test_update_sends_explicit_nulls_and_clears_fields() -> None:
    update = LeadUpdate(
        id=5,
        closed_at=None,
        custom_fields_values=[
            CustomFieldClear(field_id=512345),
            {"field_code": "BUDGET", "values": None},
            {"field_id": 512346, "values": ["set"]},
        ],
        tags_to_delete=["old"],
    )
    assert update.to_api() == {
        "id": 5,
        "closed_at": None,
        "custom_fields_values": [
            {"field_id": 512345, "values": None},
            {"field_code": "BUDGET", "values": None},
            {"field_id": 512346, "values": [{"value": "set"}]},
        ],
        "tags_to_delete": [{"name": "old"}],
    }
    with pytest.raises(ValidationError, match="field_id or field_code"):
        ContactUpdate(custom_fields_values=[{"values": None}])


def test_complex_lead_embeds_one_contact_and_company() -> None:
    body = ComplexLeadCreate(
        name="Сделка",
        price=1,
        contact=ContactCreate(
            first_name="Иван", custom_fields_values=[phone_field("+79120001122")]
        ),
        company={"name": "ООО Ромашка"},  # type: ignore[arg-type]
        request_id="r1",
    ).to_api()
    assert body == {
        "name": "Сделка",
        "price": 1,
        "request_id": "r1",
        "_embedded": {
            "contacts": [
                {
                    "first_name": "Иван",
                    "custom_fields_values": [
                        {
                            "field_code": "PHONE",
                            "values": [{"value": "+79120001122", "enum_code": "WORK"}],
                        }
                    ],
                }
            ],
            "companies": [{"name": "ООО Ромашка"}],
        },
    }


def test_note_create_common() -> None:
    assert NoteCreate.common(1000001, "Перезвонить").to_api() == {
        "entity_id": 1000001,
        "note_type": "common",
        "params": {"text": "Перезвонить"},
    }


def test_tags_replace_under_embedded() -> None:
    assert LeadCreate(tags=["vip"], contacts=[1]).to_api() == {
        "_embedded": {"tags": [{"name": "vip"}], "contacts": [{"id": 1}]}
    }
    assert LeadUpdate(id=1, tags=[]).to_api() == {"id": 1, "_embedded": {"tags": []}}
    assert ContactCreate(name="x", companies=[5]).to_api() == {
        "name": "x",
        "_embedded": {"companies": [{"id": 5}]},
    }
    assert ComplexLeadCreate(tags=[7]).to_api() == {"_embedded": {"tags": [{"id": 7}]}}
