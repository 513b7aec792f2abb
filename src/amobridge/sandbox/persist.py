"""The sandbox's optional state file (``AMOBRIDGE_SANDBOX__STATE_FILE``): its world as JSON.

What a restart must not forget is kept: accounts with their users, pipelines, leads, contacts,
companies, notes, tags, fields and webhook subscriptions; integrations; codes and tokens; the id
counters; and the JWT signing key (so a token issued before a restart still decodes). What only
matters while a process runs is not: the request and outbound logs, pending consent pages, rate
limit meters, fault rules, webhook deliveries in flight and runtime config changes.

The file is JSON decoded field by field against the dataclasses in ``state.py``, never pickle:
a file edited by hand or written by another version fails with :class:`StateFileError`, which
names the file and what to do, instead of starting from an empty (or half-read) world.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import types
from collections import deque
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from amobridge.sandbox.clock import Clock
from amobridge.sandbox.state import (
    AccessToken,
    Account,
    AuthCode,
    Integration,
    RefreshToken,
    SandboxState,
)

FORMAT = 1
"""Bumped when the file's shape changes; another number is refused, not guessed at."""


class StateFileError(RuntimeError):
    """The state file exists but cannot be used."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(
            f"sandbox state file {path} cannot be loaded ({reason}); delete it to start the "
            "sandbox empty, or set AMOBRIDGE_SANDBOX__STATE_FILE to another path"
        )
        self.path = path


@dataclasses.dataclass
class Loaded:
    state: SandboxState
    signing_key: rsa.RSAPrivateKey


def dumps(state: SandboxState, signing_key: rsa.RSAPrivateKey) -> bytes:
    """The state file's bytes for ``state``. Nothing here awaits, so the snapshot is consistent."""
    pem = signing_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    document = {
        "format": FORMAT,
        "signing_key": pem,
        "ids": state.ids.snapshot(),
        "accounts": [dataclasses.asdict(a) for a in state.accounts.values()],
        "integrations": [dataclasses.asdict(i) for i in state.integrations.values()],
        "codes": [dataclasses.asdict(c) for c in state.codes.values()],
        "access_tokens": [dataclasses.asdict(t) for t in state.access_tokens.values()],
        "refresh_tokens": [dataclasses.asdict(t) for t in state.refresh_tokens.values()],
    }
    # deques (a subscription's recent failures) are written as lists.
    return json.dumps(document, ensure_ascii=False, indent=1, default=list).encode()


def load(path: Path, clock: Clock, request_log_size: int) -> Loaded | None:
    """The state saved in ``path``, or None when there is no file yet."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateFileError(path, exc.strerror or str(exc)) from exc
    try:
        return _parse(raw, clock, request_log_size)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise StateFileError(path, f"damaged: {exc}") from exc


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so a crash leaves the old file or the new one, never half
    of one. mkstemp creates the file 0600, which the tokens and signing key in it need."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # The rename itself is durable only once the directory entry is on disk.
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _parse(raw: bytes, clock: Clock, request_log_size: int) -> Loaded:
    document = json.loads(raw)
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    if document.get("format") != FORMAT:
        raise ValueError(f"format {document.get('format')!r}, this sandbox reads {FORMAT}")
    key = serialization.load_pem_private_key(document["signing_key"].encode(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("the signing key is not an RSA key")
    state = SandboxState(clock, request_log_size)
    state.ids.restore(document["ids"])
    for item in document["accounts"]:
        account = _decode(Account, item)
        state.accounts[account.id] = account
        state.accounts_by_subdomain[account.subdomain] = account
    for item in document["integrations"]:
        integration = _decode(Integration, item)
        state.integrations[integration.client_id] = integration
    for item in document["codes"]:
        code = _decode(AuthCode, item)
        state.codes[code.code] = code
    for item in document["access_tokens"]:
        access = _decode(AccessToken, item)
        state.access_tokens[access.token] = access
    for item in document["refresh_tokens"]:
        refresh = _decode(RefreshToken, item)
        state.refresh_tokens[refresh.token] = refresh
    return Loaded(state, key)


def _decode(kind: Any, value: Any) -> Any:
    """``value`` (parsed JSON) as ``kind``, checked: the dataclasses' type hints are the schema.
    JSON object keys are strings, so ``dict[int, …]`` keys are turned back into ints here."""
    origin = get_origin(kind)
    if dataclasses.is_dataclass(kind) and isinstance(kind, type):
        if not isinstance(value, dict):
            raise TypeError(f"{kind.__name__}: expected an object")
        hints = get_type_hints(kind)
        names = {f.name for f in dataclasses.fields(kind)}
        if unknown := set(value) - names:
            raise ValueError(f"{kind.__name__}: unknown fields {sorted(unknown)}")
        return kind(**{name: _decode(hints[name], item) for name, item in value.items()})
    if origin in (Union, types.UnionType):
        if value is None and type(None) in get_args(kind):
            return None
        (inner,) = [a for a in get_args(kind) if a is not type(None)]
        return _decode(inner, value)
    if origin is Literal:
        if value not in get_args(kind):
            raise ValueError(f"{value!r} is not one of {get_args(kind)}")
        return value
    if origin in (list, deque):
        if not isinstance(value, list):
            raise TypeError("expected a list")
        (item_kind,) = get_args(kind)
        items = [_decode(item_kind, item) for item in value]
        return deque(items) if origin is deque else items
    if origin is tuple:
        if not isinstance(value, list):
            raise TypeError("expected a list")
        return tuple(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeError("expected an object")
        key_kind, item_kind = get_args(kind)
        return {
            (int(k) if key_kind is int else _decode(key_kind, k)): _decode(item_kind, v)
            for k, v in value.items()
        }
    if kind is Any:
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise TypeError(f"expected true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"expected an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"expected a number, got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise TypeError(f"expected a string, got {value!r}")
        return value
    raise TypeError(f"the state file cannot hold {kind!r}")
