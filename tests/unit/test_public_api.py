"""The public API of ``amobridge.amo`` is pinned: adding or removing a name is deliberate (httpx's
``tests/test_exported_members.py``). Update EXPECTED together with ``amo/__init__.py``."""

from __future__ import annotations

import importlib
import subprocess
import sys
import types

import amobridge.amo

EXPECTED = [
    "LOST_STATUS_ID",
    "WON_STATUS_ID",
    "Account",
    "AccountDomain",
    "AmoAccountNotFound",
    "AmoAmbiguousWrite",
    "AmoAuthError",
    "AmoBanned",
    "AmoClient",
    "AmoConnectionError",
    "AmoError",
    "AmoForbidden",
    "AmoHTTPError",
    "AmoInput",
    "AmoInvalidDomain",
    "AmoLookupError",
    "AmoModel",
    "AmoNotFound",
    "AmoPaymentRequired",
    "AmoRateLimited",
    "AmoReauthRequired",
    "AmoServerError",
    "AmoTimeout",
    "AmoTokenStoreError",
    "AmoTransportError",
    "AmoValidationError",
    "BanBreaker",
    "BaseWebhookEvent",
    "Company",
    "CompanyCreate",
    "CompanyEvent",
    "CompanyUpdate",
    "ComplexCreated",
    "ComplexLeadCreate",
    "Contact",
    "ContactCreate",
    "ContactEvent",
    "ContactUpdate",
    "CreatedEntity",
    "CustomField",
    "CustomFieldClear",
    "CustomFieldEnum",
    "CustomFieldType",
    "CustomFieldValue",
    "CustomFieldValueItem",
    "EmailType",
    "EntityLink",
    "EntityType",
    "EventEntity",
    "FieldError",
    "InMemoryRateLimiter",
    "InMemoryTokenStore",
    "JsonFileTokenStore",
    "Lead",
    "LeadCreate",
    "LeadEvent",
    "LeadFinderClient",
    "LeadUpdate",
    "Note",
    "NoteCreate",
    "NoteEvent",
    "NoteType",
    "OAuthTokenProvider",
    "OtherEvent",
    "Page",
    "PhoneType",
    "Pipeline",
    "RateLimitBackend",
    "Requester",
    "RetryMode",
    "RetryPolicy",
    "StaticTokenProvider",
    "Status",
    "SyncAmoClient",
    "Tag",
    "TagCreate",
    "TagRef",
    "TokenMaskingFilter",
    "TokenProvider",
    "TokenSet",
    "TokenStore",
    "UpdatedEntity",
    "User",
    "WebhookAccount",
    "WebhookCustomField",
    "WebhookCustomFieldValue",
    "WebhookEvent",
    "WebhookParseError",
    "WebhookPayload",
    "WebhookSubscription",
    "WebhookTag",
    "best_lead",
    "discover_subdomain",
    "email_field",
    "error_from_response",
    "exchange_code",
    "field_value",
    "find_contacts_by_email",
    "find_contacts_by_phone",
    "find_lead_by_email",
    "find_lead_by_phone",
    "find_leads_by_email",
    "find_leads_by_phone",
    "normalize_email",
    "normalize_phone",
    "parse_account_domain",
    "parse_webhook",
    "phone_field",
    "set_testing",
    "token_claims",
]


def test_all_is_pinned() -> None:
    assert amobridge.amo.__all__ == EXPECTED
    assert len(set(EXPECTED)) == len(EXPECTED)


def test_every_public_name_is_exported_and_importable() -> None:
    public = {
        name
        for name, value in vars(amobridge.amo).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(EXPECTED)
    for name in EXPECTED:
        assert getattr(amobridge.amo, name) is not None


def test_sdk_does_not_import_the_service_or_the_sandbox() -> None:
    """The SDK is usable alone: importing it pulls in neither settings nor the sandbox."""
    code = (
        "import sys, amobridge.amo; "
        "bad = [m for m in sys.modules if m.startswith(('amobridge.settings', 'amobridge.sandbox', "
        "'amobridge.web', 'amobridge.connect', 'amobridge.storage'))]; "
        "print(','.join(bad))"
    )
    result = subprocess.run(  # noqa: S603 - our own interpreter, a fixed snippet
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_submodules_import_cleanly() -> None:
    for name in (
        "auth",
        "auth.endpoint",
        "auth.oauth",
        "auth.providers",
        "auth.stores",
        "auth.tokens",
        "client",
        "domains",
        "errors",
        "ratelimit",
        "retry",
        "blocking",
    ):
        importlib.import_module(f"amobridge.amo.{name}")


def test_auth_package_keeps_the_names_of_the_old_module() -> None:
    """``amobridge.amo.auth`` was one module; the service and users import these from it."""
    auth = importlib.import_module("amobridge.amo.auth")
    for name in (
        "DEFAULT_ACCESS_TTL",
        "DEFAULT_LEEWAY",
        "TOKEN_PATH",
        "InMemoryTokenStore",
        "JsonFileTokenStore",
        "OAuthTokenProvider",
        "StaticTokenProvider",
        "TokenProvider",
        "TokenSet",
        "TokenStore",
        "exchange_code",
    ):
        value = getattr(auth, name)
        if name in EXPECTED:
            assert getattr(amobridge.amo, name) is value
