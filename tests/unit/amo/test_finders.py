"""The finders' own logic (paging, caps, chunking, filtering, choosing the best lead) over the
resources' Requester seam. What they find in a real account is in
tests/integration/test_finders_sandbox.py."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from amobridge.amo.finders import (
    LEAD_IDS_PER_REQUEST,
    best_lead,
    find_contacts_by_phone,
    find_lead_by_email,
    find_leads_by_email,
)
from amobridge.amo.models import Lead
from amobridge.amo.resources import Endpoints


def lead(id: int, updated_at: int, status_id: int = 1, **fields: Any) -> Lead:
    return Lead.model_validate(
        {"id": id, "updated_at": updated_at, "status_id": status_id, **fields}
    )


def test_best_lead_is_newest_open() -> None:
    leads = [lead(1, 100), lead(2, 300, status_id=142), lead(3, 200), lead(4, 250, status_id=143)]
    assert best_lead(leads).id == 3  # type: ignore[union-attr]
    assert best_lead(leads, open_only=False).id == 2  # type: ignore[union-attr]
    assert best_lead([lead(1, 100, status_id=142)]) is None
    assert best_lead([]) is None


def test_best_lead_ties_and_gaps() -> None:
    assert best_lead([lead(7, 100), lead(9, 100), lead(8, 100)]).id == 9  # type: ignore[union-attr]
    no_update = Lead.model_validate({"id": 5, "created_at": 500, "status_id": 1})
    assert best_lead([lead(1, 400), no_update]) is no_update  # created_at stands in
    deleted = lead(6, 900, is_deleted=True)
    assert best_lead([lead(1, 100), deleted]).id == 1  # type: ignore[union-attr]


class FakeAmo:
    """amoCRM's JSON for GET contacts / leads / leads/pipelines, paged as amoCRM pages them."""

    def __init__(
        self,
        contacts: list[dict[str, Any]],
        leads: list[dict[str, Any]],
        *,
        honour_filters: bool = True,
    ) -> None:
        self.contacts = contacts
        self.leads = leads
        self.honour_filters = honour_filters
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def request_json(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        retry: str = "safe",
    ) -> Any:
        params = dict(params or {})
        self.calls.append((path, params))
        assert method == "GET"
        if path == "leads/pipelines":
            return {"_embedded": {"pipelines": [{"id": 10, "name": "Воронка", "is_main": True}]}}
        page, limit = int(params.get("page", 1)), int(params.get("limit", 50))
        if path == "contacts":
            assert params["with"] == "leads"
            rows = [c for c in self.contacts if params["query"].casefold() in str(c).casefold()]
        elif path == "leads":
            ids = {int(v) for k, v in params.items() if k.startswith("filter[id]")}
            pipelines = {int(v) for k, v in params.items() if k.startswith("filter[pipeline_id]")}
            rows = self.leads
            if self.honour_filters:
                rows = [r for r in rows if r["id"] in ids]
                rows = [r for r in rows if not pipelines or r["pipeline_id"] in pipelines]
        else:
            raise AssertionError(path)
        chunk = rows[(page - 1) * limit : page * limit]
        if not chunk:
            return None  # amoCRM's 204
        links: dict[str, Any] = {"self": {"href": "…"}}
        if page * limit < len(rows):
            links["next"] = {"href": "…"}
        return {"_page": page, "_links": links, "_embedded": {path: chunk}}


def phone_contact(id: int, phone: str, lead_ids: Sequence[int] = ()) -> dict[str, Any]:
    return {
        "id": id,
        "name": f"c{id}",
        "custom_fields_values": [
            {"field_code": "PHONE", "values": [{"value": phone}]},
            {"field_code": "EMAIL", "values": [{"value": f"C{id}@Example.com"}]},
        ],
        "_embedded": {"leads": [{"id": i} for i in lead_ids]},
    }


async def test_contact_search_reads_every_page_up_to_the_cap(
    caplog: pytest.LogCaptureFixture,
) -> None:
    contacts = [phone_contact(i, "+7 912 345-67-89") for i in range(1, 601)]
    amo = FakeAmo(contacts, [])
    found = await find_contacts_by_phone(
        Endpoints(amo), "89123456789", search_terms=["345-67-89"], max_contacts=300
    )
    assert [c.id for c in found] == list(range(1, 301))
    assert [p["page"] for _, p in amo.calls] == ["1", "2"]
    assert [p["limit"] for _, p in amo.calls] == ["250", "250"]
    assert "matched more than 300 contacts" in caplog.text
    assert "345-67-89" not in caplog.text  # a customer's phone stays out of the log


async def test_contact_search_stops_at_the_cap_or_the_last_page(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    contacts = [phone_contact(i, "+7 912 345-67-89") for i in range(1, 5)]
    contacts.append(phone_contact(5, "+7 912 345-67-80"))  # found by the term, not the phone
    amo = FakeAmo(contacts, [])
    found = await find_contacts_by_phone(
        Endpoints(amo), "89123456789", search_terms=["345-67-8"], max_contacts=2
    )
    assert [c.id for c in found] == [1, 2]
    assert len(amo.calls) == 1
    assert "matched more than 2 contacts" in caplog.text
    amo.calls.clear()
    caplog.clear()
    found = await find_contacts_by_phone(
        Endpoints(amo), "89123456789", search_terms=["345-67-8", "912 345"], max_contacts=10
    )
    assert [c.id for c in found] == [1, 2, 3, 4]  # each contact once, across terms
    assert len(amo.calls) == 2
    assert caplog.text == ""


async def test_leads_are_read_in_chunks_and_sorted_newest_first() -> None:
    lead_ids = list(range(1001, 1121))  # 120 linked leads
    leads = [
        {"id": i, "updated_at": 10_000 - i, "status_id": 1, "pipeline_id": 10} for i in lead_ids
    ]
    amo = FakeAmo([phone_contact(1, "89123456789", lead_ids)], leads)
    found = await find_leads_by_email(Endpoints(amo), "c1@example.com")
    assert [x.id for x in found] == lead_ids  # lower id = later update here
    lead_calls = [p for path, p in amo.calls if path == "leads"]
    assert len(lead_calls) == 3
    for params in lead_calls:
        ids = [k for k in params if k.startswith("filter[id]")]
        assert 0 < len(ids) <= LEAD_IDS_PER_REQUEST
        assert params["with"] == "contacts"


async def test_filters_the_server_ignored_are_applied_anyway() -> None:
    leads = [
        {"id": 1, "updated_at": 1, "status_id": 1, "pipeline_id": 10},
        {"id": 2, "updated_at": 2, "status_id": 1, "pipeline_id": 20},
        {"id": 3, "updated_at": 3, "status_id": 1, "pipeline_id": 10},  # not linked
    ]
    amo = FakeAmo([phone_contact(1, "89123456789", [1, 2])], leads, honour_filters=False)
    found = await find_leads_by_email(Endpoints(amo), "C1@EXAMPLE.COM", pipeline="воронка")
    assert [x.id for x in found] == [1]
    best = await find_lead_by_email(Endpoints(amo), "c1@example.com", pipeline=20)
    assert best is not None
    assert best.id == 2
    assert [path for path, _ in amo.calls].count("leads/pipelines") == 1  # only for the name


async def test_invalid_input_sends_nothing() -> None:
    amo = FakeAmo([], [])
    assert await find_leads_by_email(Endpoints(amo), "not an address") == []
    assert await find_contacts_by_phone(Endpoints(amo), "12") == []
    assert amo.calls == []
