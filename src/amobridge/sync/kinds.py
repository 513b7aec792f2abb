"""The job kinds of the sync feature (queued by ``service.py``, handled by ``tasks.py``).

Every job names the connection it pushes to (``connection_id``) and the row it pushes as its
ordering key (``lead:<id>``: a lead's update never overtakes its create, while the creates of
many leads go in one batch). It carries only the id of its mirror row: the handler reads
the row when it runs, so it sends the state of that moment, and a job that waited through a
re-authorization sends what the host app last wanted."""

from __future__ import annotations

LEAD_CREATE = "sync.lead.create"
LEAD_UPDATE = "sync.lead.update"
CONTACT_CREATE = "sync.contact.create"
CONTACT_UPDATE = "sync.contact.update"

# amoCRM takes at most 50 leads per POST /leads/complex; 50 is its advice for other writes too.
BATCH_SIZE = 50

# amoCRM's own updated_at of leads just created (its complex reply has only their ids): one job
# per create request, read back afterwards two at a time (one GET of 100 ids: a URL of ~3.5 KB,
# where 250 would be ~9 KB, past common 8 KB request-line limits). A job's turn comes after the
# jobs its connection had queued already, so a backlog of creates goes out first.
LEAD_READBACK = "sync.lead.readback"
READBACK_BATCH = 2


def entity_of(kind: str) -> str | None:
    """``leads`` or ``contacts``: what a push job of ``kind`` pushes (None for other kinds)."""
    if kind in (LEAD_CREATE, LEAD_UPDATE):
        return "leads"
    if kind in (CONTACT_CREATE, CONTACT_UPDATE):
        return "contacts"
    return None


def update_dedup_key(kind: str, row_id: str) -> str:
    """One waiting update job per row: a second change before it runs is pushed by the same job
    (the handler sends the row's latest state)."""
    return f"{kind}:{row_id}"


# Pulls from amoCRM into the mirror (``imports.py``). One of each waits or runs per connection
# at a time (their dedup keys): a second request for an import gets the one under way.
IMPORT = "sync.import"
CATCHUP = "sync.catchup"


def pull_dedup_key(kind: str, connection_id: str) -> str:
    return f"{kind}:{connection_id}"
