"""Conformance: account, users, pipelines, custom fields, tags and notes."""

from __future__ import annotations

import httpx

from sandbox_support import Connected


async def test_account_fields_and_with_parts(acme: Connected) -> None:
    """``GET /account`` → ``id, name, subdomain, current_user_id, …``; ``with`` adds parts."""
    reply = await acme.api.get("/api/v4/account")
    assert reply.status_code == 200
    account = reply.json()
    assert account["id"] == acme.account_id
    assert account["subdomain"] == "acme"
    assert account["current_user_id"] == acme.account["admin_user_id"]
    assert account["currency"] == "RUB"
    assert account["is_technical_account"] is False
    assert account["_links"]["self"]["href"] == "https://acme.amocrm.ru/api/v4/account"
    assert "amojo_id" not in account
    assert "_embedded" not in account

    rich = (
        await acme.api.get(
            "/api/v4/account", params={"with": "amojo_id,users_groups,task_types,datetime_settings"}
        )
    ).json()
    assert isinstance(rich["amojo_id"], str)
    assert set(rich["_embedded"]) == {"users_groups", "task_types", "datetime_settings"}
    again = (await acme.api.get("/api/v4/account?with=amojo_id")).json()
    assert again["amojo_id"] == rich["amojo_id"]  # stable


async def test_users_paged_and_one(acme: Connected, control: httpx.AsyncClient) -> None:
    """Users are paged; a missing user is 204 (never 404)."""
    maria = (
        await control.post(f"/_sandbox/accounts/{acme.account_id}/users", json={"name": "Мария"})
    ).json()
    page = (await acme.api.get("/api/v4/users", params={"limit": 1})).json()
    assert page["_total_items"] == 2
    assert len(page["_embedded"]["users"]) == 1
    assert "next" in page["_links"]
    user = (await acme.api.get(f"/api/v4/users/{maria['id']}")).json()
    assert (user["id"], user["name"]) == (maria["id"], "Мария")
    assert (await acme.api.get("/api/v4/users/1")).status_code == 204


async def test_142_and_143_in_every_pipeline(acme: Connected, control: httpx.AsyncClient) -> None:
    """Every pipeline has 142 (won) and 143 (lost), same ids everywhere; ``_total_items``
    and ``_embedded.pipelines[…]._embedded.statuses``; type 1 = unsorted."""
    await control.post(
        f"/_sandbox/accounts/{acme.account_id}/pipelines",
        json={"name": "Повторные продажи", "statuses": ["Звонок", "Счёт"]},
    )
    body = (await acme.api.get("/api/v4/leads/pipelines")).json()
    assert body["_total_items"] == 2
    listed = body["_embedded"]["pipelines"]
    assert [p["is_main"] for p in listed] == [True, False]
    for pipeline in listed:
        statuses = pipeline["_embedded"]["statuses"]
        ids = [s["id"] for s in statuses]
        assert 142 in ids
        assert 143 in ids
        assert all(s["pipeline_id"] == pipeline["id"] for s in statuses)
        assert statuses[0]["type"] == 1
        one = (await acme.api.get(f"/api/v4/leads/pipelines/{pipeline['id']}")).json()
        assert one["id"] == pipeline["id"]
        only_statuses = (
            await acme.api.get(f"/api/v4/leads/pipelines/{pipeline['id']}/statuses")
        ).json()
        assert [s["id"] for s in only_statuses["_embedded"]["statuses"]] == ids
        won = (await acme.api.get(f"/api/v4/leads/pipelines/{pipeline['id']}/statuses/142")).json()
        assert won["pipeline_id"] == pipeline["id"]
    assert (await acme.api.get("/api/v4/leads/pipelines/1")).status_code == 204


