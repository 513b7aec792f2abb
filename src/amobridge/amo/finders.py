"""Find a customer's leads by the e-mail or phone they gave.

amoCRM has no "leads by contact e-mail" endpoint. A finder searches contacts with ``query``, keeps
those whose EMAIL / PHONE values really are the one asked for (amoCRM stores them as typed and its
phone matching is undocumented: e-mails are compared lower-cased, phones in
E.164), then reads the leads linked to those contacts and keeps the ones in the pipeline asked for.

::

    lead = await find_lead_by_phone(amo, "8 (912) 345-67-89", pipeline="Продажи")
    if lead is None:
        ...  # no open lead in that pipeline: create one

Requests: one search per query form (1–2 for an e-mail, up to 6 for a phone, each one page of up to
250 contacts), one pipelines read when ``pipeline`` is a name, and one leads read per 50 linked
leads. The client's rate limiter paces them like any other call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from amobridge.amo.models.contacts import Contact
from amobridge.amo.models.leads import Lead
from amobridge.amo.models.pipelines import LOST_STATUS_ID, WON_STATUS_ID
from amobridge.amo.phones import normalize_email, normalize_phone, phone_search_terms
from amobridge.amo.resources.base import MAX_PAGE_LIMIT
from amobridge.amo.resources.contacts import ContactsResource
from amobridge.amo.resources.leads import LeadsResource
from amobridge.amo.resources.pipelines import PipelinesResource

__all__ = [
    "LeadFinderClient",
    "best_lead",
    "find_contacts_by_email",
    "find_contacts_by_phone",
    "find_lead_by_email",
    "find_lead_by_phone",
    "find_leads_by_email",
    "find_leads_by_phone",
]

log = logging.getLogger("amobridge.amo.finders")

DEFAULT_MAX_CONTACTS = 250
"""Contacts read per query form. A phone or e-mail shared by more people than this is not a way to
find one customer, and reading further would be the full scan amoCRM bans accounts for."""
LEAD_IDS_PER_REQUEST = 50
"""Lead ids per ``filter[id]`` read: keeps the URL short, as amoCRM's writes do."""

PipelineRef = int | str | None
"""A pipeline by id or by name (case- and space-insensitive); None: every pipeline."""


class LeadFinderClient(Protocol):
    """What the finders use: an :class:`~amobridge.amo.client.AmoClient` (or its ``Endpoints``)."""

    contacts: ContactsResource
    leads: LeadsResource
    pipelines: PipelinesResource


# --- contacts ------------------------------------------------------------------------------------


async def _search_contacts(
    client: LeadFinderClient,
    terms: Iterable[str],
    keep: Callable[[Contact], bool],
    max_contacts: int,
) -> list[Contact]:
    """Contacts (with their leads embedded) found by any of ``terms`` and accepted by ``keep``."""
    if max_contacts < 1:
        raise ValueError("max_contacts must be at least 1")
    found: dict[int, Contact] = {}
    per_page = min(max_contacts, MAX_PAGE_LIMIT)
    for term in terms:
        seen, number, more = 0, 1, True
        while more and seen < max_contacts:
            page = await client.contacts.list(
                page=number, limit=per_page, query=term, with_=["leads"]
            )
            for contact in page.items[: max_contacts - seen]:
                if contact.id not in found and keep(contact):
                    found[contact.id] = contact
            seen += len(page.items)
            more, number = page.has_next, number + 1
        if more:
            # The term is a customer's phone or e-mail: personal data stays out of the log.
            log.warning(
                "a contact search matched more than %d contacts; the rest are not considered",
                max_contacts,
            )
    return list(found.values())


async def find_contacts_by_email(
    client: LeadFinderClient, email: str, *, max_contacts: int = DEFAULT_MAX_CONTACTS
) -> list[Contact]:
    """Contacts with ``email`` among their EMAIL values, compared case-insensitively.

    An ``email`` that is not an e-mail address matches nothing. Contacts come with their linked
    leads (:attr:`Contact.lead_ids`).
    """
    wanted = normalize_email(email)
    if wanted is None:
        return []
    terms = [wanted, email.strip()]  # as typed too, in case amoCRM's search is case-sensitive

    def has_email(contact: Contact) -> bool:
        return any(normalize_email(value) == wanted for value in contact.emails)

    return await _search_contacts(client, dict.fromkeys(terms), has_email, max_contacts)


async def find_contacts_by_phone(
    client: LeadFinderClient,
    phone: str,
    *,
    default_region: str = "RU",
    search_terms: Sequence[str] | None = None,
    max_contacts: int = DEFAULT_MAX_CONTACTS,
) -> list[Contact]:
    """Contacts with ``phone`` among their PHONE values, however either was written.

    Phones are compared in E.164 (a number without ``+`` is read in ``default_region``: "8 912 …"
    is +7 912 … for "RU"). ``search_terms`` replaces the ``query`` forms tried
    (:func:`~amobridge.amo.phones.phone_search_terms`). A ``phone`` that is not a phone number
    matches nothing.
    """
    wanted = normalize_phone(phone, default_region)
    if wanted is None:
        return []
    terms = (
        list(search_terms)
        if search_terms is not None
        else phone_search_terms(phone, default_region)
    )

    def has_phone(contact: Contact) -> bool:
        return any(normalize_phone(value, default_region) == wanted for value in contact.phones)

    return await _search_contacts(client, dict.fromkeys(terms), has_phone, max_contacts)


