"""``ComplexLeadCreate``: a contact created with the lead, or an existing one linked by id."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from amobridge.amo.models.contacts import ContactCreate
from amobridge.amo.models.leads import ComplexLeadCreate


def test_an_existing_contact_is_linked_by_id() -> None:
    body = ComplexLeadCreate(name="Заявка", contact_id=2000001).to_api()
    assert body == {"name": "Заявка", "_embedded": {"contacts": [{"id": 2000001}]}}


def test_a_new_contact_goes_whole() -> None:
    body = ComplexLeadCreate(name="Заявка", contact=ContactCreate(name="Анна")).to_api()
    assert body["_embedded"]["contacts"] == [{"name": "Анна"}]


def test_not_both() -> None:
    with pytest.raises(ValidationError, match="not both"):
        ComplexLeadCreate(contact=ContactCreate(name="Анна"), contact_id=1)
