"""Conformance: the sandbox's leads API
(https://www.amocrm.ru/developers/content/crm_platform/leads-api)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from amobridge.sandbox import Sandbox
from sandbox_support import Connected


async def add_leads(api: httpx.AsyncClient, items: list[dict[str, Any]]) -> list[int]:
    reply = await api.post("/api/v4/leads", json=items)
    assert reply.status_code == 200, reply.text
    return [lead["id"] for lead in reply.json()["_embedded"]["leads"]]


async def get_lead(api: httpx.AsyncClient, lead_id: int, **params: str) -> dict[str, Any]:
    reply = await api.get(f"/api/v4/leads/{lead_id}", params=params)
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


async def list_ids(api: httpx.AsyncClient, params: Any) -> list[int]:
    """Ids of every lead the query matches, across pages ([] on a 204)."""
    reply = await api.get("/api/v4/leads", params=params)
    if reply.status_code == 204:
        return []
    assert reply.status_code == 200, reply.text
    return [lead["id"] for lead in reply.json()["_embedded"]["leads"]]


async def pipelines(api: httpx.AsyncClient) -> list[dict[str, Any]]:
    reply = await api.get("/api/v4/leads/pipelines")
    assert reply.status_code == 200
    found: list[dict[str, Any]] = reply.json()["_embedded"]["pipelines"]
    return found


# --- reads -------------------------------------------------------------------------------------


async def test_empty_list_is_204_without_body(acme: Connected) -> None:
    """An empty page is a 204 with no body (never 200 with an empty list)."""
    reply = await acme.api.get("/api/v4/leads")
    assert reply.status_code == 204
    assert reply.content == b""


async def test_missing_lead_is_204(acme: Connected) -> None:
    """A missing entity answers 204, never 404."""
    reply = await acme.api.get("/api/v4/leads/999999999")
    assert reply.status_code == 204
    assert reply.content == b""


async def test_lead_shape(acme: Connected) -> None:
    """A lead's fields; hal+json; ``custom_fields_values`` null when empty."""
    [lead_id] = await add_leads(acme.api, [{"name": "Курс", "price": 1500}])
    reply = await acme.api.get(f"/api/v4/leads/{lead_id}")
    assert reply.headers["content-type"].startswith("application/hal+json")
    lead = reply.json()
    for key in (
        "id",
        "name",
        "price",
        "responsible_user_id",
        "status_id",
        "pipeline_id",
        "created_at",
        "updated_at",
        "closed_at",
        "is_deleted",
        "custom_fields_values",
        "account_id",
        "_links",
        "_embedded",
    ):
        assert key in lead, key
    assert lead["name"] == "Курс"
    assert lead["price"] == 1500
    assert lead["custom_fields_values"] is None
    assert lead["account_id"] == acme.account_id
    assert lead["_links"]["self"]["href"] == f"https://acme.amocrm.ru/api/v4/leads/{lead_id}"
    assert "contacts" not in lead["_embedded"]  # only with=contacts


async def test_pagination_envelope_and_links(acme: Connected) -> None:
    """``_page`` and ``_links`` (self/next/first/prev), no total, no ``next`` on the last
    page; links repeat the request's query."""
    await add_leads(acme.api, [{"name": f"lead {i}"} for i in range(5)])
    first = (await acme.api.get("/api/v4/leads", params={"limit": 2, "query": "lead"})).json()
    assert first["_page"] == 1
    assert set(first) == {"_page", "_links", "_embedded"}
    assert len(first["_embedded"]["leads"]) == 2
    assert set(first["_links"]) == {"self", "next"}
    next_url = urlsplit(first["_links"]["next"]["href"])
    assert (next_url.scheme, next_url.netloc, next_url.path) == (
        "https",
        "acme.amocrm.ru",
        "/api/v4/leads",
    )
    assert parse_qs(next_url.query) == {"query": ["lead"], "page": ["2"], "limit": ["2"]}

    last = (await acme.api.get(first["_links"]["next"]["href"].replace("page=2", "page=3"))).json()
    assert last["_page"] == 3
    assert len(last["_embedded"]["leads"]) == 1
    assert "next" not in last["_links"]
    assert parse_qs(urlsplit(last["_links"]["prev"]["href"]).query)["page"] == ["2"]
    assert parse_qs(urlsplit(last["_links"]["first"]["href"]).query)["page"] == ["1"]

    beyond = await acme.api.get("/api/v4/leads", params={"limit": 2, "page": 4})
    assert beyond.status_code == 204