# --- leads ---------------------------------------------------------------------------------------


async def _pipeline_id(client: LeadFinderClient, pipeline: PipelineRef) -> int | None:
    if pipeline is None:
        return None
    if isinstance(pipeline, int) and not isinstance(pipeline, bool):
        return pipeline
    # By name (or a string of digits): raises AmoLookupError listing the account's pipelines.
    return (await client.pipelines.find(pipeline)).id


async def _leads_of(
    client: LeadFinderClient, contacts: Sequence[Contact], pipeline: PipelineRef
) -> list[Lead]:
    pipeline_id = await _pipeline_id(client, pipeline)
    lead_ids = list(dict.fromkeys(lead_id for c in contacts for lead_id in c.lead_ids))
    leads: dict[int, Lead] = {}
    for start in range(0, len(lead_ids), LEAD_IDS_PER_REQUEST):
        chunk = lead_ids[start : start + LEAD_IDS_PER_REQUEST]
        if pipeline_id is None:
            page = await client.leads.list(
                ids=chunk, limit=LEAD_IDS_PER_REQUEST, with_contacts=True
            )
        else:
            page = await client.leads.list(
                ids=chunk, pipeline_id=pipeline_id, limit=LEAD_IDS_PER_REQUEST, with_contacts=True
            )
        for lead in page.items:
            # Checked here too: a filter the server ignored must not widen the answer.
            if lead.id in chunk and (pipeline_id is None or lead.pipeline_id == pipeline_id):
                leads[lead.id] = lead
    return sorted(leads.values(), key=_recency, reverse=True)


def _recency(lead: Lead) -> tuple[int, int]:
    return (lead.updated_at or lead.created_at or 0, lead.id)


def _is_open(lead: Lead) -> bool:
    return lead.status_id not in (WON_STATUS_ID, LOST_STATUS_ID) and not lead.is_deleted


def best_lead(leads: Iterable[Lead], *, open_only: bool = True) -> Lead | None:
    """The most recently updated lead (ties: the newer id); with ``open_only``, among those not won
    (142) or lost (143). None when there is none."""
    candidates = [lead for lead in leads if not open_only or _is_open(lead)]
    return max(candidates, key=_recency, default=None)


async def find_leads_by_email(
    client: LeadFinderClient,
    email: str,
    *,
    pipeline: PipelineRef = None,
    max_contacts: int = DEFAULT_MAX_CONTACTS,
) -> list[Lead]:
    """The leads of every contact with ``email`` (case-insensitive), most recently updated first.

    ``pipeline``: an id or a name (case- and space-insensitive) to keep only that pipeline's leads;
    None for all. An unknown name raises ``AmoLookupError`` listing the account's pipelines.
    Leads come with their contacts (:attr:`Lead.contact_ids`).
    """
    contacts = await find_contacts_by_email(client, email, max_contacts=max_contacts)
    return await _leads_of(client, contacts, pipeline)


async def find_leads_by_phone(
    client: LeadFinderClient,
    phone: str,
    *,
    pipeline: PipelineRef = None,
    default_region: str = "RU",
    search_terms: Sequence[str] | None = None,
    max_contacts: int = DEFAULT_MAX_CONTACTS,
) -> list[Lead]:
    """The leads of every contact with ``phone`` (compared in E.164), most recently updated first.

    ``pipeline`` as in :func:`find_leads_by_email`; ``default_region`` and ``search_terms`` as in
    :func:`find_contacts_by_phone`.
    """
    contacts = await find_contacts_by_phone(
        client,
        phone,
        default_region=default_region,
        search_terms=search_terms,
        max_contacts=max_contacts,
    )
    return await _leads_of(client, contacts, pipeline)


async def find_lead_by_email(
    client: LeadFinderClient,
    email: str,
    *,
    pipeline: PipelineRef = None,
    open_only: bool = True,
    max_contacts: int = DEFAULT_MAX_CONTACTS,
) -> Lead | None:
    """The customer's current lead: the most recently updated open one (``open_only=False``: of
    any status) in ``pipeline`` among the leads of the contacts with ``email``; None if none."""
    leads = await find_leads_by_email(client, email, pipeline=pipeline, max_contacts=max_contacts)
    return best_lead(leads, open_only=open_only)


async def find_lead_by_phone(
    client: LeadFinderClient,
    phone: str,
    *,
    pipeline: PipelineRef = None,
    open_only: bool = True,
    default_region: str = "RU",
    search_terms: Sequence[str] | None = None,
    max_contacts: int = DEFAULT_MAX_CONTACTS,
) -> Lead | None:
    """As :func:`find_lead_by_email`, by phone (compared in E.164)."""
    leads = await find_leads_by_phone(
        client,
        phone,
        pipeline=pipeline,
        default_region=default_region,
        search_terms=search_terms,
        max_contacts=max_contacts,
    )
    return best_lead(leads, open_only=open_only)
