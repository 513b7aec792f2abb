"""The sandbox's in-memory world: accounts and their CRM data, integrations, grants, logs.

Everything runs on one asyncio event loop and no method here awaits, so each mutation is atomic
with respect to concurrent requests. Times are sandbox-clock unix seconds.
"""

from __future__ import annotations

import secrets
from collections import deque
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from amobridge.sandbox.clock import Clock

EntityType = Literal["leads", "contacts", "companies"]
WON_STATUS_ID = 142
LOST_STATUS_ID = 143

BASE_DOMAINS = ("amocrm.ru", "amocrm.com", "kommo.com")


def platform_of(base_domain: str) -> int:
    """amoCRM's ``platform`` redirect parameter: 1 for amocrm.ru, 2 for amocrm.com / kommo.com."""
    return 1 if base_domain == "amocrm.ru" else 2


@dataclass
class User:
    id: int
    name: str
    email: str
    is_admin: bool = True
    lang: str = "ru"


@dataclass
class Status:
    id: int
    name: str
    sort: int
    pipeline_id: int
    type: int = 0  # 1 = "Неразобранное" (unsorted)
    color: str = "#99ccff"
    is_editable: bool = True


@dataclass
class Pipeline:
    id: int
    name: str
    sort: int
    is_main: bool
    account_id: int
    statuses: list[Status] = field(default_factory=list)
    is_unsorted_on: bool = True
    is_archive: bool = False

    def status(self, status_id: int) -> Status | None:
        return next((s for s in self.statuses if s.id == status_id), None)

    def first_open_status(self) -> Status:
        """Where a lead lands when created without a status: the first stage after "unsorted"."""
        for status in self.statuses:
            if status.type == 0 and status.id not in (WON_STATUS_ID, LOST_STATUS_ID):
                return status
        return self.statuses[0]


@dataclass
class CustomFieldEnum:
    id: int
    value: str
    sort: int
    code: str | None = None


@dataclass
class CustomField:
    id: int
    name: str
    type: str  # text, numeric, select, multitext, date, url, checkbox, ...
    entity_type: EntityType
    sort: int = 500
    code: str | None = None
    is_api_only: bool = False
    enums: list[CustomFieldEnum] | None = None


@dataclass
class Tag:
    id: int
    name: str
    color: str | None = None


@dataclass
class Entity:
    """Fields shared by leads, contacts and companies."""

    id: int
    account_id: int
    name: str
    responsible_user_id: int
    created_by: int
    updated_by: int
    created_at: int
    updated_at: int
    group_id: int = 0
    closest_task_at: int | None = None
    is_deleted: bool = False
    custom_fields_values: list[dict[str, Any]] | None = None
    tag_ids: list[int] = field(default_factory=list)


@dataclass
class Lead(Entity):
    price: int = 0
    status_id: int = 0
    pipeline_id: int = 0
    loss_reason_id: int | None = None
    closed_at: int | None = None
    score: int | None = None
    labor_cost: int | None = None
    contact_ids: list[int] = field(default_factory=list)  # first one is the main contact
    company_id: int | None = None


@dataclass
class Contact(Entity):
    first_name: str = ""
    last_name: str = ""
    is_unsorted: bool = False
    company_id: int | None = None
    lead_ids: list[int] = field(default_factory=list)


@dataclass
class Company(Entity):
    contact_ids: list[int] = field(default_factory=list)
    lead_ids: list[int] = field(default_factory=list)


@dataclass
class Note:
    id: int
    account_id: int
    entity_type: EntityType
    entity_id: int
    note_type: str
    params: dict[str, Any]
    created_by: int
    updated_by: int
    responsible_user_id: int
    created_at: int
    updated_at: int
    group_id: int = 0


@dataclass
class WebhookSubscription:
    id: int
    account_id: int
    destination: str
    settings: list[str]
    sort: int
    created_by: int
    created_at: int
    updated_at: int
    disabled: bool = False
    # Sandbox times of recent invalid replies, for amoCRM's auto-disable rule.
    failures: deque[float] = field(default_factory=deque)


