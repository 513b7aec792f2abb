"""What the crash proof (``crash_support.py``) posts and what it counts afterwards.

Contacts: lead ``i`` has contact ``i`` (an e-mail and a phone of its own), except every
``share_every``-th lead, which gives the previous lead's contact (e-mail upper-cased, phone
written the Russian domestic way): the service links both leads to one contact. So ``leads``
leads need ``leads - leads // share_every`` contacts.

:class:`CrashResult` holds the counts — the sandbox's account read through API v4, 250 a page;
the service's database with SQL (:class:`Local`) — and says which invariant did not hold.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
from sqlalchemy import create_engine, text

OWNER = "crash-owner"
PAGE = 250
MARKER_CODE = "AMOBRIDGE_REF"


@dataclass
class CrashResult:
    database: str
    leads_posted: int = 0
    post_errors: int = 0
    sandbox_leads: int = 0
    distinct_names: int = 0
    distinct_refs: int = 0
    duplicates: int = 0
    contacts_expected: int = 0
    sandbox_contacts: int = 0
    distinct_contact_emails: int = 0
    duplicate_contacts: int = 0  # contacts in amoCRM beyond one per e-mail
    wrong_contact: int = 0  # leads in amoCRM whose main contact is not the one they were given
    local_leads: int = 0
    local_synced: int = 0
    local_pending: int = 0
    local_failed: int = 0
    local_contacts: int = 0
    local_contacts_synced: int = 0
    local_amo_ids_matching: int = 0  # local rows whose amo_id is a lead of the sandbox's
    kills_requested: int = 0
    kills_done: int = 0
    kills_holding_jobs: int = 0  # kills of a worker that held running jobs at that moment
    adopted_after_kill: int = 0  # leads found in amoCRM by marker after a crash, not re-sent
    post_seconds: float = 0.0
    seconds: float = 0.0
    taken_over_alive: int = 0  # "jobs … were taken over by another worker": a lease ran out
    lease_renewals_failed: int = 0  # "job leases not renewed" / "job lease renewal failed"
    kill_log: list[dict[str, Any]] = field(default_factory=list)  # posts started, jobs held
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def check(self, leads: int) -> None:
        """Fill ``problems`` with every invariant that does not hold."""
        expect: list[tuple[str, int, int]] = [
            ("leads posted", self.leads_posted, leads),
            ("POST errors", self.post_errors, 0),
            ("leads in the sandbox", self.sandbox_leads, leads),
            ("distinct lead names in the sandbox", self.distinct_names, leads),
            ("distinct amobridge refs in the sandbox", self.distinct_refs, leads),
            ("duplicate leads", self.duplicates, 0),
            ("contacts in the sandbox", self.sandbox_contacts, self.contacts_expected),
            ("distinct contact e-mails", self.distinct_contact_emails, self.contacts_expected),
            ("duplicate contacts", self.duplicate_contacts, 0),
            ("leads with a wrong contact", self.wrong_contact, 0),
            ("local leads", self.local_leads, leads),
            ("local leads synced", self.local_synced, leads),
            ("local leads pending", self.local_pending, 0),
            ("local leads failed", self.local_failed, 0),
            ("local contacts", self.local_contacts, self.contacts_expected),
            ("local contacts synced", self.local_contacts_synced, self.contacts_expected),
            ("local amo_ids found in the sandbox", self.local_amo_ids_matching, leads),
            ("kills done", self.kills_done, self.kills_requested),
        ]
        self.problems = [
            f"{name}: {got} (expected {want})" for name, got, want in expect if got != want
        ]

    def public(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def contact_of(index: int, share_every: int) -> int:
    """The contact lead ``index`` gives: its own, or (every ``share_every``-th) the previous
    one's."""
    if share_every > 1 and index % share_every == share_every - 1:
        return index - 1
    return index


def expected_contacts(leads: int, share_every: int) -> int:
    return len({contact_of(i, share_every) for i in range(leads)})


def email_of(run: str, contact: int) -> str:
    return f"crash-{run}-{contact}@example.com"


def phone_of(contact: int) -> str:
    return f"+7 9{contact:09d}"


def lead_body(run: str, index: int, share_every: int) -> dict[str, Any]:
    contact = contact_of(index, share_every)
    shared = contact != index
    email = email_of(run, contact)
    digits = f"9{contact:09d}"
    return {
        "owner": OWNER,
        "name": f"crash lead {index}",
        "price": index,
        "external_id": f"crash-{index}",
        "contact": {
            "name": f"Контакт {contact}",
            # The same contact written otherwise: compared lower-cased and in E.164.
            "email": email.upper() if shared else email,
            "phone": f"8 ({digits[:3]}) {digits[3:6]}-{digits[6:8]}-{digits[8:]}"
            if shared
            else phone_of(contact),
        },
    }


# --- the counts ----------------------------------------------------------------------------------


def _sync_url(url: str) -> str:
    return (
        url.replace("postgresql://", "postgresql+psycopg://", 1)
        if url.startswith("postgresql://")
        else url
    )