async def test_limit_is_capped_at_250(acme: Connected, sandbox: Sandbox) -> None:
    """``limit`` ≤ 250 — a larger limit is served as 250 (the sandbox's documented choice)."""
    await add_leads(acme.api, [{"name": f"a{i}"} for i in range(250)])
    await add_leads(acme.api, [{"name": f"b{i}"} for i in range(10)])
    body = (await acme.api.get("/api/v4/leads", params={"limit": 1000})).json()
    assert len(body["_embedded"]["leads"]) == 250
    assert "limit=250" in body["_links"]["self"]["href"]
    assert "next" in body["_links"]


async def test_filter_by_id_in_every_spelling(acme: Connected) -> None:
    """``filter[id]``, ``filter[id][]`` and ``filter[id][0]``."""
    ids = await add_leads(acme.api, [{"name": "x"}, {"name": "y"}, {"name": "z"}])
    assert await list_ids(acme.api, {"filter[id]": ids[1]}) == [ids[1]]
    assert await list_ids(acme.api, [("filter[id][]", ids[0]), ("filter[id][]", ids[2])]) == [
        ids[0],
        ids[2],
    ]
    assert await list_ids(acme.api, {"filter[id][0]": ids[2]}) == [ids[2]]
    bad = await acme.api.get("/api/v4/leads", params={"filter[id]": "abc"})
    assert bad.status_code == 400


async def test_filter_by_updated_and_created_at_ranges(acme: Connected, sandbox: Sandbox) -> None:
    """``filter[updated_at|created_at][from|to]`` (unix seconds, inclusive)."""
    [old] = await add_leads(acme.api, [{"name": "old"}])
    t_old = (await get_lead(acme.api, old))["created_at"]
    sandbox.clock.advance(1000)
    [new] = await add_leads(acme.api, [{"name": "new"}])
    t_new = t_old + 1000
    assert await list_ids(acme.api, {"filter[created_at][from]": t_new}) == [new]
    assert await list_ids(acme.api, {"filter[created_at][to]": t_new - 1}) == [old]
    sandbox.clock.advance(1000)
    reply = await acme.api.patch(f"/api/v4/leads/{old}", json={"price": 5})
    assert reply.status_code == 200
    assert reply.json()["updated_at"] == t_old + 2000
    assert await list_ids(
        acme.api, {"filter[updated_at][from]": t_old + 1500, "filter[updated_at][to]": t_old + 2000}
    ) == [old]
    assert await list_ids(acme.api, {"filter[updated_at][to]": t_old + 1500}) == [new]


async def test_filter_by_statuses_and_pipeline(acme: Connected, control: httpx.AsyncClient) -> None:
    """``filter[statuses][0][pipeline_id]`` + ``[status_id]`` and ``filter[pipeline_id][0]``;
    142 exists in every pipeline, so ``pipeline_id`` disambiguates."""
    second = (
        await control.post(
            f"/_sandbox/accounts/{acme.account_id}/pipelines",
            json={"name": "Second", "statuses": ["One"]},
        )
    ).json()
    main = next(p for p in await pipelines(acme.api) if p["is_main"])
    won_main, won_second, open_second = await add_leads(
        acme.api,
        [
            {"status_id": 142, "pipeline_id": main["id"]},
            {"status_id": 142, "pipeline_id": second["id"]},
            {"pipeline_id": second["id"]},
        ],
    )
    assert await list_ids(
        acme.api,
        {"filter[statuses][0][pipeline_id]": second["id"], "filter[statuses][0][status_id]": 142},
    ) == [won_second]
    assert await list_ids(
        acme.api,
        {
            "filter[statuses][0][pipeline_id]": main["id"],
            "filter[statuses][0][status_id]": 142,
            "filter[statuses][1][pipeline_id]": second["id"],
            "filter[statuses][1][status_id]": 142,
        },
    ) == [won_main, won_second]
    assert await list_ids(acme.api, {"filter[pipeline_id][0]": second["id"]}) == [
        won_second,
        open_second,
    ]


