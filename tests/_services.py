"""Real PostgreSQL and Redis for the tests that need them.

On a developer machine without the servers those tests skip, saying why. Under CI (``CI`` set) a
missing server is a failure: CI must never go green by skipping the tests that matter.
"""

from __future__ import annotations

import os
import socket

import pytest

POSTGRES_URL = os.environ.get(
    "AMOBRIDGE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("AMOBRIDGE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def _reachable(
    host: str, port: int, probe: bytes | None = None, expect: bytes | None = None
) -> str | None:
    """None when the server answers, else why not."""
    try:
        with socket.create_connection((host, port), timeout=2) as sock:
            if probe is not None:
                sock.sendall(probe)
                sock.settimeout(2)
                reply = sock.recv(64)
                if expect is not None and not reply.startswith(expect):
                    return f"{host}:{port} answered {reply[:20]!r}, not {expect!r}"
    except OSError as exc:
        return f"{host}:{port} is not reachable ({exc.strerror or exc})"
    return None


def require_service(name: str, host: str, port: int, problem: str | None) -> None:
    if problem is None:
        return
    message = f"{name} needed: {problem}"
    if in_ci():
        pytest.fail(f"{message} (CI is set: a missing {name} is a failure, not a skip)")
    pytest.skip(message)


def postgres_problem() -> str | None:
    return _reachable("127.0.0.1", 5432)


def redis_problem() -> str | None:
    return _reachable("127.0.0.1", 6379, b"PING\r\n", b"+PONG")