class Local:
    """SQL on the service's database (short connections: the workers write meanwhile)."""

    def __init__(self, url: str) -> None:
        self.engine = create_engine(_sync_url(url))

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(text(sql), params).scalar()

    def rows(self, sql: str, **params: Any) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(text(sql), params))

    def lead_states(self) -> Counter[str]:
        found = self.rows("SELECT sync_state, count(*) FROM leads GROUP BY sync_state")
        return Counter({state: int(n) for state, n in found})

    def open_jobs(self) -> int:
        return int(
            self.scalar(
                "SELECT count(*) FROM jobs WHERE kind LIKE 'sync.%' "
                "AND state IN ('pending', 'running', 'paused')"
            )
        )

    def holders(self) -> set[int]:
        """The process ids of the workers holding running push jobs (worker ids: host:pid:…)."""
        found = self.rows(
            "SELECT DISTINCT locked_by FROM jobs WHERE state = 'running' AND kind LIKE 'sync.%'"
        )
        return {int(row[0].split(":")[-2]) for row in found if row[0] and row[0].count(":") >= 2}

    def held_by(self, pid: int) -> int:
        return int(
            self.scalar(
                "SELECT count(*) FROM jobs WHERE state = 'running' AND locked_by LIKE :pattern",
                pattern=f"%:{pid}:%",
            )
        )

    def close(self) -> None:
        self.engine.dispose()


def count_sandbox(
    sandbox_url: str, host: str, token: str, run: str, result: CrashResult, share_every: int
) -> set[int]:
    """Read the account through API v4, 250 a page; the ids of its leads."""
    headers = {"Host": host, "Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=sandbox_url, headers=headers, timeout=60) as api:
        found_leads = _pages(api, "/api/v4/leads", {"with": "contacts"}, "leads")
        found_contacts = _pages(api, "/api/v4/contacts", {}, "contacts")
    email_by_contact: dict[int, str] = {}
    for contact in found_contacts:
        for value in contact.get("custom_fields_values") or []:
            if value.get("field_code") == "EMAIL":
                email_by_contact[contact["id"]] = str(value["values"][0]["value"]).lower()
    names = Counter(lead["name"] for lead in found_leads)
    refs = set()
    wrong = 0
    for lead in found_leads:
        for value in lead.get("custom_fields_values") or []:
            if value.get("field_code") == MARKER_CODE:
                refs.add(value["values"][0]["value"])
        index = int(str(lead["name"]).rsplit(" ", 1)[-1])
        linked = [c["id"] for c in (lead.get("_embedded") or {}).get("contacts") or []]
        want = email_of(run, contact_of(index, share_every))
        if [email_by_contact.get(c) for c in linked] != [want]:
            wrong += 1
    result.sandbox_leads = len(found_leads)
    result.distinct_names = len(names)
    result.distinct_refs = len(refs)
    result.duplicates = sum(n - 1 for n in names.values())
    result.sandbox_contacts = len(found_contacts)
    result.distinct_contact_emails = len(set(email_by_contact.values()))
    result.duplicate_contacts = len(email_by_contact) - result.distinct_contact_emails
    result.wrong_contact = wrong
    return {int(lead["id"]) for lead in found_leads}


def _pages(api: httpx.Client, path: str, params: dict[str, str], key: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    page = 1
    while True:
        reply = api.get(path, params={**params, "limit": PAGE, "page": page})
        if reply.status_code == 429:
            time.sleep(1.0)  # the auditor's own pace: amoCRM's limit, waited out
            continue
        if reply.status_code == 204:
            return found
        reply.raise_for_status()
        body = reply.json()
        found.extend(body["_embedded"][key])
        if "next" not in body.get("_links", {}):
            return found
        page += 1


def count_local(local: Local, result: CrashResult, sandbox_ids: set[int]) -> None:
    states = local.lead_states()
    result.local_leads = sum(states.values())
    result.local_synced = states.get("synced", 0)
    result.local_pending = states.get("pending", 0)
    result.local_failed = states.get("failed", 0)
    result.local_contacts = int(local.scalar("SELECT count(*) FROM contacts"))
    result.local_contacts_synced = int(
        local.scalar("SELECT count(*) FROM contacts WHERE sync_state = 'synced'")
    )
    amo_ids = [row[0] for row in local.rows("SELECT amo_id FROM leads WHERE amo_id IS NOT NULL")]
    result.local_amo_ids_matching = (
        len(set(amo_ids) & sandbox_ids) if len(set(amo_ids)) == len(amo_ids) else 0
    )


def count_worker_logs(logs: str, result: CrashResult) -> None:
    """What the workers' logs say of the leases: taken over from a live worker, not renewed."""
    result.adopted_after_kill = adopted_after_kills(logs)
    result.taken_over_alive = logs.count("were taken over by another worker")
    result.lease_renewals_failed = logs.count("job leases not renewed") + logs.count(
        "job lease renewal failed"
    )


def adopted_after_kills(logs: str) -> int:
    """Leads the workers found in amoCRM by their marker (sent before a kill), from their logs."""
    pattern = re.compile(r"(\d+) lead\(s\) were already in amoCRM \(found by marker\)")
    return sum(int(m.group(1)) for m in pattern.finditer(logs))
