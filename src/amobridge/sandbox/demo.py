"""The demo world ``make run`` starts with: one account, an online school's pipeline (a stage
per lesson passed), an integration to connect with, and a few leads and contacts to look at."""

from __future__ import annotations

from dataclasses import dataclass

from amobridge.sandbox.app import Sandbox
from amobridge.sandbox.state import Account, Integration

ACADEMY_STAGES = [
    "Новая заявка",
    "ПРОШЕЛ ПЕРВЫЙ УРОК",
    "ПРОШЕЛ ВТОРОЙ УРОК",
    "ПРОШЕЛ ТРЕТИЙ УРОК",
    "Оплата",
]


@dataclass(frozen=True)
class Demo:
    account: Account
    integration: Integration


def seed_demo(sandbox: Sandbox, *, subdomain: str, redirect_uri: str) -> Demo:
    """Create the demo account and integration, or reuse them when the sandbox already has
    them (loaded from its state file), so their ids and the client secret survive a restart."""
    state = sandbox.state
    account = state.accounts_by_subdomain.get(subdomain)
    if account is None:
        account = state.create_account(subdomain, name="Demo Academy")
        state.add_pipeline(account, "onAI Academy", ACADEMY_STAGES)
        state.add_user(account, "Менеджер Мария", "maria@demo.example")
    integration = next((i for i in state.integrations.values() if i.name == "amobridge demo"), None)
    if integration is None:
        integration = state.create_integration("amobridge demo", redirect_uri, disconnect_url=None)
    else:
        # The service may listen elsewhere this time: its callback is what the consent page uses.
        integration.redirect_uri = redirect_uri
    return Demo(account, integration)
