"""The lead API end to end against the sandbox: accepted at once (201, pending), pushed by the
worker (synced, with amoCRM's id), read back, listed and changed — each on SQLite and
PostgreSQL."""

from __future__ import annotations

from typing import Any

from leads_support import (
    OWNER,
    account,
    add_lead_field,
    add_pipeline,
    connected,
    drain,
    get_lead,
    live_contacts,
    live_leads,
    post_lead,
)


async def test_a_lead_is_pending_then_synced_with_its_contact(stack: Any) -> None:
    await connected(stack)
    created = await post_lead(
        stack,
        {
            "name": "Заявка с сайта",
            "price": 15000,
            "pipeline": "воронка",
            "stage": "ПЕРЕГОВОРЫ",
            "contact": {"name": "Иван", "email": "Ivan@Example.com", "phone": "8 900 123-45-67"},
            "tags": ["сайт"],
        },
    )
    assert created.status_code == 201, created.text
    lead = created.json()
    assert lead["state"] == "pending"
    assert lead["amo_id"] is None
    assert lead["connection"] == "active"
    assert (lead["pipeline"], lead["stage"]) == ("Воронка", "Переговоры")
    assert lead["contact"]["email"] == "ivan@example.com"
    assert lead["contact"]["phone"] == "+79001234567"
    assert live_leads(stack) == []  # nothing reached amoCRM on the request's path

    assert await drain(stack) == 2  # the create, then its amoCRM time read back (readback.py)
    shown = (await get_lead(stack, lead["id"])).json()
    assert shown["state"] == "synced", shown
    assert shown["last_error"] is None
    assert shown["amo_updated_at"] is not None
    (in_amo,) = live_leads(stack)
    assert in_amo.id == shown["amo_id"]
    assert (in_amo.name, in_amo.price, in_amo.status_id) == (
        "Заявка с сайта",
        15000,
        lead["stage_id"],
    )
    (contact,) = live_contacts(stack)
    assert in_amo.contact_ids == [contact.id] == [shown["contact"]["amo_id"]]
    assert contact.name == "Иван"
    values = {
        item["field_code"]: item["values"][0]["value"] for item in contact.custom_fields_values
    }
    assert values == {"EMAIL": "ivan@example.com", "PHONE": "+79001234567"}
    tags = {account(stack).tags["leads"][t].name for t in in_amo.tag_ids}
    assert tags == {"сайт"}


async def test_without_pipeline_and_stage_the_main_pipelines_first_stage(stack: Any) -> None:
    await connected(stack)
    lead = (await post_lead(stack, {"name": "Звонок"})).json()
    assert (lead["pipeline"], lead["stage"]) == ("Воронка", "Первичный контакт")
    await drain(stack)
    (in_amo,) = live_leads(stack)
    assert in_amo.status_id == lead["stage_id"]


async def test_a_retried_post_with_the_same_idempotency_key_creates_one_lead(stack: Any) -> None:
    await connected(stack)
    body = {"name": "Заявка", "contact": {"email": "a@example.com"}}
    key = {"Idempotency-Key": "6f1b0d2e-8a4c-4f7e-9b1a-2c3d4e5f6a7b"}
    first = await post_lead(stack, body, headers=key)
    again = await post_lead(stack, body, headers=key)
    assert first.status_code == again.status_code == 201, (first.text, again.text)
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers

    other = await post_lead(stack, {**body, "name": "Другая"}, headers=key)
    assert other.status_code == 422
    assert other.json()["error"] == "idempotency_key_reused"

    await drain(stack)
    assert len(live_leads(stack)) == 1
    listed = await stack.http.get("/leads", params={"owner": OWNER}, headers=stack.app_headers())
    assert [item["id"] for item in listed.json()["items"]] == [first.json()["id"]]


async def test_an_idempotency_key_belongs_to_its_owner(stack: Any) -> None:
    await connected(stack)
    await connected(stack, "user-7")
    key = {"Idempotency-Key": "same-key"}
    mine = await post_lead(stack, {"name": "A"}, headers=key)
    theirs = await stack.http.post(
        "/leads", json={"owner": "user-7", "name": "A"}, headers={**stack.app_headers(), **key}
    )
    assert mine.status_code == theirs.status_code == 201
    assert mine.json()["id"] != theirs.json()["id"]


async def test_external_id_is_unique_per_owner(stack: Any) -> None:
    await connected(stack)
    first = await post_lead(stack, {"name": "Заказ 1001", "external_id": "order-1001"})
    again = await post_lead(stack, {"name": "Заказ 1001 (again)", "external_id": "order-1001"})
    assert first.status_code == 201
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["name"] == "Заказ 1001"  # the stored lead, unchanged
    await drain(stack)
    assert len(live_leads(stack)) == 1


