"""Contacts: the shared endpoints (``crud.py``). ``query`` also hits first and last names and
every custom field value — phones and e-mails as plain, case-insensitive substrings (§5.2: how
amoCRM matches phones is unverified; amobridge normalises them itself). ``with=leads`` adds
``_embedded.leads``; ``_embedded.companies`` is always there."""

from __future__ import annotations

from collections.abc import Iterable

from starlette.routing import BaseRoute

from amobridge.sandbox.api.crud import EntitySpec, Predicate, entity_routes
from amobridge.sandbox.api.query import Filters
from amobridge.sandbox.state import Account, Contact


def contact_filters(filters: Filters, account: Account) -> list[Predicate]:
    return []


def contact_texts(contact: Contact) -> Iterable[str]:
    return (contact.name, contact.first_name, contact.last_name)


CONTACTS = EntitySpec("contacts", contact_filters, contact_texts)


def routes() -> list[BaseRoute]:
    return entity_routes(CONTACTS)
