"""The signature events carry is the Standard Webhooks one: the specification's own test vector,
the legacy endpoint's headers, and the settings that refuse an endpoint without a usable secret."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError
from standardwebhooks import Webhook

from amobridge.errors import ConfigurationError
from amobridge.jobs import JobQueue
from amobridge.notify.service import (
    LEGACY_ID,
    Endpoint,
    NotifyService,
    matches,
    new_secret,
)
from amobridge.settings import Settings, load_settings
from amobridge.storage.crypto import Keyring, generate_key
from amobridge.storage.tables import Event

# The Standard Webhooks specification's test vector (its libraries' tests use the same).
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def _service(**over: object) -> NotifyService:
    settings = Settings(environment="test", **over)  # type: ignore[arg-type]
    return NotifyService(settings, keyring=Keyring([generate_key()]), queue=JobQueue(settings.jobs))


def _event() -> Event:
    return Event(
        id=SPEC_ID,
        type="connection.reauth_required",
        owner="o",
        connection_id="c",
        data={"owner": "o", "connection_id": "c", "reason": "revoked", "fix": "x"},
        created_at=datetime(2026, 5, 1, 9, 30, tzinfo=UTC),
    )


def test_the_headers_carry_the_specifications_signature() -> None:
    endpoint = Endpoint("settings", "https://h", None, "settings", secret=SPEC_SECRET)
    at = datetime.fromtimestamp(SPEC_TIMESTAMP, UTC)
    headers = _service().headers(_event(), SPEC_BODY, endpoint, at=at)
    assert headers["webhook-id"] == SPEC_ID
    assert headers["webhook-timestamp"] == str(SPEC_TIMESTAMP)
    assert headers["webhook-signature"] == SPEC_SIGNATURE


def test_the_body_is_type_timestamp_and_data() -> None:
    service = _service()
    endpoint = Endpoint("settings", "https://h", None, "settings", secret=new_secret())
    body = service.body(_event(), endpoint)
    assert json.loads(body) == {
        "type": "connection.reauth_required",
        "timestamp": "2026-05-01T09:30:00Z",
        "data": _event().data,
    }
    at = datetime.now(UTC)
    headers = service.headers(_event(), body, endpoint, at=at)
    assert Webhook(endpoint.secret or "").verify(body, headers) == json.loads(body)


def test_the_legacy_endpoint_keeps_its_body_and_header() -> None:
    service = _service()
    endpoint = Endpoint(LEGACY_ID, "https://h", None, "legacy", secret="old-secret")
    body = service.body(_event(), endpoint)
    assert json.loads(body) == {"event": "connection.reauth_required", **_event().data}
    headers = service.headers(_event(), body, endpoint, at=datetime.now(UTC))
    expected = hmac.new(b"old-secret", body, hashlib.sha256).hexdigest()
    assert headers["X-Amobridge-Signature"] == f"sha256={expected}"
    unsigned = Endpoint(LEGACY_ID, "https://h", None, "legacy")
    assert "webhook-signature" not in service.headers(
        _event(), body, unsigned, at=datetime.now(UTC)
    )


def test_an_endpoints_secret_is_not_in_its_repr() -> None:
    secret = new_secret()
    assert secret not in repr(Endpoint("x", "https://h", None, "api", secret=secret))


def test_type_filters() -> None:
    assert matches(None, "lead.created")
    assert matches(("lead.*",), "lead.stage_changed")
    assert not matches(("lead.*",), "connection.disconnected")
    assert matches(("connection.disconnected",), "connection.disconnected")
    assert not matches(("lead.created",), "lead.updated")


@pytest.mark.parametrize(
    "events",
    [
        {"url": "https://app.example.com/hook"},  # no secret
        {"url": "https://app.example.com/hook", "secret": "not-base64!"},
        {"url": "https://app.example.com/hook", "secret": "whsec_c2hvcnQ="},  # 5 bytes
        {"url": "not a url", "secret": new_secret()},
    ],
)
def test_settings_refuse_an_endpoint_without_a_usable_secret(events: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        Settings(environment="test", events=events)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError) as caught:  # what the service prints at start
        load_settings(environment="test", events=events)
    assert "AMOBRIDGE_EVENTS__" in str(caught.value)
    secret = events.get("secret")
    if secret:
        assert secret not in str(caught.value)


def test_an_unknown_type_filter_is_refused_at_start() -> None:
    with pytest.raises(ConfigurationError, match="AMOBRIDGE_EVENTS__TYPES"):
        _service(events={"url": "https://h.example/x", "secret": new_secret(), "types": ["lead"]})
    _service(events={"url": "https://h.example/x", "secret": new_secret(), "types": ["lead.*"]})
