"""amoCRM's bracket-form query parameters, built by one helper."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from amobridge.amo.models import NoteType
from amobridge.amo.resources.base import (
    encode_params,
    entity_filter_params,
    lead_filter_params,
    timestamp,
    with_param,
)


def test_nested_mappings_and_lists_become_bracket_keys_in_order() -> None:
    assert encode_params(
        {
            "filter": {
                "updated_at": {"from": 1700000000, "to": 1700086400},
                "statuses": [
                    {"pipeline_id": 6000001, "status_id": 142},
                    {"pipeline_id": 6000002, "status_id": 50000003},
                ],
                "id": [1, 2],
            },
            "order": {"updated_at": "desc"},
            "with": "contacts",
            "page": 2,
        }
    ) == {
        "filter[updated_at][from]": "1700000000",
        "filter[updated_at][to]": "1700086400",
        "filter[statuses][0][pipeline_id]": "6000001",
        "filter[statuses][0][status_id]": "142",
        "filter[statuses][1][pipeline_id]": "6000002",
        "filter[statuses][1][status_id]": "50000003",
        "filter[id][0]": "1",
        "filter[id][1]": "2",
        "order[updated_at]": "desc",
        "with": "contacts",
        "page": "2",
    }


def test_none_and_empty_collections_are_left_out() -> None:
    assert encode_params({"query": None, "filter": {"id": [], "name": None}, "x": {}}) == {}


def test_scalars_enums_and_datetimes() -> None:
    moment = datetime(2024, 1, 1, tzinfo=UTC)
    assert encode_params({"a": NoteType.COMMON, "b": moment, "c": 1.5}) == {
        "a": "common",
        "b": "1704067200",
        "c": "1.5",
    }
    with pytest.raises(TypeError, match="boolean"):
        encode_params({"flag": True})
    with pytest.raises(TypeError, match="cannot send"):
        encode_params({"obj": object()})


def test_timestamps_refuse_naive_datetimes() -> None:
    aware = datetime(2024, 1, 1, 3, tzinfo=timezone(timedelta(hours=3)))
    assert timestamp(aware) == 1704067200
    assert timestamp(5) == 5
    with pytest.raises(ValueError, match="timezone-aware"):
        timestamp(datetime(2024, 1, 1))
    with pytest.raises(TypeError):
        timestamp("1704067200")  # type: ignore[arg-type]


def test_with_param_joins_without_duplicates() -> None:
    assert with_param(["contacts", " loss_reason", "contacts", ""]) == "contacts,loss_reason"
    assert with_param([]) is None
    assert with_param("contacts") == "contacts"


def test_lead_filters_map_to_amocrm_params() -> None:
    params = lead_filter_params(
        {
            "query": "  +7 912 ",
            "ids": [1, 2],
            "pipeline_id": 6000001,
            "statuses": [(6000001, 142)],
            "updated_from": 100,
            "updated_to": datetime(2024, 1, 1, tzinfo=UTC),
            "created_from": 50,
            "responsible_user_id": [8000001],
            "order": ("updated_at", "desc"),
            "with_contacts": True,
            "with_": ["loss_reason"],
        }
    )
    assert encode_params(params) == {
        "query": "+7 912",
        "filter[id][0]": "1",
        "filter[id][1]": "2",
        "filter[responsible_user_id][0]": "8000001",
        "filter[created_at][from]": "50",
        "filter[updated_at][from]": "100",
        "filter[updated_at][to]": "1704067200",
        "filter[pipeline_id][0]": "6000001",
        "filter[statuses][0][pipeline_id]": "6000001",
        "filter[statuses][0][status_id]": "142",
        "order[updated_at]": "desc",
        "with": "loss_reason,contacts",
    }


def test_blank_query_is_not_sent() -> None:
    assert entity_filter_params({"query": "   "}) == {}


@pytest.mark.parametrize(
    ("filters", "error"),
    [
        ({"pipeline_id": 1}, TypeError),  # not a contact filter
        ({"statuses": [(1, 2)]}, TypeError),
        ({"ids": ["1"]}, TypeError),
        ({"ids": [True]}, TypeError),
        ({"order": ("name", "asc")}, ValueError),
        ({"order": ("id", "up")}, ValueError),
        ({"updated_from": datetime(2024, 1, 1)}, ValueError),
    ],
)
def test_bad_entity_filters_are_refused(filters: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        entity_filter_params(filters)
