"""The development key (no AMOBRIDGE_SECURITY__SECRET_KEYS) is read, created and announced when a
secret is first encrypted or decrypted — not when the services are built — and announced once per
process."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from amobridge.connect.stores import StateSigner
from amobridge.services import Services, build_keyring
from amobridge.settings import Settings
from amobridge.storage.crypto import DEV_KEY_FILE, Keyring, generate_key

WARNING = "using the development key"


def dev_settings(folder: Path) -> Settings:
    return Settings(database={"url": f"sqlite:///{folder}/amobridge.db"})


def warnings(caplog: pytest.LogCaptureFixture) -> int:
    return sum(WARNING in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_building_the_services_reads_no_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    services = Services.build(dev_settings(tmp_path))
    assert not (tmp_path / DEV_KEY_FILE).exists()
    assert warnings(caplog) == 0
    secret = services.keyring.encrypt("a token")
    assert (tmp_path / DEV_KEY_FILE).exists()
    assert warnings(caplog) == 1
    assert services.keyring.decrypt(secret) == "a token"
    assert warnings(caplog) == 1


def test_the_warning_is_said_once_per_process(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = build_keyring(dev_settings(tmp_path))
    second = build_keyring(dev_settings(tmp_path))
    secret = first.encrypt("x")
    assert second.decrypt(secret) == "x"  # the same key file
    first.load()
    second.load()
    assert warnings(caplog) == 1


def test_load_reads_the_key_at_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    keyring = build_keyring(dev_settings(tmp_path))
    keyring.load()
    assert (tmp_path / DEV_KEY_FILE).exists()
    assert warnings(caplog) == 1
    assert keyring.size == 1


def test_a_deferred_keyring_reads_its_keys_once() -> None:
    calls: list[int] = []
    key = generate_key()

    def keys() -> list[str]:
        calls.append(1)
        return [key]

    keyring = Keyring.deferred(keys)
    assert calls == []
    assert Keyring([key]).decrypt(keyring.encrypt("x")) == "x"
    assert keyring.derived_keys("p") == Keyring([key]).derived_keys("p")
    assert calls == [1]


def test_a_signer_of_a_deferred_keyring_signs_like_one_built_from_its_keys() -> None:
    key = generate_key()
    keyring = Keyring.deferred(lambda: [key])
    lazy = StateSigner.of(lambda: keyring.derived_keys("oauth-state"))
    eager = StateSigner(*Keyring([key]).derived_keys("oauth-state"))
    assert eager.valid(lazy.new())
    assert lazy.valid(eager.new())
    assert not StateSigner(b"another key").valid(lazy.new())
