"""``/api/v4/contacts``: list, search, page through, get, create, update."""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Sequence
from typing import Unpack

from amobridge.amo.models.base import CreatedEntity, Page, UpdatedEntity
from amobridge.amo.models.contacts import Contact, ContactCreate, ContactUpdate
from amobridge.amo.resources.base import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_PAGE_LIMIT,
    EntityFilters,
    Resource,
    entity_filter_params,
    input_bodies,
    with_param,
)

PATH = "contacts"


class ContactsResource(Resource):
    async def list(
        self, *, page: int = 1, limit: int = DEFAULT_PAGE_LIMIT, **filters: Unpack[EntityFilters]
    ) -> Page[Contact]:
        """One page of contacts. ``query`` also searches phones and e-mails; ``with_=["leads"]``
        embeds each contact's leads."""
        params = entity_filter_params(filters)
        return await self._page(PATH, "contacts", Contact, page=page, limit=limit, params=params)

    async def iterate(
        self,
        *,
        limit: int = DEFAULT_PAGE_LIMIT,
        start_page: int = 1,
        **filters: Unpack[EntityFilters],
    ) -> AsyncIterator[Contact]:
        """Every matching contact, page after page."""
        params = entity_filter_params(filters)

        async def fetch(number: int) -> Page[Contact]:
            return await self._page(
                PATH, "contacts", Contact, page=number, limit=limit, params=params
            )

        async for contact in self._iterate(fetch, start_page):
            yield contact

    async def find(
        self, query: str, *, limit: int = 50, with_: Sequence[str] = ()
    ) -> builtins.list[Contact]:
        """Contacts matching ``query`` (a name, phone or e-mail fragment), at most ``limit``.

        amoCRM matches ``query`` its own way (phones as typed); compare :attr:`Contact.phones`
        / :attr:`Contact.emails` yourself when an exact match matters.
        """
        if not query or not query.strip():
            raise ValueError("query must not be empty")
        page = await self.list(page=1, limit=limit, query=query, with_=with_)
        return page.items

    async def get(self, contact_id: int, *, with_: Sequence[str] = ()) -> Contact | None:
        """One contact; None when it does not exist. ``with_=["leads"]`` embeds its leads."""
        return await self._get(f"{PATH}/{int(contact_id)}", Contact, {"with": with_param(with_)})

    async def create(
        self, contacts: Sequence[ContactCreate], *, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> builtins.list[CreatedEntity]:
        """Create contacts, ``chunk_size`` (≤ 250) per request; results in input order."""
        bodies = input_bodies(ContactCreate, contacts)
        return await self._create(PATH, "contacts", bodies, chunk_size=chunk_size)

    async def create_one(self, contact: ContactCreate) -> CreatedEntity:
        (created,) = await self.create([contact])
        return created

    async def update(
        self, contacts: Sequence[ContactUpdate], *, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> builtins.list[UpdatedEntity]:
        """Update contacts (each names its ``id``); results in input order."""
        bodies = input_bodies(ContactUpdate, contacts)
        return await self._update(PATH, "contacts", bodies, chunk_size=chunk_size)

    async def update_one(self, contact_id: int, changes: ContactUpdate) -> UpdatedEntity:
        (body,) = input_bodies(ContactUpdate, [changes])
        return await self._update_one(PATH, contact_id, body)