async def test_unknown_names_are_refused_with_the_real_ones(stack: Any) -> None:
    await connected(stack)
    stage = await post_lead(stack, {"name": "x", "pipeline": "Воронка", "stage": "Оплачено"})
    assert stage.status_code == 422
    problem = stage.json()
    assert problem["error"] == "unknown_stage"
    names = [item["name"] for item in problem["available"]]
    assert "Переговоры" in names
    assert "Успешно реализовано" in names
    assert "Переговоры" in problem["detail"]

    pipeline = await post_lead(stack, {"name": "x", "pipeline": "Продажи"})
    assert pipeline.status_code == 422
    assert pipeline.json()["error"] == "unknown_pipeline"
    assert [item["name"] for item in pipeline.json()["available"]] == ["Воронка"]

    field = await post_lead(stack, {"name": "x", "custom_fields": {"Истоник": "Сайт"}})
    assert field.status_code == 422
    assert field.json()["error"] == "unknown_custom_field"
    assert live_leads(stack) == []
    listed = await stack.http.get("/leads", params={"owner": OWNER}, headers=stack.app_headers())
    assert listed.json()["items"] == []  # nothing stored


async def test_names_match_case_and_yo_insensitively_and_new_stages_are_found(stack: Any) -> None:
    await connected(stack)
    await post_lead(stack, {"name": "warm the cache"})
    # Added in amoCRM after the catalogue was cached: found once the cache is read again.
    academy = await add_pipeline(stack, "onAI Academy", ["Записался", "Прошёл второй урок"])
    stack.services.sync.catalogues.ttl = stack.services.sync.catalogues.ttl * 0
    lead = await post_lead(
        stack, {"name": "Студент", "pipeline": "ONAI ACADEMY", "stage": "ПРОШЕЛ ВТОРОЙ УРОК"}
    )
    assert lead.status_code == 201, lead.text
    assert lead.json()["pipeline_id"] == academy["id"]
    assert lead.json()["stage"] == "Прошёл второй урок"


async def test_custom_fields_by_name_code_or_id(stack: Any) -> None:
    source = add_lead_field(stack, "Источник", "select", ["Сайт", "Звонок"])
    budget = add_lead_field(stack, "Бюджет клиента", "numeric")
    await connected(stack)
    lead = await post_lead(
        stack, {"name": "x", "custom_fields": {"источник": "сайт", str(budget.id): 1200}}
    )
    assert lead.status_code == 201, lead.text
    fields = {f["field_id"]: f for f in lead.json()["custom_fields"]}
    assert fields[source.id]["values"] == [{"enum_id": source.enums[0].id, "value": "Сайт"}]
    bad = await post_lead(stack, {"name": "x", "custom_fields": {"Источник": "Радио"}})
    assert bad.status_code == 422
    assert bad.json()["error"] == "invalid_custom_field_value"
    assert [o["name"] for o in bad.json()["available"]] == ["Сайт", "Звонок"]
    await drain(stack)
    (in_amo,) = live_leads(stack)
    stored = {item["field_id"]: item["values"] for item in in_amo.custom_fields_values}
    assert stored[source.id][0]["value"] == "Сайт"
    assert stored[budget.id][0]["value"] == "1200"


async def test_no_connection_is_404(stack: Any) -> None:
    answer = await post_lead(stack, {"name": "x"})
    assert answer.status_code == 404
    assert answer.json()["error"] == "connection_not_found"


async def test_invalid_contact_details_are_422(stack: Any) -> None:
    await connected(stack)
    email = await post_lead(stack, {"name": "x", "contact": {"email": "ivan@"}})
    phone = await post_lead(stack, {"name": "x", "contact": {"phone": "12"}})
    assert (email.status_code, email.json()["error"]) == (422, "invalid_email")
    assert (phone.status_code, phone.json()["error"]) == (422, "invalid_phone")