async def test_filter_responsible_query_and_order(
    acme: Connected, control: httpx.AsyncClient
) -> None:
    """``filter[responsible_user_id]``, ``query`` (name substring, id), ``order[id]=desc``."""
    user = (
        await control.post(f"/_sandbox/accounts/{acme.account_id}/users", json={"name": "Мария"})
    ).json()
    mine, hers = await add_leads(
        acme.api,
        [{"name": "Заявка с сайта"}, {"name": "Звонок", "responsible_user_id": user["id"]}],
    )
    assert await list_ids(acme.api, {"filter[responsible_user_id]": user["id"]}) == [hers]
    assert await list_ids(acme.api, {"query": "с сайта"}) == [mine]
    assert await list_ids(acme.api, {"query": str(hers)}) == [hers]
    assert await list_ids(acme.api, {"order[id]": "desc"}) == [hers, mine]
    assert await list_ids(acme.api, {"order[created_at]": "asc"}) == [mine, hers]


async def test_with_contacts_embeds_linked_contacts(acme: Connected) -> None:
    """``_embedded.contacts[{id, is_main}]`` only with ``with=contacts``."""
    reply = await acme.api.post("/api/v4/contacts", json=[{"name": "A"}, {"name": "B"}])
    a, b = (c["id"] for c in reply.json()["_embedded"]["contacts"])
    [lead_id] = await add_leads(
        acme.api, [{"_embedded": {"contacts": [{"id": a}, {"id": b, "is_main": True}]}}]
    )
    plain = await get_lead(acme.api, lead_id)
    assert "contacts" not in plain["_embedded"]
    embedded = (await get_lead(acme.api, lead_id, **{"with": "contacts"}))["_embedded"]["contacts"]
    assert [(c["id"], c["is_main"]) for c in embedded] == [(b, True), (a, False)]
    assert embedded[0]["_links"]["self"]["href"].endswith(f"/api/v4/contacts/{b}")
    listed = (await acme.api.get("/api/v4/leads", params={"with": "contacts"})).json()
    assert [c["id"] for c in listed["_embedded"]["leads"][0]["_embedded"]["contacts"]] == [b, a]


# --- writes ------------------------------------------------------------------------------------


async def test_request_id_echoes_sent_value_else_index(acme: Connected) -> None:
    """``request_id`` in the reply echoes the value sent, else the array index as a string."""
    reply = await acme.api.post(
        "/api/v4/leads", json=[{"name": "a", "request_id": "order-17"}, {"name": "b"}, {}]
    )
    leads = reply.json()["_embedded"]["leads"]
    assert [lead["request_id"] for lead in leads] == ["order-17", "1", "2"]
    assert all(lead["_links"]["self"]["href"].endswith(f"/leads/{lead['id']}") for lead in leads)
    assert len({lead["id"] for lead in leads}) == 3


async def test_create_defaults_first_open_stage_of_main_pipeline(acme: Connected) -> None:
    """All fields optional; no status → the first stage of the main pipeline (not
    "unsorted"); the token's user is responsible."""
    [lead_id] = await add_leads(acme.api, [{}])
    lead = await get_lead(acme.api, lead_id)
    main = next(p for p in await pipelines(acme.api) if p["is_main"])
    statuses = main["_embedded"]["statuses"]
    assert statuses[0]["type"] == 1  # unsorted comes first…
    assert lead["pipeline_id"] == main["id"]
    assert lead["status_id"] == statuses[1]["id"]  # …and is skipped
    assert lead["responsible_user_id"] == acme.account["admin_user_id"]
    assert lead["name"] == f"Сделка #{lead_id}"
    assert lead["price"] == 0


async def test_more_than_250_is_422_limit_per_page(acme: Connected) -> None:
    """Over 250 entities → 422 with Kommo's body; nothing is created."""
    reply = await acme.api.post("/api/v4/leads", json=[{"name": str(i)} for i in range(251)])
    assert reply.status_code == 422
    assert reply.headers["content-type"].startswith("application/problem+json")
    assert reply.json() == {
        "title": "Unprocessable Entity",
        "type": "https://httpstatus.es/422",
        "status": 422,
        "detail": "Limit 250 per page",
    }
    assert (await acme.api.get("/api/v4/leads")).status_code == 204
    patch = await acme.api.patch("/api/v4/leads", json=[{"id": i} for i in range(251)])
    assert patch.status_code == 422


