"""The request's unit of work: a 2xx means committed, a failure rolls back (invariant 1)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import httpx
from fastapi import FastAPI

from amobridge.dependencies import ReadSession, WriteSession
from amobridge.web.errors import install_error_handlers


class FakeDatabase:
    def __init__(self, *, commit_fails: bool = False) -> None:
        self.commit_fails = commit_fails
        self.events: list[str] = []

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        self.events.append("begin")
        try:
            yield SimpleNamespace(kind="write")
        except BaseException:
            self.events.append("rollback")
            raise
        if self.commit_fails:
            self.events.append("commit failed")
            raise OSError("disk I/O error")
        self.events.append("commit")

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[Any]:
        self.events.append("read")
        yield SimpleNamespace(kind="read")
        self.events.append("read done")


def make_app(db: FakeDatabase) -> FastAPI:
    app = FastAPI()
    app.state.services = SimpleNamespace(db=db)
    install_error_handlers(app)

    @app.post("/write")
    async def write(session: WriteSession) -> dict[str, str]:
        db.events.append(f"handler:{session.kind}")
        return {"ok": "yes"}

    @app.post("/fail")
    async def fail(session: WriteSession) -> dict[str, str]:
        raise ValueError("boom")

    @app.get("/read")
    async def read(session: ReadSession) -> dict[str, str]:
        db.events.append(f"handler:{session.kind}")
        return {"ok": "yes"}

    return app


async def call(app: FastAPI, method: str, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await client.request(method, path)


async def test_the_commit_happens_before_the_response() -> None:
    db = FakeDatabase()
    reply = await call(make_app(db), "POST", "/write")
    assert reply.status_code == 200
    assert db.events == ["begin", "handler:write", "commit"]


async def test_a_failed_commit_is_never_answered_with_a_2xx() -> None:
    """Had the commit run after the response was sent, the caller would have seen 200 for data
    that was never stored."""
    db = FakeDatabase(commit_fails=True)
    reply = await call(make_app(db), "POST", "/write")
    assert reply.status_code == 500
    assert db.events[-1] == "commit failed"


async def test_an_error_in_the_handler_rolls_back() -> None:
    db = FakeDatabase()
    reply = await call(make_app(db), "POST", "/fail")
    assert reply.status_code == 500
    assert db.events == ["begin", "rollback"]


async def test_a_read_uses_the_read_unit() -> None:
    db = FakeDatabase()
    reply = await call(make_app(db), "GET", "/read")
    assert reply.status_code == 200
    assert db.events == ["read", "handler:read", "read done"]