async def test_custom_fields_list_create_get(acme: Connected) -> None:
    """Contacts have PHONE and EMAIL fields; custom fields can be added and read back."""
    listed = (await acme.api.get("/api/v4/contacts/custom_fields")).json()
    codes = {f["code"] for f in listed["_embedded"]["custom_fields"]}
    assert {"PHONE", "EMAIL"} <= codes
    assert (await acme.api.get("/api/v4/leads/custom_fields")).status_code == 204

    reply = await acme.api.post(
        "/api/v4/leads/custom_fields",
        json=[{"name": "Тариф", "type": "select", "enums": [{"value": "A"}, {"value": "B"}]}],
    )
    assert reply.status_code == 200
    [created] = reply.json()["_embedded"]["custom_fields"]
    assert created["request_id"] == "0"
    assert [e["value"] for e in created["enums"]] == ["A", "B"]
    one = (await acme.api.get(f"/api/v4/leads/custom_fields/{created['id']}")).json()
    assert (one["name"], one["type"], one["entity_type"]) == ("Тариф", "select", "leads")

    bad = await acme.api.post(
        "/api/v4/leads/custom_fields", json=[{"name": "x", "type": "hologram"}]
    )
    assert bad.status_code == 400
    assert bad.json()["validation-errors"][0]["errors"][0]["path"] == "type"


async def test_tags_list_and_create(acme: Connected) -> None:
    """Tags: ``POST /{type}/tags`` echoes ``request_id``; an existing name answers the same tag;
    ``GET`` lists (204 when empty)."""
    assert (await acme.api.get("/api/v4/leads/tags")).status_code == 204
    reply = await acme.api.post(
        "/api/v4/leads/tags", json=[{"name": "vip", "request_id": "t1"}, {"name": "опт"}]
    )
    vip, wholesale = reply.json()["_embedded"]["tags"]
    assert (vip["request_id"], wholesale["request_id"]) == ("t1", "1")
    again = await acme.api.post("/api/v4/leads/tags", json=[{"name": "VIP"}])
    assert again.json()["_embedded"]["tags"][0]["id"] == vip["id"]
    listed = (await acme.api.get("/api/v4/leads/tags", params={"query": "VI"})).json()
    assert [t["id"] for t in listed["_embedded"]["tags"]] == [vip["id"]]
    assert (await acme.api.get("/api/v4/contacts/tags")).status_code == 204  # per entity type


async def test_notes_per_entity_and_global(acme: Connected) -> None:
    """Notes: ``POST /leads/notes`` (with ``entity_id``) and ``/leads/{id}/notes``; ``note_type``
    and ``params.text``; unknown types → NotSupportedChoice at ``note_type`` (amoCRM's reply)."""
    lead_id = (await acme.api.post("/api/v4/leads", json=[{}])).json()["_embedded"]["leads"][0][
        "id"
    ]
    reply = await acme.api.post(
        "/api/v4/leads/notes",
        json=[{"entity_id": lead_id, "note_type": "common", "params": {"text": "Перезвонить"}}],
    )
    assert reply.status_code == 200
    [created] = reply.json()["_embedded"]["notes"]
    assert (created["entity_id"], created["request_id"]) == (lead_id, "0")
    await acme.api.post(
        f"/api/v4/leads/{lead_id}/notes",
        json=[
            {
                "note_type": "call_in",
                "params": {"uniq": "c1", "duration": 60, "source": "pbx", "phone": "+7900"},
            }
        ],
    )
    notes = (await acme.api.get(f"/api/v4/leads/{lead_id}/notes")).json()["_embedded"]["notes"]
    assert [(n["note_type"], n["entity_id"]) for n in notes] == [
        ("common", lead_id),
        ("call_in", lead_id),
    ]
    assert notes[0]["params"] == {"text": "Перезвонить"}
    filtered = await acme.api.get("/api/v4/leads/notes", params={"filter[note_type]": "call_in"})
    assert [n["note_type"] for n in filtered.json()["_embedded"]["notes"]] == ["call_in"]
    one = await acme.api.get(f"/api/v4/leads/notes/{created['id']}")
    assert one.json()["params"]["text"] == "Перезвонить"
    assert (await acme.api.get("/api/v4/contacts/notes")).status_code == 204

    bad = await acme.api.post(
        "/api/v4/leads/notes",
        json=[{"entity_id": lead_id, "note_type": "mail_message", "params": {}}],
    )
    assert bad.status_code == 400
    assert bad.json()["validation-errors"][0]["errors"] == [
        {
            "code": "NotSupportedChoice",
            "path": "note_type",
            "detail": "The value you selected is not a valid choice.",
        }
    ]
    missing_text = await acme.api.post(
        f"/api/v4/leads/{lead_id}/notes", json=[{"note_type": "common", "params": {}}]
    )
    assert missing_text.json()["validation-errors"][0]["errors"][0]["path"] == "params.text"
