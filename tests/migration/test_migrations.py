"""Migrations: upgrade, downgrade, upgrade again; then autogenerate finds no difference between
the migrated schema and ``storage.tables``. On SQLite always, on PostgreSQL when present."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from amobridge.storage import migrate
from amobridge.storage.tables import Base


def _sync_url(url: str) -> str:
    return url.replace("sqlite+aiosqlite", "sqlite").replace(
        "postgresql+psycopg", "postgresql+psycopg"
    )


def _assert_no_diff(url: str) -> None:
    engine = create_engine(_sync_url(url))
    try:
        with engine.connect() as conn:
            diff = compare_metadata(
                MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
            )
    finally:
        engine.dispose()
    assert diff == [], f"tables.py and the migrations disagree: {diff}"


def _tables(url: str) -> set[str]:
    engine = create_engine(_sync_url(url))
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _roundtrip(url: str) -> None:
    migrate.upgrade(url)
    assert {
        "connections",
        "integrations",
        "oauth_states",
        "button_secrets",
        "api_keys",
        "audit_log",
    } <= _tables(url)
    migrate.downgrade(url, "base")
    assert _tables(url) <= {"alembic_version"}
    migrate.upgrade(url)
    _assert_no_diff(url)


def test_sqlite_roundtrip(tmp_path: Path) -> None:
    _roundtrip(f"sqlite:///{tmp_path / 'amobridge.db'}")


@pytest.fixture
def pg_schema_url(postgres_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database per test, dropped afterwards."""
    name = f"amobridge_mig_{uuid.uuid4().hex[:8]}"
    admin = create_engine(
        postgres_url.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    base = postgres_url.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.mark.postgres
def test_postgres_roundtrip(pg_schema_url: str) -> None:
    _roundtrip(pg_schema_url)
