"""``/api/v4/companies``: list, page through, get, create, update."""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Sequence
from typing import Unpack

from amobridge.amo.models.base import CreatedEntity, Page, UpdatedEntity
from amobridge.amo.models.companies import Company, CompanyCreate, CompanyUpdate
from amobridge.amo.resources.base import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_PAGE_LIMIT,
    EntityFilters,
    Resource,
    entity_filter_params,
    input_bodies,
    with_param,
)

PATH = "companies"


class CompaniesResource(Resource):
    async def list(
        self, *, page: int = 1, limit: int = DEFAULT_PAGE_LIMIT, **filters: Unpack[EntityFilters]
    ) -> Page[Company]:
        """One page of companies; ``with_=["leads", "contacts"]`` embeds their links."""
        params = entity_filter_params(filters)
        return await self._page(PATH, "companies", Company, page=page, limit=limit, params=params)

    async def iterate(
        self,
        *,
        limit: int = DEFAULT_PAGE_LIMIT,
        start_page: int = 1,
        **filters: Unpack[EntityFilters],
    ) -> AsyncIterator[Company]:
        """Every matching company, page after page."""
        params = entity_filter_params(filters)

        async def fetch(number: int) -> Page[Company]:
            return await self._page(
                PATH, "companies", Company, page=number, limit=limit, params=params
            )

        async for company in self._iterate(fetch, start_page):
            yield company

    async def get(self, company_id: int, *, with_: Sequence[str] = ()) -> Company | None:
        """One company; None when it does not exist."""
        return await self._get(f"{PATH}/{int(company_id)}", Company, {"with": with_param(with_)})

    async def create(
        self, companies: Sequence[CompanyCreate], *, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> builtins.list[CreatedEntity]:
        """Create companies, ``chunk_size`` (≤ 250) per request; results in input order."""
        bodies = input_bodies(CompanyCreate, companies)
        return await self._create(PATH, "companies", bodies, chunk_size=chunk_size)

    async def create_one(self, company: CompanyCreate) -> CreatedEntity:
        (created,) = await self.create([company])
        return created

    async def update(
        self, companies: Sequence[CompanyUpdate], *, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> builtins.list[UpdatedEntity]:
        """Update companies (each names its ``id``); results in input order."""
        bodies = input_bodies(CompanyUpdate, companies)
        return await self._update(PATH, "companies", bodies, chunk_size=chunk_size)

    async def update_one(self, company_id: int, changes: CompanyUpdate) -> UpdatedEntity:
        (body,) = input_bodies(CompanyUpdate, [changes])
        return await self._update_one(PATH, company_id, body)