@dataclass
class Account:
    id: int
    subdomain: str
    base_domain: str
    name: str
    created_at: int
    admin_user_id: int
    currency: str = "RUB"
    country: str = "RU"
    users: dict[int, User] = field(default_factory=dict)
    pipelines: dict[int, Pipeline] = field(default_factory=dict)
    leads: dict[int, Lead] = field(default_factory=dict)
    contacts: dict[int, Contact] = field(default_factory=dict)
    companies: dict[int, Company] = field(default_factory=dict)
    notes: dict[int, Note] = field(default_factory=dict)
    tags: dict[EntityType, dict[int, Tag]] = field(
        default_factory=lambda: {"leads": {}, "contacts": {}, "companies": {}}
    )
    custom_fields: dict[EntityType, dict[int, CustomField]] = field(
        default_factory=lambda: {"leads": {}, "contacts": {}, "companies": {}}
    )
    webhooks: dict[str, WebhookSubscription] = field(default_factory=dict)  # by destination

    @property
    def host(self) -> str:
        return f"{self.subdomain}.{self.base_domain}"

    def entities(self, entity_type: EntityType) -> dict[int, Any]:
        if entity_type == "leads":
            return self.leads
        if entity_type == "contacts":
            return self.contacts
        return self.companies

    def main_pipeline(self) -> Pipeline:
        return next(p for p in self.pipelines.values() if p.is_main)

    def find_status(self, status_id: int, pipeline_id: int | None) -> Status | None:
        """Statuses 142/143 exist in every pipeline: ``pipeline_id`` disambiguates them."""
        if pipeline_id is not None:
            pipeline = self.pipelines.get(pipeline_id)
            return pipeline.status(status_id) if pipeline else None
        for pipeline in self.pipelines.values():
            found = pipeline.status(status_id)
            if found is not None and status_id not in (WON_STATUS_ID, LOST_STATUS_ID):
                return found
        return None


@dataclass
class Integration:
    client_id: str
    client_secret: str = field(repr=False)
    name: str
    redirect_uri: str
    disconnect_url: str | None = None
    scopes: list[str] = field(default_factory=lambda: ["crm", "notifications"])
    created_at: int = 0
    # Integrations made by the website button belong to the account they were installed in.
    created_in_account_id: int | None = None
    # account id -> installed (True) / uninstalled (False)
    installs: dict[int, bool] = field(default_factory=dict)


@dataclass
class AuthCode:
    code: str = field(repr=False)
    client_id: str
    account_id: int
    user_id: int
    issued_at: float
    expires_at: float
    used: bool = False


@dataclass
class AccessToken:
    token: str = field(repr=False)
    jti: str
    client_id: str
    account_id: int
    user_id: int
    issued_at: float
    expires_at: float
    long_lived: bool = False
    revoked: bool = False
    scopes: list[str] = field(default_factory=list)


@dataclass
class RefreshToken:
    token: str = field(repr=False)
    client_id: str
    account_id: int
    user_id: int
    issued_at: float
    expires_at: float
    access_jti: str
    spent_at: float | None = None
    revoked: bool = False


@dataclass
class RequestRecord:
    """One API or OAuth request as the control API reports it (never a token's value)."""

    time: float
    method: str
    path: str
    query: str
    status: int
    account_id: int | None = None
    client_id: str | None = None
    grant_type: str | None = None
    refresh_token_fingerprint: str | None = None
    fault: str | None = None

    def public(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "status": self.status,
            "account_id": self.account_id,
            "client_id": self.client_id,
            "grant_type": self.grant_type,
            "refresh_token_fingerprint": self.refresh_token_fingerprint,
            "fault": self.fault,
        }


class IdSequence:
    """amoCRM-looking ids: large, increasing, never reused within a sandbox's life (a state file
    carries the counters across restarts, so ids stay unique there too)."""

    START: ClassVar[dict[str, int]] = {
        "account": 30_000_001,
        "user": 8_000_001,
        "pipeline": 6_000_001,
        "status": 50_000_001,
        "lead": 1_000_001,
        "contact": 2_000_001,
        "company": 3_000_001,
        "note": 4_000_001,
        "tag": 100_001,
        "field": 500_001,
        "enum": 700_001,
        "webhook": 9_001,
    }

    def __init__(self) -> None:
        self._next = dict(self.START)

    def next(self, kind: str) -> int:
        value = self._next[kind]
        self._next[kind] = value + 1
        return value

    def snapshot(self) -> dict[str, int]:
        """The next id of each kind, for the state file."""
        return dict(self._next)

    def restore(self, saved: dict[str, int]) -> None:
        if set(saved) != set(self.START) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in saved.values()
        ):
            raise ValueError("id counters do not match this sandbox's id kinds")
        self._next = dict(saved)


