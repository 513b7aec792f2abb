"""The sandbox's subset of amoCRM's API v4, and the control API's UI-side edits.

Modules: ``account`` (account, users), ``pipelines``, ``resource`` (the one endpoint set for
leads, contacts and companies, parametrised by their :class:`~.resource.EntityKind`), ``leads``
(lead filters, ``/leads/complex``), ``notes``, ``tags``, ``fields`` (custom fields), ``entities``
(the one create/update/delete implementation, shared with ``ui``), ``query`` (filters, pages),
``validate`` (bodies, ``validation-errors``), ``serialize`` (JSON shapes and
``webhook_snapshot``). ``docs/sandbox.md`` documents the endpoints.
"""

from __future__ import annotations

from starlette.routing import BaseRoute

from amobridge.sandbox.api import (
    account,
    fields,
    leads,
    notes,
    pipelines,
    resource,
    tags,
    ui,
)
from amobridge.sandbox.api.serialize import webhook_snapshot

__all__ = ["control_routes", "routes", "webhook_snapshot"]


def routes() -> list[BaseRoute]:
    """``/api/v4`` routes. Literal paths (``/leads/pipelines``) never clash with ``{id:int}``;
    the entity routes come first because Starlette tries routes in order and
    ``GET /leads/{id}`` must stay cheap."""
    found: list[BaseRoute] = []
    for module in (leads, resource, pipelines, account, notes, tags, fields):
        found.extend(module.routes())
    return found


def control_routes() -> list[BaseRoute]:
    """``/_sandbox/accounts/{id}/{leads|contacts|companies}…``: a manager's edits in the UI."""
    return ui.routes()
