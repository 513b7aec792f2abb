"""Invariant: tokens and client secrets are encrypted at rest — after every flow, not one
token or secret the sandbox issued is found in plaintext in the database: not in any column of
any table (SQLite and PostgreSQL), not in the SQLite file, its WAL or its shared-memory file.

Tokens kept in a plaintext JSON file leak with any copy of it; a database dump or a stolen
backup must not hand out working amoCRM grants.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from _procs import DEF502_LIKE, JWT_LIKE, full_flows, needles, sandbox_secrets
from sqlalchemy import inspect, select, table, text


async def table_values(db: Any) -> list[tuple[str, str, str]]:
    """``(table, column, value as text)`` for every non-null value of every table."""
    async with db.transaction() as session:
        connection = await session.connection()
        names = await connection.run_sync(lambda c: inspect(c).get_table_names())
        found = []
        for name in names:
            columns = await connection.run_sync(
                lambda c, n=name: [col["name"] for col in inspect(c).get_columns(n)]
            )
            rows = (await session.execute(select(text("*")).select_from(table(name)))).all()
            for row in rows:
                for column, value in zip(columns, row, strict=True):
                    if value is not None:
                        shown = value.decode("latin-1") if isinstance(value, bytes) else str(value)
                        found.append((name, column, shown))
    return found


def database_files(database_url: str) -> list[Path]:
    if not database_url.startswith("sqlite"):
        return []
    path = Path(database_url.removeprefix("sqlite:///"))
    return [p for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]


def hits_in(values: list[tuple[str, str, str]], files: list[Path], search: set[str]) -> list[str]:
    hits = [
        f"{name}.{column}" for name, column, value in values for needle in search if needle in value
    ]
    for path in files:
        data = path.read_bytes()
        hits += [f"{path.name}" for needle in search if needle.encode() in data]
    return hits


async def test_no_token_or_secret_is_stored_in_plaintext(stack: Any, database_url: str) -> None:
    extra = await full_flows(stack)
    state = stack.sandbox.state
    issued = sandbox_secrets(stack.sandbox)
    # The flows issued what the issue names: several pairs (connects, refreshes), a long-lived
    # token, and the secrets of the configured and the button's integrations.
    assert sum(1 for t in state.refresh_tokens.values() if t.spent_at is not None) >= 2
    assert any(t.long_lived for t in state.access_tokens.values())
    assert len(state.integrations) >= 2

    values = await table_values(stack.services.db)
    files = database_files(database_url)
    assert len(files) >= (2 if database_url.startswith("sqlite") else 0)

    # The scan finds what is there: the integration's client id (not a secret) is stored as-is.
    assert hits_in(values, [], {stack.integration["client_id"]})
    if files:
        assert hits_in([], files, {stack.integration["client_id"]})

    secrets = needles(issued | set(extra.values()))
    assert hits_in(values, files, secrets) == []
    # Nor anything that looks like a token (a value the sandbox did not record).
    assert [f"{name}.{column}" for name, column, value in values if JWT_LIKE.search(value)] == []
    assert [f"{name}.{column}" for name, column, value in values if DEF502_LIKE.search(value)] == []
    for path in files:
        data = path.read_bytes().decode("latin-1")
        assert not JWT_LIKE.search(data), path.name
        assert not DEF502_LIKE.search(data), path.name