async def test_another_owner_cannot_see_or_change_a_lead(stack: Any) -> None:
    other = (await stack.control.post("/_sandbox/accounts", json={"subdomain": "beta"})).json()
    await connected(stack)
    done = await stack.connect("user-b", other["id"])
    assert done.status_code == 200
    lead = (await post_lead(stack, {"name": "Секрет", "external_id": "e-1"})).json()

    for headers, params in (
        (stack.app_headers(), {"owner": "user-b"}),
        ({"Authorization": f"Bearer {stack.user_token('user-b')}"}, {}),
    ):
        shown = await stack.http.get(f"/leads/{lead['id']}", params=params, headers=headers)
        assert shown.status_code == 404, shown.text
        assert shown.json() == {
            "error": "lead_not_found",
            "detail": "no lead with this id for this owner",
        }
        changed = await stack.http.patch(
            f"/leads/{lead['id']}", params=params, json={"name": "mine"}, headers=headers
        )
        assert changed.status_code == 404
        listed = await stack.http.get("/leads", params=params, headers=headers)
        assert listed.json()["items"] == []
    # The same external_id is another lead for another owner.
    theirs = await stack.http.post(
        "/leads",
        json={"owner": "user-b", "name": "Их", "external_id": "e-1"},
        headers=stack.app_headers(),
    )
    assert theirs.status_code == 201
    assert theirs.json()["id"] != lead["id"]
    # A user's token naming another owner is refused without data.
    user = {"Authorization": f"Bearer {stack.user_token('user-b')}"}
    mismatch = await stack.http.get(f"/leads/{lead['id']}", params={"owner": OWNER}, headers=user)
    assert mismatch.status_code == 403
    assert mismatch.json()["error"] == "owner_mismatch"
    mine = await stack.http.get(
        f"/leads/{lead['id']}", headers={"Authorization": f"Bearer {stack.user_token(OWNER)}"}
    )
    assert mine.status_code == 200
    assert mine.json()["name"] == "Секрет"


async def test_listing_filters_and_searches(stack: Any) -> None:
    await connected(stack)
    academy = await add_pipeline(stack, "Академия", ["Записался", "Переговоры"])
    stack.services.sync.catalogues.ttl = stack.services.sync.catalogues.ttl * 0
    await post_lead(stack, {"name": "Первый", "stage": "Переговоры"})
    await post_lead(
        stack,
        {
            "name": "Второй",
            "pipeline": "Академия",
            "stage": "Переговоры",
            "contact": {"email": "Petr@Mail.ru"},
        },
    )
    await post_lead(stack, {"name": "Третий", "contact": {"phone": "+7 (912) 345-67-89"}})
    await post_lead(stack, {"name": "Ёлка"})

    async def names(**params: str) -> list[str]:
        found = await stack.http.get(
            "/leads", params={"owner": OWNER, **params}, headers=stack.app_headers()
        )
        assert found.status_code == 200, found.text
        return [item["name"] for item in found.json()["items"]]

    assert await names() == ["Ёлка", "Третий", "Второй", "Первый"]
    assert await names(stage="переговоры") == ["Второй", "Первый"]
    assert await names(pipeline="Академия", stage="Переговоры") == ["Второй"]
    assert await names(pipeline=str(academy["id"])) == ["Второй"]
    assert await names(q="petr@mail.ru") == ["Второй"]
    assert await names(q="89123456789") == ["Третий"]
    assert await names(q="елка") == ["Ёлка"]
    assert await names(state="synced") == []
    unknown = await stack.http.get(
        "/leads", params={"owner": OWNER, "stage": "Нет такой"}, headers=stack.app_headers()
    )
    assert unknown.status_code == 422
    assert unknown.json()["error"] == "unknown_stage"


async def test_cursor_pages_are_stable_under_inserts(stack: Any) -> None:
    await connected(stack)
    made = [(await post_lead(stack, {"name": f"lead {i}"})).json()["id"] for i in range(7)]
    seen: list[str] = []
    cursor: str | None = None
    inserted = False
    while True:
        params = {"owner": OWNER, "limit": "3", **({"cursor": cursor} if cursor else {})}
        page = (await stack.http.get("/leads", params=params, headers=stack.app_headers())).json()
        seen += [item["id"] for item in page["items"]]
        if not inserted:  # a lead arriving between two pages shifts nothing
            await post_lead(stack, {"name": "late"})
            inserted = True
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(made))
    bad = await stack.http.get(
        "/leads", params={"owner": OWNER, "cursor": "nonsense"}, headers=stack.app_headers()
    )
    assert (bad.status_code, bad.json()["error"]) == (400, "invalid_cursor")


async def test_updated_since_lists_changes_oldest_first(stack: Any) -> None:
    await connected(stack)
    first = (await post_lead(stack, {"name": "A"})).json()
    second = (await post_lead(stack, {"name": "B"})).json()
    changed = await stack.http.patch(
        f"/leads/{first['id']}",
        params={"owner": OWNER},
        json={"price": 5},
        headers=stack.app_headers(),
    )
    assert changed.status_code == 200
    page = await stack.http.get(
        "/leads",
        params={"owner": OWNER, "updated_since": second["updated_at"]},
        headers=stack.app_headers(),
    )
    assert [item["name"] for item in page.json()["items"]] == ["B", "A"]


