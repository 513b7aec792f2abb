"""The CLI names the database it uses without importing SQLAlchemy: the file of a SQLite URL is
read as SQLAlchemy reads it, shown as an absolute path, and any other URL with its password
masked."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from amobridge.storage.location import shown_database, sqlite_file

URLS = [
    "sqlite://",
    "sqlite:///:memory:",
    "sqlite:///",
    "sqlite:///./data/amobridge.db",
    "sqlite:///data/amobridge.db",
    "sqlite:////srv/amobridge/data/amobridge.db",
    "sqlite+aiosqlite:///rel/x.db",
    "sqlite+pysqlite:////abs/x.db?timeout=5",
    "sqlite:///a%20b.db",
    "postgresql://user:pw@db.example.com/amobridge",
]


@pytest.mark.parametrize("url", URLS)
def test_the_file_is_the_one_sqlalchemy_opens(url: str) -> None:
    parsed = make_url(url)
    expected = (
        Path(parsed.database)
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:")
        else None
    )
    assert sqlite_file(url) == expected


def test_a_relative_file_is_shown_absolute(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    shown = shown_database("sqlite:///./data/amobridge.db")
    assert shown == f"sqlite:///{tmp_path.resolve()}/data/amobridge.db"
    assert shown.startswith("sqlite:////")


def test_a_password_is_masked() -> None:
    shown = shown_database("postgresql://amobridge:s3cret-pw@db.example.com:5432/amobridge")
    assert "s3cret-pw" not in shown
    assert shown == "postgresql://amobridge:***@db.example.com:5432/amobridge"
    assert shown_database("sqlite://") == "sqlite:// (in memory)"
