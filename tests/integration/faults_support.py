"""The fault proof of the lead push, shared by ``test_leads_faults.py`` and ``bench/faults.py``.

Two tenants (two owners, each connected to an amoCRM account of its own) push leads through one
service. Tenant A's account misbehaves — 5xx (some after amoCRM did the work: the ambiguous
write), gateway timeouts and dropped connections, bursts of 429, a ban that later ends, and a
revoked grant the owner then repairs by connecting again — while tenant B's is healthy. What
must hold: every local lead of both ends ``synced``; amoCRM holds each exactly once (counted by
the "amobridge ref" marker each push writes, and matched to the local row's ``amo_id``); the
contacts shared by several leads exist once; no job failed.

Time: a ban makes the service assume an hour (its breaker, ``amo/retry.py``) and a retried job
waits its backoff. :class:`VirtualClock` is the service's clock for those waits — the worker's
(``JobWorker(clock=...)``) and the ban breakers' (:func:`breakers_on`) — so "an hour later" is
one ``advance`` instead of an hour; the sandbox's own clock is advanced for its side of the ban.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

from sqlalchemy import select

from amobridge.amo.retry import BanBreaker
from amobridge.connect import clients as clients_module
from amobridge.storage.tables import Job, Lead

MARKER_CODE = "AMOBRIDGE_REF"
COMPLEX = "/api/v4/leads/complex"
PAGE = 250


@dataclass
class VirtualClock:
    """This host's clock plus ``offset`` seconds."""

    offset: float = 0.0
    jumps: list[tuple[datetime, float]] = field(default_factory=list)  # (then, offset after)

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.offset)

    def time(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds
        self.jumps.append((self.now(), self.offset))

    def real(self, moment: datetime) -> datetime:
        """The host's time of a moment this clock gave (it only jumps forward, so a moment
        after a jump lies past it on this clock)."""
        offset = 0.0
        for then, after in self.jumps:
            if moment >= then:
                offset = after
        return moment - timedelta(seconds=offset)


@contextlib.contextmanager
def breakers_on(clock: VirtualClock) -> Iterator[None]:
    """The ban breakers the service makes meanwhile read ``clock`` (a detected ban is assumed
    to last an hour of it)."""
    made = functools.partial(BanBreaker, clock=clock.time)
    with mock.patch.object(clients_module, "BanBreaker", made):
        yield


def noise(account_id: int, *, timeout_delay: float) -> list[dict[str, Any]]:
    """The steady faults of a sick account: about 10 % of its API requests answer 5xx (half of
    those after amoCRM did the work), 2 % hold ``timeout_delay`` s and answer 504 (a creating
    one after the work), 1 % of the creates lose their connection after the work."""
    base = {"account_id": account_id, "path_prefix": "/api/v4/"}
    return [
        {**base, "kind": "error", "status": 503, "probability": 0.03},
        {**base, "kind": "error", "status": 502, "probability": 0.02},
        {**base, "kind": "error", "status": 500, "phase": "after", "probability": 0.05},
        {
            **base,
            "kind": "timeout",
            "delay": timeout_delay,
            "method": "POST",
            "phase": "after",
            "probability": 0.02,
        },
        {**base, "kind": "timeout", "delay": timeout_delay, "method": "GET", "probability": 0.02},
        {**base, "kind": "drop", "method": "POST", "phase": "after", "probability": 0.01},
    ]


def ambiguous_creates(account_id: int, *, timeout_delay: float) -> list[dict[str, Any]]:
    """Certain ambiguous writes: the next create answers 500 after it was done, the one after
    it a 504 after a hold."""
    base = {"account_id": account_id, "path_prefix": COMPLEX, "method": "POST", "count": 1}
    return [
        {**base, "kind": "error", "status": 500, "phase": "after"},
        {**base, "kind": "timeout", "delay": timeout_delay, "phase": "after"},
    ]


def burst(account_id: int, count: int) -> dict[str, Any]:
    """The next ``count`` requests of the account answer 429."""
    return {"kind": "rate_limit", "account_id": account_id, "path_prefix": "/api/", "count": count}


def revoke(account_id: int) -> dict[str, Any]:
    """The next API request revokes the account's grant (its refresh token dies with it)."""
    return {"kind": "revoke", "account_id": account_id, "path_prefix": "/api/v4/", "count": 1}


def lead_body(owner: str, i: int, *, contacts: int) -> dict[str, Any]:
    """Lead ``i`` of ``owner``; leads ``i`` and ``i + contacts`` share a contact (the second
    one's e-mail upper-cased: the mirror links them to one)."""
    n = i % contacts
    email = f"client{n}@{owner}.example"
    return {
        "owner": owner,
        "name": f"{owner} lead {i}",
        "price": i,
        "contact": {"name": f"Client {n}", "email": email.upper() if i >= contacts else email},
    }


@dataclass
class TenantReport:
    owner: str
    local: int = 0
    states: dict[str, int] = field(default_factory=dict)
    in_amo: int = 0
    markers_doubled: int = 0  # markers held by more than one amoCRM lead
    missing: int = 0  # local rows whose marker amoCRM does not hold
    strangers: int = 0  # amoCRM leads without a local row's marker
    wrong_amo_id: int = 0  # local amo_id is not the lead holding its marker
    contacts: int = 0
    contacts_doubled: int = 0  # e-mails held by more than one amoCRM contact
    jobs: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)  # last_error of rows not synced

    @property
    def holds(self) -> bool:
        return (
            self.local > 0
            and self.states == {"synced": self.local}
            and self.in_amo == self.local
            and not (self.markers_doubled or self.missing or self.strangers or self.wrong_amo_id)
            and not self.contacts_doubled
            and set(self.jobs) <= {"succeeded"}
        )


async def tenant_report(services: Any, owner: str) -> TenantReport:
    """The owner's local rows and jobs against what its amoCRM account holds (read through API
    v4 with the owner's connection, 250 a page: clear the faults first)."""
    report = TenantReport(owner)
    async with services.db.read() as session:
        rows = list(
            await session.scalars(select(Lead).where(Lead.owner == owner, Lead.deleted.is_(False)))
        )
        kinds = Counter(
            await session.scalars(
                select(Job.state).where(Job.owner == owner, Job.kind.like("sync.%"))
            )
        )
        connection = await services.connections(session).for_owner(owner)
    report.local = len(rows)
    report.states = dict(Counter(row.sync_state for row in rows))
    report.jobs = dict(kinds)
    report.errors = dict(
        Counter(str(row.last_error)[:300] for row in rows if row.sync_state != "synced")
    )
    client = await services.clients.client(connection)
    by_marker: dict[str, list[int]] = {}
    async for lead in client.leads.iterate(limit=PAGE):
        report.in_amo += 1
        key = lead.custom_field_value(MARKER_CODE)
        by_marker.setdefault(str(key), []).append(lead.id)
    keys = {row.create_key: row for row in rows}
    report.markers_doubled = sum(1 for ids in by_marker.values() if len(ids) > 1)
    report.strangers = sum(1 for key in by_marker if key not in keys)
    for key, row in keys.items():
        found = by_marker.get(str(key))
        if not found:
            report.missing += 1
        elif row.amo_id not in found:
            report.wrong_amo_id += 1
    emails: Counter[str] = Counter()
    async for contact in client.contacts.iterate(limit=PAGE):
        report.contacts += 1
        emails.update({email.lower() for email in contact.emails})
    report.contacts_doubled = sum(1 for count in emails.values() if count > 1)
    return report
