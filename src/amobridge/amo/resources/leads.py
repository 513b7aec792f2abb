"""``/api/v4/leads``: list, filter, page through, get, create, update, and complex creates."""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Sequence
from typing import Unpack

from amobridge.amo.models.base import ComplexCreated, CreatedEntity, Page, UpdatedEntity
from amobridge.amo.models.leads import ComplexLeadCreate, Lead, LeadCreate, LeadUpdate
from amobridge.amo.resources.base import (
    COMPLEX_MAX_CHUNK_SIZE,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_PAGE_LIMIT,
    LeadFilters,
    Resource,
    input_bodies,
    lead_filter_params,
    parse_model,
    with_param,
)

PATH = "leads"


class LeadsResource(Resource):
    async def list(
        self, *, page: int = 1, limit: int = DEFAULT_PAGE_LIMIT, **filters: Unpack[LeadFilters]
    ) -> Page[Lead]:
        """One page of leads (``limit`` ≤ 250), filtered.

        ``await amo.leads.list(pipeline_id=6000001, updated_from=ts, order=("updated_at", "desc"),
        with_contacts=True)``. An empty page (amoCRM's 204) has no items and no next page.
        """
        params = lead_filter_params(filters)
        return await self._page(PATH, "leads", Lead, page=page, limit=limit, params=params)

    async def iterate(
        self,
        *,
        limit: int = DEFAULT_PAGE_LIMIT,
        start_page: int = 1,
        **filters: Unpack[LeadFilters],
    ) -> AsyncIterator[Lead]:
        """Every matching lead, page after page, until amoCRM sends no ``next`` link."""
        params = lead_filter_params(filters)

        async def fetch(number: int) -> Page[Lead]:
            return await self._page(PATH, "leads", Lead, page=number, limit=limit, params=params)

        async for lead in self._iterate(fetch, start_page):
            yield lead

    async def get(
        self, lead_id: int, *, with_contacts: bool = False, with_: Sequence[str] = ()
    ) -> Lead | None:
        """One lead; None when it does not exist (amoCRM answers 204, not 404)."""
        parts = [*with_, "contacts"] if with_contacts else list(with_)
        return await self._get(f"{PATH}/{int(lead_id)}", Lead, {"with": with_param(parts)})

    async def create(
        self, leads: Sequence[LeadCreate], *, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> builtins.list[CreatedEntity]:
        """Create leads, ``chunk_size`` (≤ 250) per request, in order. Returns one result per
        input, in input order, matched by ``request_id`` (generated when not given).

        A create is never re-sent after an unknown outcome: that raises ``AmoAmbiguousWrite``
        with the request_ids of the chunk. Requests are sent one after another; if one fails, the
        earlier chunks stay created (the exception's notes say which) and later ones are not sent.
        """
        bodies = input_bodies(LeadCreate, leads)
        return await self._create(PATH, "leads", bodies, chunk_size=chunk_size)

    async def create_one(self, lead: LeadCreate) -> CreatedEntity:
        """Create one lead."""
        (created,) = await self.create([lead])
        return created

    async def update(
        self, leads: Sequence[LeadUpdate], *, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> builtins.list[UpdatedEntity]:
        """Update leads (each :class:`LeadUpdate` names its ``id``), ``chunk_size`` (≤ 250) per
        request; one result per input, in input order."""
        bodies = input_bodies(LeadUpdate, leads)
        return await self._update(PATH, "leads", bodies, chunk_size=chunk_size)

    async def update_one(self, lead_id: int, changes: LeadUpdate) -> UpdatedEntity:
        """Update one lead (``PATCH /leads/{id}``)."""
        (body,) = input_bodies(LeadUpdate, [changes])
        return await self._update_one(PATH, lead_id, body)

    async def create_complex(
        self, leads: Sequence[ComplexLeadCreate], *, chunk_size: int = COMPLEX_MAX_CHUNK_SIZE
    ) -> builtins.list[ComplexCreated]:
        """Create leads each with (at most) one new contact and company, ``chunk_size`` (≤ 50)
        per ``POST /leads/complex``; results in input order (``contact_id``, ``company_id``,
        ``merged`` when amoCRM merged the contact into an existing one)."""
        bodies = input_bodies(ComplexLeadCreate, leads)
        path = f"{PATH}/complex"
        replies = await self._send_creates(
            path, bodies, chunk_size=chunk_size, maximum=COMPLEX_MAX_CHUNK_SIZE, reply_key=None
        )
        return [parse_model(ComplexCreated, r, method="POST", path=path) for r in replies]
