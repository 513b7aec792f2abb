"""Fixtures shared by every tier: a clean environment, and an in-process sandbox."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from amobridge.sandbox import Clock, Sandbox, SandboxConfig, create_sandbox_app
from amobridge.sandbox.tokens import generate_signing_key
from sandbox_support import Connected, connect

SANDBOX_URL = "http://sandbox.test"


@pytest.fixture(autouse=True)
def _clean_amobridge_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's AMOBRIDGE_* variables or .env file."""
    for name in list(os.environ):
        if name.startswith("AMOBRIDGE_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def signing_key() -> rsa.RSAPrivateKey:
    return generate_signing_key()  # RSA generation is slow: one key for the session


@pytest.fixture
def sandbox_config() -> SandboxConfig:
    """Rate limiting off by default: tests of the limiter switch it on themselves."""
    return SandboxConfig(rate_limit_enabled=False)


@pytest.fixture
def sandbox(sandbox_config: SandboxConfig, signing_key: rsa.RSAPrivateKey) -> Sandbox:
    return Sandbox(sandbox_config, clock=Clock(), signing_key=signing_key)


@pytest.fixture
def sandbox_app(sandbox: Sandbox) -> Any:
    return create_sandbox_app(sandbox=sandbox)


@pytest.fixture
async def control(sandbox_app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A client for the control API (and anything else that needs no account host)."""
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=sandbox_app), base_url=SANDBOX_URL
    ) as client:
        yield client


@pytest.fixture
async def acme(control: httpx.AsyncClient, sandbox_app: Any) -> AsyncIterator[Connected]:
    """Account ``acme.amocrm.ru`` connected through a test integration."""
    connected = await connect(control, sandbox_app, "acme")
    yield connected
    await connected.api.aclose()


@pytest.fixture
def postgres_url() -> str:
    """URL of the real PostgreSQL (skips locally when missing, fails under CI)."""
    from _services import POSTGRES_URL, postgres_problem, require_service

    require_service("PostgreSQL", "127.0.0.1", 5432, postgres_problem())
    return POSTGRES_URL


@pytest.fixture
def redis_url() -> str:
    """URL of the real Redis (skips locally when missing, fails under CI)."""
    from _services import REDIS_URL, redis_problem, require_service

    require_service("Redis", "127.0.0.1", 6379, redis_problem())
    return REDIS_URL


def _create_pg_database(admin_url: str) -> tuple[str, Any]:
    import uuid

    from sqlalchemy import create_engine, text

    name = f"amobridge_t_{uuid.uuid4().hex[:10]}"
    admin = create_engine(
        admin_url.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    return f"{admin_url.rsplit('/', 1)[0]}/{name}", (admin, name)


def _drop_pg_database(handle: Any) -> None:
    from sqlalchemy import text

    admin, name = handle
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    """A fresh, migrated database: SQLite in a temp dir, and PostgreSQL (its own database)."""
    from amobridge.storage import migrate

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'amobridge.db'}"
        migrate.upgrade(url)
        yield url
        return
    admin_url = request.getfixturevalue("postgres_url")
    url, handle = _create_pg_database(admin_url)
    try:
        migrate.upgrade(url)
        yield url
    finally:
        _drop_pg_database(handle)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Any]:
    from amobridge.storage.db import Database

    database = Database(database_url)
    yield database
    await database.dispose()
