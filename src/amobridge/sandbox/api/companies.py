"""Companies: the shared endpoints (``crud.py``); ``with=leads,contacts`` add their links."""

from __future__ import annotations

from collections.abc import Iterable

from starlette.routing import BaseRoute

from amobridge.sandbox.api.crud import EntitySpec, Predicate, entity_routes
from amobridge.sandbox.api.query import Filters
from amobridge.sandbox.state import Account, Company


def company_filters(filters: Filters, account: Account) -> list[Predicate]:
    return []


def company_texts(company: Company) -> Iterable[str]:
    return (company.name,)


COMPANIES = EntitySpec("companies", company_filters, company_texts)


def routes() -> list[BaseRoute]:
    return entity_routes(COMPANIES)
