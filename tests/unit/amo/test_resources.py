"""The endpoint resources against a fake Requester that records every call.

These pin what each resource sends (method, path, params, body, retry mode) and how it reads
replies: pages, 204s, chunked writes mapped back to their inputs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from amobridge.amo.errors import AmoAmbiguousWrite, AmoNotFound, AmoServerError, AmoTimeout
from amobridge.amo.models import (
    CompanyCreate,
    ComplexLeadCreate,
    ContactCreate,
    ContactUpdate,
    LeadCreate,
    LeadUpdate,
    NoteCreate,
    TagCreate,
    phone_field,
)
from amobridge.amo.resources import AmoLookupError, Endpoints


@dataclass
class Call:
    method: str
    path: str
    params: dict[str, Any]
    json: Any
    retry: str


Handler = Callable[[Call], Any]


class FakeRequester:
    """Records calls; answers each with ``handler(call)`` (raise to fail the call)."""

    def __init__(self, handler: Handler | None = None) -> None:
        self.calls: list[Call] = []
        self.handler: Handler = handler or (lambda call: None)

    async def request_json(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        retry: str = "safe",
    ) -> Any:
        call = Call(method, path, dict(params or {}), copy.deepcopy(json), retry)
        self.calls.append(call)
        return self.handler(call)


def amo_with(handler: Handler) -> tuple[Endpoints, FakeRequester]:
    fake = FakeRequester(handler)
    return Endpoints(fake), fake


def created_reply(key: str, start_id: int = 1000) -> Handler:
    """A create endpoint: echoes each request_id, ids in order, reply listed in reverse order."""
    counter = iter(range(start_id, start_id + 10_000))

    def handler(call: Call) -> Any:
        items = [
            {"id": next(counter), "request_id": body["request_id"], "_links": {}}
            for body in call.json
        ]
        return {"_embedded": {key: list(reversed(items))}}

    return handler


def page_reply(key: str, items: list[dict[str, Any]], page: int, has_next: bool) -> Any:
    links: dict[str, Any] = {"self": {"href": f"https://acme.amocrm.ru/api/v4/{key}?page={page}"}}
    if has_next:
        links["next"] = {"href": f"https://acme.amocrm.ru/api/v4/{key}?page={page + 1}"}
    return {"_page": page, "_links": links, "_embedded": {key: items}}


# --- pages ---------------------------------------------------------------------------------------


async def test_list_sends_filters_and_reads_one_page() -> None:
    amo, fake = amo_with(
        lambda call: page_reply("leads", [{"id": 1, "name": "a"}, {"id": 2}], 2, True)
    )
    page = await amo.leads.list(page=2, limit=2, pipeline_id=6000001, order=("id", "desc"))
    assert [lead.id for lead in page] == [1, 2]
    assert page.page == 2
    assert page.has_next is True
    (call,) = fake.calls
    assert (call.method, call.path, call.retry) == ("GET", "leads", "safe")
    assert call.params == {
        "filter[pipeline_id][0]": "6000001",
        "order[id]": "desc",
        "page": "2",
        "limit": "2",
    }


async def test_empty_page_is_a_204() -> None:
    amo, _ = amo_with(lambda call: None)
    page = await amo.leads.list(query="nobody")
    assert page.items == []
    assert page.page == 1
    assert page.has_next is False


@pytest.mark.parametrize(("page", "limit"), [(0, 50), (1, 0), (1, 251), (-1, 250)])
async def test_out_of_range_page_or_limit_is_refused_before_sending(page: int, limit: int) -> None:
    amo, fake = amo_with(lambda call: None)
    with pytest.raises(ValueError, match=r"page|limit"):
        await amo.leads.list(page=page, limit=limit)
    assert fake.calls == []


async def test_iterate_walks_pages_until_no_next_link() -> None:
    pages = {
        1: page_reply("leads", [{"id": 1}, {"id": 2}], 1, True),
        2: page_reply("leads", [{"id": 3}, {"id": 4}], 2, True),
        3: page_reply("leads", [{"id": 5}], 3, False),
    }
    amo, fake = amo_with(lambda call: pages[int(call.params["page"])])
    ids = [lead.id async for lead in amo.leads.iterate(limit=2, updated_from=100)]
    assert ids == [1, 2, 3, 4, 5]
    assert [c.params["page"] for c in fake.calls] == ["1", "2", "3"]
    assert all(c.params["filter[updated_at][from]"] == "100" for c in fake.calls)
    assert all(c.params["limit"] == "2" for c in fake.calls)


async def test_iterate_stops_at_a_204_even_after_a_next_link() -> None:
    replies = {1: page_reply("contacts", [{"id": 1}], 1, True), 2: None}
    amo, fake = amo_with(lambda call: replies[int(call.params["page"])])
    ids = [contact.id async for contact in amo.contacts.iterate()]
    assert ids == [1]
    assert len(fake.calls) == 2


async def test_a_malformed_page_is_a_server_error() -> None:
    amo, _ = amo_with(lambda call: {"_page": 1, "_embedded": {"leads": {"oops": 1}}})
    with pytest.raises(AmoServerError, match=r"_embedded\.leads"):
        await amo.leads.list()
    amo, _ = amo_with(lambda call: {"_page": 1, "_embedded": {"leads": [{"name": "no id"}]}})
    with pytest.raises(AmoServerError, match="not a Lead"):
        await amo.leads.list()


# --- get -----------------------------------------------------------------------------------------


async def test_get_missing_entity_is_none() -> None:
    amo, fake = amo_with(lambda call: None)
    assert await amo.leads.get(5) is None
    assert await amo.contacts.get(6) is None
    assert await amo.companies.get(7) is None
    assert await amo.users.get(8) is None
    assert await amo.pipelines.get(9) is None
    assert await amo.custom_fields.get("leads", 10) is None
    assert await amo.notes.get("contacts", 11) is None
    assert [(c.path, c.params) for c in fake.calls] == [
        ("leads/5", {}),
        ("contacts/6", {}),
        ("companies/7", {}),
        ("users/8", {}),
        ("leads/pipelines/9", {}),
        ("leads/custom_fields/10", {}),
        ("contacts/notes/11", {}),
    ]


async def test_get_lead_with_contacts() -> None:
    amo, fake = amo_with(
        lambda call: {"id": 5, "_embedded": {"contacts": [{"id": 9, "is_main": True}]}}
    )
    lead = await amo.leads.get(5, with_contacts=True, with_=["loss_reason"])
    assert lead is not None
    assert lead.main_contact_id == 9
    assert fake.calls[0].params == {"with": "loss_reason,contacts"}


async def test_account_get_with_parts() -> None:
    amo, fake = amo_with(lambda call: {"id": 1, "subdomain": "acme", "current_user_id": 2})
    account = await amo.account.get(with_=["users_groups", "task_types"])
    assert account.current_user_id == 2
    assert (fake.calls[0].path, fake.calls[0].params) == (
        "account",
        {"with": "users_groups,task_types"},
    )


# --- creates -------------------------------------------------------------------------------------


async def test_create_101_leads_sends_50_50_1_in_order() -> None:
    amo, fake = amo_with(created_reply("leads"))
    leads = [LeadCreate(name=f"lead {i}") for i in range(101)]
    results = await amo.leads.create(leads)

    assert [len(c.json) for c in fake.calls] == [50, 50, 1]
    assert all((c.method, c.path, c.retry) == ("POST", "leads", "create") for c in fake.calls)
    sent = [body for c in fake.calls for body in c.json]
    assert [body["name"] for body in sent] == [f"lead {i}" for i in range(101)]
    request_ids = [body["request_id"] for body in sent]
    assert len(set(request_ids)) == 101
    assert all(request_ids)
    # The fake answers each chunk in reverse: results still follow the inputs.
    assert [r.request_id for r in results] == request_ids
    assert [r.id for r in results] == list(range(1000, 1101))


async def test_create_keeps_the_callers_request_ids() -> None:
    amo, fake = amo_with(created_reply("leads"))
    results = await amo.leads.create(
        [LeadCreate(name="a", request_id="order-17"), LeadCreate(name="b")]
    )
    assert fake.calls[0].json[0]["request_id"] == "order-17"
    assert results[0].request_id == "order-17"
    assert results[1].request_id not in (None, "order-17")


async def test_duplicate_request_ids_are_refused() -> None:
    amo, fake = amo_with(created_reply("leads"))
    with pytest.raises(ValueError, match="twice"):
        await amo.leads.create([LeadCreate(request_id="x"), LeadCreate(request_id="x")])
    assert fake.calls == []


@pytest.mark.parametrize("size", [0, 251, -5])
async def test_chunk_size_above_amocrm_limit_is_refused(size: int) -> None:
    amo, fake = amo_with(created_reply("leads"))
    with pytest.raises(ValueError, match="chunk_size"):
        await amo.leads.create([LeadCreate(name="a")], chunk_size=size)
    with pytest.raises(ValueError, match="chunk_size"):
        await amo.leads.update([LeadUpdate(id=1, name="a")], chunk_size=size)
    assert fake.calls == []


async def test_chunk_size_is_configurable_up_to_250() -> None:
    amo, fake = amo_with(created_reply("contacts"))
    await amo.contacts.create([ContactCreate(name=str(i)) for i in range(300)], chunk_size=250)
    assert [len(c.json) for c in fake.calls] == [250, 50]


async def test_reply_missing_a_request_id_is_an_ambiguous_write() -> None:
    def handler(call: Call) -> Any:
        return {"_embedded": {"leads": [{"id": 1, "request_id": call.json[0]["request_id"]}]}}

    amo, fake = amo_with(handler)
    with pytest.raises(AmoAmbiguousWrite) as caught:
        await amo.leads.create([LeadCreate(name="a"), LeadCreate(name="b")])
    assert caught.value.request_ids == [body["request_id"] for body in fake.calls[0].json]


async def test_failure_in_a_later_chunk_notes_what_was_created() -> None:
    created = created_reply("leads")
    answered: list[Call] = []

    def handler(call: Call) -> Any:
        if answered:
            raise AmoTimeout("deadline passed")  # the second request fails
        answered.append(call)
        return created(call)

    amo, fake = amo_with(handler)
    with pytest.raises(AmoTimeout) as caught:
        await amo.leads.create([LeadCreate(name=str(i)) for i in range(120)])
    assert len(fake.calls) == 2  # the third chunk was never sent
    notes = getattr(caught.value, "__notes__", [])
    assert any("50 of 120 items were created" in note for note in notes)


async def test_complex_create_chunks_at_50_and_maps_the_bare_array() -> None:
    def handler(call: Call) -> Any:
        assert call.path == "leads/complex"
        return [
            {
                "id": 1000 + int(body["name"]),
                "contact_id": 2000 + int(body["name"]),
                "company_id": None,
                "request_id": [body["request_id"]],
                "merged": False,
            }
            for body in reversed(call.json)
        ]

    amo, fake = amo_with(handler)
    leads = [ComplexLeadCreate(name=str(i), contact=ContactCreate(name=f"c{i}")) for i in range(60)]
    results = await amo.leads.create_complex(leads)
    assert [len(c.json) for c in fake.calls] == [50, 10]
    assert all(c.retry == "create" for c in fake.calls)
    assert [r.id for r in results] == [1000 + i for i in range(60)]
    assert [r.contact_id for r in results] == [2000 + i for i in range(60)]
    assert fake.calls[0].json[0]["_embedded"] == {"contacts": [{"name": "c0"}]}
    with pytest.raises(ValueError, match="chunk_size"):
        await amo.leads.create_complex(leads, chunk_size=51)


async def test_create_one_and_companies() -> None:
    amo, fake = amo_with(created_reply("companies", start_id=3000001))
    created = await amo.companies.create_one(CompanyCreate(name="ООО Ромашка"))
    assert created.id == 3000001
    assert fake.calls[0].path == "companies"
    assert fake.calls[0].json[0]["name"] == "ООО Ромашка"


async def test_creates_need_their_input_models() -> None:
    amo, fake = amo_with(created_reply("leads"))
    with pytest.raises(TypeError, match="LeadCreate"):
        await amo.leads.create([{"name": "a dict"}])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="list"):
        await amo.leads.create(LeadCreate(name="not in a list"))  # type: ignore[arg-type]
    assert fake.calls == []


# --- updates -------------------------------------------------------------------------------------


async def test_update_chunks_and_maps_by_id() -> None:
    def handler(call: Call) -> Any:
        items = [{"id": body["id"], "updated_at": 1700000000 + body["id"]} for body in call.json]
        return {"_embedded": {"leads": list(reversed(items))}}

    amo, fake = amo_with(handler)
    results = await amo.leads.update(
        [LeadUpdate(id=i, price=i * 10) for i in range(1, 8)], chunk_size=3
    )
    assert [len(c.json) for c in fake.calls] == [3, 3, 1]
    assert all((c.method, c.path, c.retry) == ("PATCH", "leads", "safe") for c in fake.calls)
    assert fake.calls[0].json[0] == {"id": 1, "price": 10}
    assert [r.id for r in results] == list(range(1, 8))
    assert [r.updated_at for r in results] == [1700000000 + i for i in range(1, 8)]


async def test_update_needs_ids_and_a_complete_reply() -> None:
    amo, fake = amo_with(lambda call: {"_embedded": {"contacts": []}})
    with pytest.raises(ValueError, match="id"):
        await amo.contacts.update([ContactUpdate(name="no id")])
    assert fake.calls == []
    with pytest.raises(AmoServerError, match="id 5 missing"):
        await amo.contacts.update([ContactUpdate(id=5, name="x")])


async def test_update_one_patches_the_entity_path() -> None:
    amo, fake = amo_with(lambda call: {"id": 5, "updated_at": 1700000001})
    result = await amo.leads.update_one(5, LeadUpdate(status_id=142, tags_to_add=["won"]))
    assert result.updated_at == 1700000001
    (call,) = fake.calls
    assert (call.method, call.path, call.retry) == ("PATCH", "leads/5", "safe")
    assert call.json == {"status_id": 142, "tags_to_add": [{"name": "won"}]}
    with pytest.raises(ValueError, match="carry id 6"):
        await amo.leads.update_one(5, LeadUpdate(id=6, name="x"))


# --- contacts, tags, notes, custom fields --------------------------------------------------------


async def test_contacts_find_by_query() -> None:
    amo, fake = amo_with(
        lambda call: page_reply(
            "contacts",
            [{"id": 1, "custom_fields_values": [phone_field("+79120001122").model_dump()]}],
            1,
            False,
        )
    )
    found = await amo.contacts.find("+7912", limit=10)
    assert [c.phones for c in found] == [["+79120001122"]]
    assert fake.calls[0].params == {"query": "+7912", "page": "1", "limit": "10"}
    with pytest.raises(ValueError, match="query"):
        await amo.contacts.find("  ")


async def test_tags_list_and_create() -> None:
    def handler(call: Call) -> Any:
        if call.method == "GET":
            return page_reply("tags", [{"id": 1, "name": "vip", "color": None}], 1, False)
        return {
            "_embedded": {
                "tags": [
                    {"id": 100 + i, "name": body["name"], "request_id": body["request_id"]}
                    for i, body in enumerate(call.json)
                ]
            }
        }

    amo, fake = amo_with(handler)
    page = await amo.tags.list("contacts", query="vi")
    assert [t.name for t in page] == ["vip"]
    tags = await amo.tags.create("contacts", ["new", TagCreate(name="red", color="#f00")])
    assert [(t.id, t.name) for t in tags] == [(100, "new"), (101, "red")]
    assert fake.calls[0].path == fake.calls[1].path == "contacts/tags"
    assert fake.calls[0].params == {"query": "vi", "page": "1", "limit": "250"}
    assert fake.calls[1].json[1]["color"] == "#f00"
    assert fake.calls[1].retry == "create"
    with pytest.raises(ValueError, match="entity_type"):
        await amo.tags.list("tasks")  # type: ignore[arg-type]


async def test_notes_per_entity() -> None:
    def handler(call: Call) -> Any:
        if call.method == "GET":
            note = {"id": 1, "entity_id": 5, "note_type": "common", "params": {"text": "hi"}}
            return page_reply("notes", [note], 1, False)
        return created_reply("notes")(call)

    amo, fake = amo_with(handler)
    notes = await amo.notes.list("leads", 5, note_type="common", updated_from=10)
    assert notes.items[0].text == "hi"
    assert fake.calls[0].path == "leads/5/notes"
    assert fake.calls[0].params == {
        "filter[note_type][0]": "common",
        "filter[updated_at][from]": "10",
        "page": "1",
        "limit": "250",
    }
    created = await amo.notes.create("leads", [NoteCreate.common(5, "Перезвонить")])
    assert created[0].id == 1000
    assert fake.calls[1].path == "leads/notes"
    assert fake.calls[1].json[0]["params"] == {"text": "Перезвонить"}


async def test_custom_fields_find_by_code_or_name() -> None:
    fields = [
        {"id": 1, "name": "Телефон", "code": "PHONE", "type": "multitext"},
        {"id": 2, "name": "Источник", "code": None, "type": "select"},
    ]
    amo, fake = amo_with(lambda call: page_reply("custom_fields", fields, 1, False))
    assert (await amo.custom_fields.find("contacts", "phone")).id == 1
    assert (await amo.custom_fields.find("contacts", "источник")).id == 2
    assert (await amo.custom_fields.find("contacts", 2)).name == "Источник"
    with pytest.raises(AmoLookupError, match="'Телефон' \\(id 1, code PHONE\\)") as caught:
        await amo.custom_fields.find("contacts", "Budget")
    assert caught.value.available == ["Телефон", "Источник"]
    assert fake.calls[0].path == "contacts/custom_fields"


# --- pipelines -----------------------------------------------------------------------------------

PIPELINES = {
    "_total_items": 2,
    "_embedded": {
        "pipelines": [
            {
                "id": 10,
                "name": "Воронка",
                "is_main": True,
                "_embedded": {
                    "statuses": [
                        {"id": 101, "name": "Первичный контакт", "pipeline_id": 10},
                        {"id": 142, "name": "Успешно реализовано", "pipeline_id": 10},
                    ]
                },
            },
            {
                "id": 20,
                "name": "Оптовые продажи",
                "is_main": False,
                "_embedded": {
                    "statuses": [
                        {"id": 201, "name": "Новая заявка", "pipeline_id": 20},
                        {"id": 142, "name": "Успешно реализовано", "pipeline_id": 20},
                    ]
                },
            },
        ]
    },
}


async def test_find_status_by_names_ids_or_main_pipeline() -> None:
    amo, fake = amo_with(lambda call: PIPELINES)
    status = await amo.pipelines.find_status("оптовые  продажи", "Новая заявка")
    assert (status.pipeline_id, status.id) == (20, 201)
    won = await amo.pipelines.find_status(20, 142)
    assert (won.pipeline_id, won.id) == (20, 142)
    main = await amo.pipelines.find_status(None, "первичный контакт")
    assert main.id == 101
    assert {c.path for c in fake.calls} == {"leads/pipelines"}


async def test_find_status_errors_list_what_exists() -> None:
    amo, _ = amo_with(lambda call: PIPELINES)
    with pytest.raises(AmoLookupError) as caught:
        await amo.pipelines.find_status("Воронка", "Оплачено")
    message = str(caught.value)
    assert "no status 'Оплачено' in pipeline 'Воронка' (id 10)" in message
    assert "'Первичный контакт' (id 101)" in message
    assert caught.value.available == ["Первичный контакт", "Успешно реализовано"]
    with pytest.raises(AmoLookupError, match="'Оптовые продажи' \\(id 20\\)"):
        await amo.pipelines.find_status("Розница", "Новая заявка")
    assert isinstance(caught.value, LookupError)


async def test_pipelines_list_and_statuses() -> None:
    wholesale = PIPELINES["_embedded"]["pipelines"][1]  # type: ignore[index]

    def handler(call: Call) -> Any:
        if call.path == "leads/pipelines":
            return PIPELINES
        assert call.path == "leads/pipelines/20/statuses"
        return {"_embedded": {"statuses": wholesale["_embedded"]["statuses"]}}

    amo, _ = amo_with(handler)
    assert [p.name for p in await amo.pipelines.list()] == ["Воронка", "Оптовые продажи"]
    assert [s.id for s in await amo.pipelines.statuses(20)] == [201, 142]


# --- users, webhooks -----------------------------------------------------------------------------


async def test_users_iterate() -> None:
    pages = {
        1: page_reply("users", [{"id": 1, "rights": {"is_admin": True}}], 1, True),
        2: page_reply("users", [{"id": 2, "rights": []}], 2, False),
    }
    amo, _ = amo_with(lambda call: pages[int(call.params["page"])])
    users = await amo.users.all()
    assert [(u.id, u.is_admin) for u in users] == [(1, True), (2, None)]


async def test_webhook_subscriptions() -> None:
    destination = "https://app.example/hooks/amocrm/s3cr3t"
    hook = {
        "id": 9001,
        "destination": destination,
        "settings": ["add_lead", "status_lead"],
        "sort": 10,
        "disabled": False,
    }

    def handler(call: Call) -> Any:
        if call.method == "GET":
            return {"_total_items": 1, "_embedded": {"webhooks": [hook]}}
        if call.method == "POST":
            return hook
        if call.json["destination"] == "https://gone.example":
            raise AmoNotFound("no such hook", status=404)
        return None

    amo, fake = amo_with(handler)
    listed = await amo.webhooks.list(destination=destination)
    assert [h.id for h in listed] == [9001]
    assert fake.calls[0].params == {"filter[destination]": destination}
    made = await amo.webhooks.subscribe(
        destination,
        ["add_lead", "status_lead"],
        sort=10,
    )
    assert made.settings == ["add_lead", "status_lead"]
    assert fake.calls[1].json == {
        "destination": destination,
        "settings": ["add_lead", "status_lead"],
        "sort": 10,
    }
    assert fake.calls[1].retry == "safe"
    assert await amo.webhooks.unsubscribe(destination) is True  # type: ignore[arg-type]
    assert fake.calls[2].method == "DELETE"
    assert fake.calls[2].json == {"destination": destination}
    assert await amo.webhooks.unsubscribe("https://gone.example") is False
    with pytest.raises(ValueError, match="settings"):
        await amo.webhooks.subscribe("https://x.example", [])


async def test_webhooks_none_is_an_empty_list() -> None:
    amo, _ = amo_with(lambda call: None)
    assert await amo.webhooks.list() == []
