"""Fixtures shared by every tier: a clean environment, an in-process sandbox, and migrated
databases (copies of one template per session, see database_support.py)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from amobridge.sandbox import Clock, Sandbox, SandboxConfig, create_sandbox_app
from amobridge.sandbox.tokens import generate_signing_key
from database_support import DATABASE_KINDS, DatabaseTemplates, fresh_database
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


@pytest.fixture(scope="session")
def database_templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DatabaseTemplates]:
    """The session's migrated templates (see database_support.py): Alembic runs once per
    database kind and session, not once per test."""
    templates = DatabaseTemplates(tmp_path_factory.mktemp("database-template"))
    try:
        yield templates
    finally:
        templates.close()


@pytest.fixture(params=DATABASE_KINDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    """A fresh, migrated database of the test's own: SQLite in its temp dir, and PostgreSQL
    (its own database, dropped afterwards). Both are copies of the session's template."""
    with fresh_database(request, request.param, tmp_path) as url:
        yield url


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Any]:
    from amobridge.storage.db import Database

    database = Database(database_url)
    yield database
    await database.dispose()