async def test_patch_batch_and_single(acme: Connected, sandbox: Sandbox) -> None:
    """PATCH array → ``_embedded.leads[{id, updated_at, _links}]``; PATCH /{id} → one object."""
    a, b = await add_leads(acme.api, [{"name": "a"}, {"name": "b"}])
    sandbox.clock.advance(60)
    reply = await acme.api.patch(
        "/api/v4/leads", json=[{"id": a, "price": 10}, {"id": b, "name": "bee"}]
    )
    assert reply.status_code == 200
    items = reply.json()["_embedded"]["leads"]
    assert [set(i) for i in items] == [{"id", "updated_at", "_links"}] * 2
    assert (await get_lead(acme.api, a))["price"] == 10
    assert (await get_lead(acme.api, b))["name"] == "bee"

    one = await acme.api.patch(f"/api/v4/leads/{a}", json={"name": "ay"})
    assert one.status_code == 200
    assert set(one.json()) == {"id", "updated_at", "_links"}
    assert one.json()["id"] == a

    missing = await acme.api.patch("/api/v4/leads", json=[{"id": 1}])
    assert missing.status_code == 400
    assert missing.json()["validation-errors"][0]["errors"][0]["path"] == "id"
    no_id = await acme.api.patch("/api/v4/leads", json=[{"name": "x"}])
    assert no_id.json()["validation-errors"][0]["errors"][0] == {
        "code": "FieldMissing",
        "path": "id",
        "detail": "This field is missing.",
    }


async def test_status_moves_set_and_clear_closed_at(acme: Connected, sandbox: Sandbox) -> None:
    """142 (won) / 143 (lost) in every pipeline; moving there sets ``closed_at``, moving
    back clears it; an unknown status is a validation error."""
    [lead_id] = await add_leads(acme.api, [{}])
    open_status = (await get_lead(acme.api, lead_id))["status_id"]
    sandbox.clock.advance(30)
    await acme.api.patch(f"/api/v4/leads/{lead_id}", json={"status_id": 142})
    won = await get_lead(acme.api, lead_id)
    assert won["status_id"] == 142
    assert won["closed_at"] == won["updated_at"]
    await acme.api.patch(f"/api/v4/leads/{lead_id}", json={"status_id": open_status})
    assert (await get_lead(acme.api, lead_id))["closed_at"] is None

    bad = await acme.api.patch(f"/api/v4/leads/{lead_id}", json={"status_id": 12345})
    assert bad.status_code == 400
    assert bad.json()["validation-errors"] == [
        {
            "request_id": "0",
            "errors": [
                {
                    "code": "NotSupportedChoice",
                    "path": "status_id",
                    "detail": "The value you selected is not a valid choice.",
                }
            ],
        }
    ]


async def test_tags_to_add_and_delete(acme: Connected) -> None:
    """``tags_to_add`` / ``tags_to_delete`` on update; ``_embedded.tags`` on create."""
    [lead_id] = await add_leads(acme.api, [{"_embedded": {"tags": [{"name": "сайт"}]}}])
    await acme.api.patch(
        f"/api/v4/leads/{lead_id}", json={"tags_to_add": [{"name": "vip"}, {"name": "Сайт"}]}
    )
    tags = (await get_lead(acme.api, lead_id))["_embedded"]["tags"]
    assert [t["name"] for t in tags] == ["сайт", "vip"]  # names match case-insensitively
    await acme.api.patch(
        f"/api/v4/leads/{lead_id}", json={"tags_to_delete": [{"id": tags[0]["id"]}]}
    )
    assert [t["name"] for t in (await get_lead(acme.api, lead_id))["_embedded"]["tags"]] == ["vip"]


