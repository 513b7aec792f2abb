"""Encryption at rest for tokens and client secrets (invariant 5).

A :class:`Keyring` wraps ``cryptography``'s MultiFernet: the first key encrypts, every key decrypts,
so a new key is put in front and ``amobridge keys rotate`` re-encrypts old rows with it before the
old key is removed. A keyring built with :meth:`Keyring.deferred` reads its keys when one is first
needed: the development key is created and announced only by a command that encrypts or decrypts
something. Fernet is authenticated (AES-128-CBC + HMAC-SHA256): a tampered ciphertext or a
wrong key raises :class:`DecryptionError`, never returns garbage.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from amobridge.errors import AmobridgeError, ConfigurationError

log = logging.getLogger("amobridge.storage")

DEV_KEY_FILE = "dev-secret.key"


class DecryptionError(AmobridgeError):
    """A stored secret cannot be decrypted with any configured key."""


class Keyring:
    _primary: Fernet
    _raw_keys: list[bytes]
    _primary_key: bytes
    _multi: MultiFernet
    _size: int

    def __init__(self, keys: Sequence[str | bytes]) -> None:
        self._pending: Callable[[], Sequence[str | bytes]] | None = None
        self._lock = threading.Lock()
        self._install(keys)

    @classmethod
    def deferred(cls, keys: Callable[[], Sequence[str | bytes]]) -> Keyring:
        """A keyring whose keys ``keys()`` gives when one is first needed (or at :meth:`load`)."""
        keyring = cls.__new__(cls)
        keyring._pending = keys
        keyring._lock = threading.Lock()
        return keyring

    def load(self) -> None:
        """Read deferred keys now: a service does at start, so the development key's warning and
        a bad key show there rather than at its first request. No-op once the keys are read."""
        if self._pending is None:
            return
        with self._lock:
            if self._pending is not None:
                self._install(self._pending())
                self._pending = None

    @property
    def size(self) -> int:
        self.load()
        return self._size

    def _install(self, keys: Sequence[str | bytes]) -> None:
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
        self._size = len(fernets)

    def derived_key(self, purpose: str) -> bytes:
        """A key for ``purpose`` (e.g. MACs of OAuth states) derived from the primary key."""
        self.load()
        return hmac.new(self._primary_key, f"amobridge/{purpose}".encode(), hashlib.sha256).digest()

    def derived_keys(self, purpose: str) -> list[bytes]:
        """:meth:`derived_key` of every configured key, the primary first."""
        self.load()
        return [
            hmac.new(k, f"amobridge/{purpose}".encode(), hashlib.sha256).digest()
            for k in self._raw_keys
        ]

    def encrypt(self, plaintext: str) -> str:
        self.load()
        return self._multi.encrypt(plaintext.encode()).decode()

    def decrypt(self, ciphertext: str) -> str:
        self.load()
        try:
            return self._multi.decrypt(ciphertext.encode()).decode()
        except InvalidToken:
            raise DecryptionError(
                "a stored secret cannot be decrypted: the key that encrypted it is not in "
                "AMOBRIDGE_SECURITY__SECRET_KEYS (add it back, or re-connect the account)"
            ) from None

    def rotate(self, ciphertext: str) -> str:
        """Re-encrypt with the primary key (no-op in effect when it already is)."""
        self.load()
        try:
            return self._multi.rotate(ciphertext.encode()).decode()
        except InvalidToken:
            raise DecryptionError(
                "a stored secret cannot be decrypted with any configured key"
            ) from None

    def encrypted_with_primary(self, ciphertext: str) -> bool:
        self.load()
        try:
            self._primary.decrypt(ciphertext.encode())
        except InvalidToken:
            return False
        return True


def generate_key() -> str:
    return Fernet.generate_key().decode()


# Development key files this process has warned about: the warning is said once per process.
_announced: set[Path] = set()


def load_or_create_dev_key(data_dir: Path) -> str:
    """Development only: a key kept in ``data_dir`` so tokens survive restarts. Warns loudly, once
    per process (per file)."""
    path = data_dir / DEV_KEY_FILE
    if path.exists():
        key = path.read_text().strip()
    else:
        data_dir.mkdir(parents=True, exist_ok=True)
        key = generate_key()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key + "\n")
    if path in _announced:
        return key
    _announced.add(path)
    log.warning(
        "no AMOBRIDGE_SECURITY__SECRET_KEYS set: using the development key in %s. "
        "Never do this in production: set AMOBRIDGE_SECURITY__SECRET_KEYS to a key from "
        "`amobridge keys generate`.",
        path,
    )
    return key
