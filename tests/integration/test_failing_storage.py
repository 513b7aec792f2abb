"""A failing disk is visible and survivable: the database files turning read-only, deleted or
replaced under a running service give 503s with the reason (never a crash, never writes into a
deleted file), the service recovers by itself when the files take writes again, and it refuses to
start on a database that is gone, emptied or write-protected.

Files are made write-protected the way that binds the user running the tests: ``chattr +i`` for
root (root ignores permission bits; an immutable ``-shm`` file is also what killed the process
with SIGBUS before the guard), ``chmod`` otherwise."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from amobridge.storage.db import Database
from amobridge.storage.identity import StorageRefused, establish, instance_file, preflight
from process_support import amobridge, clean_env, free_port, spawn

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def _files(path: Path) -> list[Path]:
    names = (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm"))
    return [p for p in names if p.exists()]


@contextlib.contextmanager
def write_protected(path: Path) -> Iterator[None]:
    """The database's files and folder do not take writes inside the block."""
    targets = [*_files(path), path.parent]
    if os.geteuid() == 0:
        if shutil.which("chattr") is None:
            pytest.skip("running as root without chattr: no way to write-protect a file for root")
        done = subprocess.run(["chattr", "+i", *map(str, targets)], capture_output=True)  # noqa: S603, S607
        if done.returncode != 0:
            subprocess.run(["chattr", "-i", *map(str, targets)], capture_output=True)  # noqa: S603, S607
            pytest.skip(f"chattr +i is not supported here: {done.stderr.decode().strip()}")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", *map(str, targets)], check=True)  # noqa: S603, S607
        return
    modes = {target: stat.S_IMODE(target.stat().st_mode) for target in targets}
    for target in targets:
        target.chmod(0o555 if target.is_dir() else 0o444)
    try:
        yield
    finally:
        for target, mode in modes.items():
            target.chmod(mode)


def _path(stack: Any) -> Path:
    path = stack.services.db.path
    assert path is not None
    return Path(path)


async def _start_flow(stack: Any, owner: str) -> httpx.Response:
    """A write: the website-button page stores an OAuth state."""
    return await stack.http.get(
        "/amocrm/connect", params={"owner": owner}, headers=stack.app_headers()
    )


@sqlite_only
async def test_write_protected_files_answer_503_and_the_service_recovers(stack: Any) -> None:
    await stack.connect("u")
    assert (await stack.http.get("/readyz")).status_code == 200
    with write_protected(_path(stack)):
        ready = await stack.http.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["status"] == "unavailable"
        assert "does not take writes" in ready.json()["detail"]
        refused = await _start_flow(stack, "v")
        assert refused.status_code == 503, refused.text
        assert "does not take writes" in refused.json()["detail"]
        assert refused.json()["error"] == "storage_unavailable"
    # Writable again: no restart, the next request goes through and nothing was lost.
    assert (await stack.http.get("/readyz")).status_code == 200
    assert (await _start_flow(stack, "v")).status_code == 200
    status = await stack.http.get(
        "/amocrm/status", params={"owner": "u"}, headers=stack.app_headers()
    )
    assert status.json()["connected"] is True


@sqlite_only
async def test_a_deleted_database_file_stops_writes_until_it_is_back(stack: Any) -> None:
    path = _path(stack)
    await stack.connect("u")
    aside = path.with_name("moved-away.db")
    path.rename(aside)
    try:
        ready = await stack.http.get("/readyz")
        assert ready.status_code == 503
        assert "is gone" in ready.json()["detail"]
        # Nothing is written into the deleted file (it would be lost at the next start).
        refused = await _start_flow(stack, "v")
        assert refused.status_code == 503
        assert "is gone" in refused.json()["detail"]
    finally:
        aside.rename(path)
    assert (await stack.http.get("/readyz")).status_code == 200
    assert (await _start_flow(stack, "v")).status_code == 200


@sqlite_only
async def test_a_replaced_database_file_is_refused_until_a_restart(stack: Any) -> None:
    path = _path(stack)
    await stack.connect("u")
    copy = path.with_name("copy.db")
    shutil.copyfile(path, copy)
    os.replace(copy, path)  # same contents, another file: the open connections no longer see it
    ready = await stack.http.get("/readyz")
    assert ready.status_code == 503
    assert "was replaced" in ready.json()["detail"]
    assert (await _start_flow(stack, "v")).status_code == 503


async def _first_start(path: Path) -> str:
    from amobridge.storage.migrate import upgrade_async

    db = Database(f"sqlite:///{path}")
    try:
        preflight(db)
        await upgrade_async(db.url)
        return await establish(db)
    finally:
        await db.dispose()


async def test_the_first_start_names_the_database_and_the_next_agrees(tmp_path: Path) -> None:
    path = tmp_path / "data" / "amobridge.db"
    first = await _first_start(path)
    assert instance_file(path).read_text().strip() == first
    assert await _first_start(path) == first