class SandboxState:
    """All accounts and grants of one sandbox. Create accounts with :meth:`create_account`."""

    def __init__(self, clock: Clock, request_log_size: int = 200_000) -> None:
        self.clock = clock
        self.ids = IdSequence()
        self.accounts: dict[int, Account] = {}
        self.accounts_by_subdomain: dict[str, Account] = {}
        self.integrations: dict[str, Integration] = {}
        self.codes: dict[str, AuthCode] = {}
        self.access_tokens: dict[str, AccessToken] = {}
        self.refresh_tokens: dict[str, RefreshToken] = {}
        self.requests: deque[RequestRecord] = deque(maxlen=request_log_size)
        # Kept by oauth.py: what the sandbox sent to integrations (secrets POSTs, disconnect GETs),
        # for GET /_sandbox/outbound, and consent pages waiting for Allow/Deny, by nonce.
        self.outbound_log: list[dict[str, Any]] = []
        self.consents: dict[str, Any] = {}

    # --- accounts -------------------------------------------------------------------------------
    def create_account(
        self,
        subdomain: str,
        base_domain: str = "amocrm.ru",
        *,
        name: str | None = None,
        admin_name: str = "Администратор",
        admin_email: str | None = None,
    ) -> Account:
        subdomain = subdomain.strip().lower()
        if subdomain in self.accounts_by_subdomain:
            raise ValueError(f"account {subdomain!r} already exists")
        if base_domain not in BASE_DOMAINS:
            raise ValueError(f"base_domain must be one of {', '.join(BASE_DOMAINS)}")
        now = self.clock.now_int()
        account_id = self.ids.next("account")
        admin = User(
            id=self.ids.next("user"),
            name=admin_name,
            email=admin_email or f"admin@{subdomain}.example",
            is_admin=True,
        )
        account = Account(
            id=account_id,
            subdomain=subdomain,
            base_domain=base_domain,
            name=name or subdomain,
            created_at=now,
            admin_user_id=admin.id,
            currency="RUB" if base_domain == "amocrm.ru" else "USD",
            country="RU" if base_domain == "amocrm.ru" else "US",
        )
        account.users[admin.id] = admin
        self.accounts[account_id] = account
        self.accounts_by_subdomain[subdomain] = account
        self.add_pipeline(
            account,
            "Воронка",
            ["Первичный контакт", "Переговоры", "Принимают решение", "Согласование договора"],
            is_main=True,
        )
        self._add_default_fields(account)
        return account

    def add_pipeline(
        self, account: Account, name: str, statuses: list[str], *, is_main: bool = False
    ) -> Pipeline:
        pipeline_id = self.ids.next("pipeline")
        pipeline = Pipeline(
            id=pipeline_id,
            name=name,
            sort=(len(account.pipelines) + 1) * 10,
            is_main=is_main or not account.pipelines,
            account_id=account.id,
        )
        pipeline.statuses.append(
            Status(
                id=self.ids.next("status"),
                name="Неразобранное",
                sort=10,
                pipeline_id=pipeline_id,
                type=1,
                color="#c1c1c1",
                is_editable=False,
            )
        )
        for index, status_name in enumerate(statuses):
            pipeline.statuses.append(
                Status(
                    id=self.ids.next("status"),
                    name=status_name,
                    sort=20 + index * 10,
                    pipeline_id=pipeline_id,
                )
            )
        pipeline.statuses.append(
            Status(WON_STATUS_ID, "Успешно реализовано", 10000, pipeline_id, 0, "#CCFF66", False)
        )
        pipeline.statuses.append(
            Status(
                LOST_STATUS_ID, "Закрыто и не реализовано", 11000, pipeline_id, 0, "#D5D8DB", False
            )
        )
        account.pipelines[pipeline_id] = pipeline
        return pipeline

    def add_user(self, account: Account, name: str, email: str, *, is_admin: bool = False) -> User:
        user = User(id=self.ids.next("user"), name=name, email=email, is_admin=is_admin)
        account.users[user.id] = user
        return user

    def _add_default_fields(self, account: Account) -> None:
        """PHONE and EMAIL multitext fields on contacts, as every amoCRM account has."""
        for code, name, enum_codes in (
            ("PHONE", "Телефон", ["WORK", "WORKDD", "MOB", "FAX", "HOME", "OTHER"]),
            ("EMAIL", "Email", ["WORK", "PRIV", "OTHER"]),
            ("POSITION", "Должность", None),
        ):
            enums = (
                [
                    CustomFieldEnum(id=self.ids.next("enum"), value=c, sort=(i + 1) * 2, code=c)
                    for i, c in enumerate(enum_codes)
                ]
                if enum_codes
                else None
            )
            field_id = self.ids.next("field")
            account.custom_fields["contacts"][field_id] = CustomField(
                id=field_id,
                name=name,
                type="multitext" if enum_codes else "text",
                entity_type="contacts",
                code=code,
                enums=enums,
            )

    def account_by_host(self, host: str) -> Account | None:
        sub = host.split(".", 1)[0].lower()
        return self.accounts_by_subdomain.get(sub)

    # --- integrations ---------------------------------------------------------------------------
    def create_integration(
        self,
        name: str,
        redirect_uri: str,
        *,
        disconnect_url: str | None = None,
        scopes: list[str] | None = None,
        created_in_account_id: int | None = None,
    ) -> Integration:
        import uuid

        integration = Integration(
            client_id=str(uuid.uuid4()),
            client_secret=secrets.token_urlsafe(48),
            name=name,
            redirect_uri=redirect_uri,
            disconnect_url=disconnect_url,
            scopes=scopes or ["crm", "notifications"],
            created_at=self.clock.now_int(),
            created_in_account_id=created_in_account_id,
        )
        self.integrations[integration.client_id] = integration
        return integration
