"""The PostgreSQL/Redis gate: skip locally with a reason, fail under CI."""

from __future__ import annotations

import socket

import pytest

from _services import in_ci, require_service


def test_ci_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    assert in_ci()
    monkeypatch.setenv("CI", "")
    assert not in_ci()
    monkeypatch.delenv("CI")
    assert not in_ci()


def test_missing_server_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        require_service("PostgreSQL", "127.0.0.1", 1, "127.0.0.1:1 is not reachable")


def test_missing_server_skips_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not reachable"):
        require_service("Redis", "127.0.0.1", 1, "127.0.0.1:1 is not reachable")


@pytest.mark.postgres
def test_postgres_answers(postgres_url: str) -> None:
    with socket.create_connection(("127.0.0.1", 5432), timeout=2) as sock:
        # An SSLRequest: a live PostgreSQL answers with one byte, 'S' or 'N'.
        sock.sendall(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")
        assert sock.recv(1) in (b"S", b"N")
    assert postgres_url.startswith("postgresql://")


@pytest.mark.redis
def test_redis_answers(redis_url: str) -> None:
    with socket.create_connection(("127.0.0.1", 6379), timeout=2) as sock:
        sock.sendall(b"PING\r\n")
        assert sock.recv(7) == b"+PONG\r\n"
    assert redis_url.startswith("redis://")