async def test_refuses_to_start_when_the_database_file_is_gone(tmp_path: Path) -> None:
    path = tmp_path / "data" / "amobridge.db"
    known = await _first_start(path)
    for file in _files(path):
        file.unlink()
    with pytest.raises(StorageRefused) as refused:
        await _first_start(path)
    message = str(refused.value)
    assert "missing" in message
    assert known in message
    assert str(instance_file(path)) in message  # the way to start afresh on purpose
    assert not path.exists()  # no empty database was created in its place
    instance_file(path).unlink()  # the operator's choice: start afresh
    assert await _first_start(path) != known


async def test_refuses_to_start_on_an_empty_database_put_in_its_place(tmp_path: Path) -> None:
    path = tmp_path / "data" / "amobridge.db"
    await _first_start(path)
    for file in _files(path):
        file.unlink()
    sqlite3.connect(path).close()  # an empty file at the same path
    with pytest.raises(StorageRefused, match="is empty"):
        await _first_start(path)


async def test_refuses_to_start_on_another_database(tmp_path: Path) -> None:
    path = tmp_path / "data" / "amobridge.db"
    await _first_start(path)
    other = tmp_path / "other" / "amobridge.db"
    await _first_start(other)
    for file in _files(path):
        file.unlink()
    shutil.copyfile(other, path)
    with pytest.raises(StorageRefused, match="Put the right file back"):
        await _first_start(path)


async def test_refuses_to_start_on_a_write_protected_database(tmp_path: Path) -> None:
    path = tmp_path / "data" / "amobridge.db"
    await _first_start(path)
    with write_protected(path), pytest.raises(StorageRefused, match="does not take writes"):
        await _first_start(path)


@pytest.mark.postgres
async def test_postgres_start_names_the_database_and_probes_a_write(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    from database_support import fresh_database

    with fresh_database(request, "postgres", tmp_path) as url:
        db = Database(url)
        try:
            first = await establish(db)
            assert await establish(db) == first
            assert await db.readiness(max_age=0) is None
        finally:
            await db.dispose()
        # A database that no longer takes writes (a read-only replica, a full disk): refused.
        name = make_url(url).database
        admin = Database(url)
        try:
            async with admin.transaction() as session:
                await session.execute(
                    text(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
                )
        finally:
            await admin.dispose()
        db = Database(url)
        try:
            with pytest.raises(StorageRefused, match="read-only"):
                await establish(db)
            assert await db.readiness(max_age=0) is not None
        finally:
            await db.dispose()


# --- real processes ------------------------------------------------------------------------------


def _serve(workdir: Path, port: int) -> tuple[list[str], dict[str, str]]:
    env = clean_env(
        AMOBRIDGE_DATABASE__URL=f"sqlite:///{workdir / 'data' / 'amobridge.db'}",
        AMOBRIDGE_SECURITY__ADMIN_API_KEY="amb_storage-test-admin-key-0123456789",
        AMOBRIDGE_SERVER__RUN_WORKERS="false",
    )
    return amobridge("serve", "--port", str(port)), env


def test_a_running_service_survives_its_files_turning_immutable(tmp_path: Path) -> None:
    """Before the guard, writing through SQLite's memory-mapped ``-shm`` of an immutable file
    killed the process with SIGBUS (exit 135, nothing logged)."""
    port = free_port()
    argv, env = _serve(tmp_path, port)
    base = f"http://127.0.0.1:{port}"
    service = spawn("service", argv, env=env, workdir=tmp_path, ready_url=f"{base}/readyz")
    headers = {"X-API-Key": env["AMOBRIDGE_SECURITY__ADMIN_API_KEY"]}
    try:
        with httpx.Client(base_url=base, timeout=10.0, headers=headers) as http:
            assert http.get("/amocrm/connect", params={"owner": "u"}).status_code == 200
            with write_protected(tmp_path / "data" / "amobridge.db"):
                for n in range(20):
                    reply = http.get("/amocrm/connect", params={"owner": f"o{n}"})
                    assert reply.status_code == 503, reply.text
                ready = http.get("/readyz")
                assert ready.status_code == 503
                assert service.popen.poll() is None, service.tail()
            assert http.get("/readyz").status_code == 200
            assert http.get("/amocrm/connect", params={"owner": "w"}).status_code == 200
        assert service.popen.poll() is None, service.tail()
    finally:
        service.stop()


async def test_serve_refuses_a_missing_database_with_one_clear_message(tmp_path: Path) -> None:
    argv, env = _serve(tmp_path, free_port())
    database = tmp_path / "data" / "amobridge.db"
    await _first_start(database)
    for file in _files(database):
        file.unlink()
    done = await asyncio.to_thread(
        subprocess.run, argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert "is missing" in errors[0]
    assert "Traceback" not in done.stderr
    assert not database.exists()
