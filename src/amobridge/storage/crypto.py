"""Encryption at rest for tokens and client secrets (invariant 5).

A :class:`Keyring` wraps ``cryptography``'s MultiFernet: the first key encrypts, every key decrypts,
so a new key is put in front and ``amobridge keys rotate`` re-encrypts old rows with it before the
old key is removed. Fernet is authenticated (AES-128-CBC + HMAC-SHA256): a tampered ciphertext or a
wrong key raises :class:`DecryptionError`, never returns garbage.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from amobridge.errors import AmobridgeError, ConfigurationError

log = logging.getLogger("amobridge.storage")

DEV_KEY_FILE = "dev-secret.key"


class DecryptionError(AmobridgeError):
    """A stored secret cannot be decrypted with any configured key."""


class Keyring:
    def __init__(self, keys: Sequence[str | bytes]) -> None:
        if not keys:
            raise ConfigurationError(
                "at least one encryption key is needed (AMOBRIDGE_SECURITY__SECRET_KEYS)"
            )
        fernets = []
        for index, key in enumerate(keys):
            try:
                fernets.append(Fernet(key))
            except (ValueError, TypeError):
                raise ConfigurationError(
                    f"AMOBRIDGE_SECURITY__SECRET_KEYS: key #{index + 1} is not a Fernet key "
                    "(32 url-safe base64 bytes; make one with `amobridge keys generate`)"
                ) from None
        self._primary = fernets[0]
        self._raw_keys = [k.encode() if isinstance(k, str) else k for k in keys]
        self._primary_key = self._raw_keys[0]
        self._multi = MultiFernet(fernets)
        self.size = len(fernets)

    def derived_key(self, purpose: str) -> bytes:
        """A key for ``purpose`` (e.g. MACs of OAuth states) derived from the primary key."""
        return hmac.new(self._primary_key, f"amobridge/{purpose}".encode(), hashlib.sha256).digest()

    def derived_keys(self, purpose: str) -> list[bytes]:
        """:meth:`derived_key` of every configured key, the primary first."""
        return [
            hmac.new(k, f"amobridge/{purpose}".encode(), hashlib.sha256).digest()
            for k in self._raw_keys
        ]

    def encrypt(self, plaintext: str) -> str:
        return self._multi.encrypt(plaintext.encode()).decode()

    def decrypt(self, ciphertext: str) -> str:
        try:
            return self._multi.decrypt(ciphertext.encode()).decode()
        except InvalidToken:
            raise DecryptionError(
                "a stored secret cannot be decrypted: the key that encrypted it is not in "
                "AMOBRIDGE_SECURITY__SECRET_KEYS (add it back, or re-connect the account)"
            ) from None

    def rotate(self, ciphertext: str) -> str:
        """Re-encrypt with the primary key (no-op in effect when it already is)."""
        try:
            return self._multi.rotate(ciphertext.encode()).decode()
        except InvalidToken:
            raise DecryptionError(
                "a stored secret cannot be decrypted with any configured key"
            ) from None

    def encrypted_with_primary(self, ciphertext: str) -> bool:
        try:
            self._primary.decrypt(ciphertext.encode())
        except InvalidToken:
            return False
        return True


def generate_key() -> str:
    return Fernet.generate_key().decode()


def load_or_create_dev_key(data_dir: Path) -> str:
    """Development only: a key kept in ``data_dir`` so tokens survive restarts. Warns loudly."""
    path = data_dir / DEV_KEY_FILE
    if path.exists():
        key = path.read_text().strip()
    else:
        data_dir.mkdir(parents=True, exist_ok=True)
        key = generate_key()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key + "\n")
    log.warning(
        "no AMOBRIDGE_SECURITY__SECRET_KEYS set: using the development key in %s. "
        "Never do this in production: set AMOBRIDGE_SECURITY__SECRET_KEYS to a key from "
        "`amobridge keys generate`.",
        path,
    )
    return key