async def test_custom_field_values_round_trip(acme: Connected) -> None:
    """Values written by ``field_id`` (enum by ``enum_id``) come back with field name, type
    and enum code."""
    created = await acme.api.post(
        "/api/v4/leads/custom_fields",
        json=[
            {
                "name": "Источник",
                "type": "select",
                "enums": [{"value": "Сайт"}, {"value": "Реклама"}],
            },
            {"name": "Курс", "type": "text"},
        ],
    )
    source, course = created.json()["_embedded"]["custom_fields"]
    enum_id = source["enums"][1]["id"]
    [lead_id] = await add_leads(
        acme.api,
        [
            {
                "custom_fields_values": [
                    {"field_id": source["id"], "values": [{"enum_id": enum_id}]},
                    {"field_id": course["id"], "values": [{"value": "Python"}]},
                ]
            }
        ],
    )
    values = (await get_lead(acme.api, lead_id))["custom_fields_values"]
    assert values == [
        {
            "field_id": source["id"],
            "field_name": "Источник",
            "field_code": None,
            "field_type": "select",
            "values": [{"value": "Реклама", "enum_id": enum_id, "enum_code": None}],
        },
        {
            "field_id": course["id"],
            "field_name": "Курс",
            "field_code": None,
            "field_type": "text",
            "values": [{"value": "Python"}],
        },
    ]
    # Clearing one field keeps the other.
    await acme.api.patch(
        f"/api/v4/leads/{lead_id}",
        json={"custom_fields_values": [{"field_id": course["id"], "values": None}]},
    )
    values = (await get_lead(acme.api, lead_id))["custom_fields_values"]
    assert [v["field_id"] for v in values] == [source["id"]]


# --- complex -----------------------------------------------------------------------------------


async def test_complex_reply_is_a_bare_array(acme: Connected) -> None:
    """``POST /leads/complex`` answers ``[{id, contact_id, company_id, request_id: [...],
    merged: false}]`` and creates and links the contact and company."""
    reply = await acme.api.post(
        "/api/v4/leads/complex",
        json=[
            {
                "name": "Заявка",
                "request_id": "form-1",
                "_embedded": {
                    "contacts": [
                        {
                            "first_name": "Иван",
                            "custom_fields_values": [
                                {"field_code": "PHONE", "values": [{"value": "+79001112233"}]}
                            ],
                        }
                    ],
                    "companies": [{"name": "ООО Ромашка"}],
                },
            },
            {"name": "Без контакта"},
        ],
    )
    assert reply.status_code == 200
    body = reply.json()
    assert isinstance(body, list)
    first, second = body
    assert set(first) == {"id", "contact_id", "company_id", "request_id", "merged"}
    assert first["request_id"] == ["form-1"]
    assert first["merged"] is False
    assert second["request_id"] == ["1"]
    assert second["contact_id"] is None
    assert second["company_id"] is None

    lead = await get_lead(acme.api, first["id"], **{"with": "contacts"})
    assert [c["id"] for c in lead["_embedded"]["contacts"]] == [first["contact_id"]]
    assert [c["id"] for c in lead["_embedded"]["companies"]] == [first["company_id"]]
    contact = (await acme.api.get(f"/api/v4/contacts/{first['contact_id']}")).json()
    assert contact["name"] == "Иван"
    assert contact["_embedded"]["companies"][0]["id"] == first["company_id"]


async def test_complex_limits(acme: Connected) -> None:
    """≤ 50 leads per complex request, each with ≤ 1 contact and ≤ 1 company."""
    over = await acme.api.post("/api/v4/leads/complex", json=[{} for _ in range(51)])
    assert over.status_code == 422
    assert over.json()["detail"] == "Limit 50 per page"
    ok = await acme.api.post("/api/v4/leads/complex", json=[{} for _ in range(50)])
    assert ok.status_code == 200
    assert len(ok.json()) == 50
    two = await acme.api.post(
        "/api/v4/leads/complex",
        json=[{"_embedded": {"contacts": [{"name": "a"}, {"name": "b"}]}}],
    )
    assert two.status_code == 400
    [error] = two.json()["validation-errors"][0]["errors"]
    assert (error["code"], error["path"]) == ("OutOfRange", "_embedded.contacts")


async def test_complex_nested_errors_carry_the_lead_request_id(acme: Connected) -> None:
    """Captured from amoCRM: a nested contact's error path is ``_embedded.contacts.0.…`` under the
    lead's ``request_id``."""
    reply = await acme.api.post(
        "/api/v4/leads/complex",
        json=[
            {
                "request_id": "qweasd",
                "_embedded": {"contacts": [{"responsible_user_id": "me"}]},
            }
        ],
    )
    assert reply.status_code == 400
    assert reply.json()["validation-errors"] == [
        {
            "request_id": "qweasd",
            "errors": [
                {
                    "code": "InvalidType",
                    "path": "_embedded.contacts.0.responsible_user_id",
                    "detail": "This value should be of type int.",
                }
            ],
        }
    ]