async def test_patch_pushes_only_what_changed(stack: Any) -> None:
    await connected(stack)
    lead = (await post_lead(stack, {"name": "Заявка", "price": 100})).json()
    await drain(stack)
    in_amo = live_leads(stack)[0]
    in_amo.name = "Renamed by a manager in amoCRM"

    changed = await stack.http.patch(
        f"/leads/{lead['id']}",
        params={"owner": OWNER},
        json={"price": 250, "stage": "принимают решение", "tags": ["vip"]},
        headers=stack.app_headers(),
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["state"] == "pending"
    assert changed.json()["stage"] == "Принимают решение"
    assert await drain(stack) == 1
    shown = (await get_lead(stack, lead["id"])).json()
    assert shown["state"] == "synced"
    assert in_amo.price == 250
    assert in_amo.status_id == shown["stage_id"]
    assert in_amo.name == "Renamed by a manager in amoCRM"  # not sent: not changed here
    assert {account(stack).tags["leads"][t].name for t in in_amo.tag_ids} == {"vip"}

    unchanged = await stack.http.patch(
        f"/leads/{lead['id']}",
        params={"owner": OWNER},
        json={"price": 250},
        headers=stack.app_headers(),
    )
    assert unchanged.json()["state"] == "synced"
    assert await drain(stack) == 0


async def test_a_patch_before_the_push_is_sent_with_the_create(stack: Any) -> None:
    await connected(stack)
    lead = (await post_lead(stack, {"name": "Черновик"})).json()
    await stack.http.patch(
        f"/leads/{lead['id']}",
        params={"owner": OWNER},
        json={"name": "Чистовик"},
        headers=stack.app_headers(),
    )
    await drain(stack)
    (in_amo,) = live_leads(stack)
    assert in_amo.name == "Чистовик"
    assert (await get_lead(stack, lead["id"])).json()["state"] == "synced"


async def test_contacts_api(stack: Any) -> None:
    await connected(stack)
    headers = stack.app_headers()
    created = await stack.http.post(
        "/contacts",
        json={"owner": OWNER, "name": "Иван", "email": "Ivan@Mail.ru", "external_id": "c-1"},
        headers=headers,
    )
    assert created.status_code == 201, created.text
    contact = created.json()
    assert (contact["state"], contact["email"]) == ("pending", "ivan@mail.ru")
    same = await stack.http.post(
        "/contacts",
        json={"owner": OWNER, "name": "Иван", "email": "IVAN@mail.ru", "phone": "89001234567"},
        headers=headers,
    )
    assert same.status_code == 200
    assert same.json()["id"] == contact["id"]
    assert same.json()["phones"] == ["+79001234567"]

    await drain(stack)
    shown = (
        await stack.http.get(f"/contacts/{contact['id']}", params={"owner": OWNER}, headers=headers)
    ).json()
    assert shown["state"] == "synced", shown
    (in_amo,) = live_contacts(stack)
    assert in_amo.id == shown["amo_id"]

    patched = await stack.http.patch(
        f"/contacts/{contact['id']}",
        params={"owner": OWNER},
        json={"phone": "+7 900 765-43-21"},
        headers=headers,
    )
    assert patched.json()["phones"] == ["+79007654321", "+79001234567"]
    await drain(stack)
    phones = [
        v["value"]
        for item in in_amo.custom_fields_values
        if item["field_code"] == "PHONE"
        for v in item["values"]
    ]
    assert phones == ["+79007654321", "+79001234567"]
    listed = await stack.http.get(
        "/contacts", params={"owner": OWNER, "q": "ivan@"}, headers=headers
    )
    assert [item["id"] for item in listed.json()["items"]] == [contact["id"]]
    other = await stack.http.get(
        f"/contacts/{contact['id']}", params={"owner": "user-x"}, headers=headers
    )
    assert other.status_code == 404


async def test_concurrent_posts_with_one_key_or_one_external_id_store_one_lead(stack: Any) -> None:
    import asyncio

    await connected(stack)
    await post_lead(stack, {"name": "warm the catalogue"})
    key = {"Idempotency-Key": "race"}
    same_key = await asyncio.gather(
        *(post_lead(stack, {"name": "K"}, headers=key) for _ in range(4))
    )
    assert {r.status_code for r in same_key} == {201}
    assert len({r.json()["id"] for r in same_key}) == 1
    same_external = await asyncio.gather(
        *(post_lead(stack, {"name": "E", "external_id": "race-1"}) for _ in range(4))
    )
    assert sorted(r.status_code for r in same_external) == [200, 200, 200, 201]
    assert len({r.json()["id"] for r in same_external}) == 1
    await drain(stack)
    assert sorted(lead.name for lead in live_leads(stack)) == ["E", "K", "warm the catalogue"]
