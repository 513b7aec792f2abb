"""What only leads have: their filters (for the shared endpoints of ``resource.py``) and
``/leads/complex``.

Lead filters: ``filter[pipeline_id]`` (``[0]``, ``[]``), ``filter[statuses][N][status_id]``
with an optional ``[pipeline_id]`` (any group may match), ``filter[price]`` and
``filter[closed_at]`` (a value or ``[from]``/``[to]``). ``with=contacts`` adds
``_embedded.contacts[{id, is_main, _links}]``.

``POST /api/v4/leads/complex`` (≤ ``complex_limit``, 50): each lead with at most one contact and
one company in ``_embedded`` (full data to create; an ``id`` alone links an existing one). The
reply is a bare array ``[{"id", "contact_id", "company_id", "request_id": ["…"], "merged":
false}]``; the sandbox never merges duplicates. ``_embedded.metadata`` and ``_embedded.source``
are accepted and ignored.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from amobridge.sandbox.api.common import api
from amobridge.sandbox.api.entities import (
    CompanyIn,
    ContactIn,
    LeadFieldsIn,
    Plan,
    Writer,
)
from amobridge.sandbox.api.query import Filters, Predicate, within
from amobridge.sandbox.api.tags import TagIn
from amobridge.sandbox.api.validate import Checker, Payload, body_array, read_body
from amobridge.sandbox.http import ApiContext, hal
from amobridge.sandbox.state import Account, Lead


def lead_filters(filters: Filters, account: Account) -> list[Predicate]:
    found: list[Predicate] = []
    pipelines = filters.ints("pipeline_id")
    if pipelines is not None:
        found.append(lambda lead: lead.pipeline_id in pipelines)
    groups = filters.groups("statuses")
    if groups:
        pairs = [(g.get("status_id"), g.get("pipeline_id")) for g in groups]
        found.append(
            lambda lead: any(
                (s is None or lead.status_id == s) and (p is None or lead.pipeline_id == p)
                for s, p in pairs
            )
        )
    for name in ("price", "closed_at"):
        bounds = filters.range(name)
        if bounds is not None:
            found.append(within(name, bounds))
    return found


# --- complex -----------------------------------------------------------------------------------


class ComplexEmbeddedIn(Payload):
    tags: list[TagIn] | None = None
    contacts: list[ContactIn] | None = Field(None, max_length=1)
    companies: list[CompanyIn] | None = Field(None, max_length=1)
    metadata: dict[str, Any] | None = None
    source: dict[str, Any] | None = None


class ComplexLeadIn(LeadFieldsIn):
    embedded: ComplexEmbeddedIn | None = Field(None, alias="_embedded")


def plan_complex(writer: Writer, item: ComplexLeadIn, check: Checker) -> Plan:
    """A lead with the contact and company to create (or link) along with it."""
    plan = writer.plan("leads", item, check)
    embedded = item.embedded
    if embedded is None:
        return plan
    for contact in embedded.contacts or ():
        nested = check.nested("_embedded.contacts.0")
        if contact.id is not None:
            if writer.find_target("contacts", contact.id, nested) is not None:
                plan.contacts.append((contact.id, True))
        else:
            plan.new_contact = writer.plan("contacts", contact, nested)
    for company in embedded.companies or ():
        nested = check.nested("_embedded.companies.0")
        if company.id is not None:
            if writer.find_target("companies", company.id, nested) is not None:
                plan.company_id = company.id
        else:
            plan.new_company = writer.plan("companies", company, nested)
    return plan


async def add_complex(request: Request, ctx: ApiContext) -> Response:
    items = body_array(await read_body(request), ctx.sandbox.config.complex_limit)
    writer = Writer(ctx.sandbox, ctx.account, ctx.user_id)
    plans = writer.plan_each(
        items, ComplexLeadIn, lambda item, raw, check: plan_complex(writer, item, check)
    )
    writer.commit(plans)
    reply = []
    for plan in plans:
        lead: Lead = plan.result
        reply.append(
            {
                "id": lead.id,
                "contact_id": lead.contact_ids[0] if lead.contact_ids else None,
                "company_id": lead.company_id,
                "request_id": [plan.request_id],
                "merged": False,
            }
        )
    return hal(reply)


def routes() -> list[BaseRoute]:
    return [Route("/api/v4/leads/complex", api(add_complex), methods=["POST"])]
