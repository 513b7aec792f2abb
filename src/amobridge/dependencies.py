"""Request-scoped dependencies every feature router uses: the service graph and the unit of work.

A router that changes data declares ``session: WriteSession``: the transaction commits when the
path function returns and **before the response is sent** (``scope="function"``), and rolls back
if it raises — so a 2xx always means committed (invariant 1). Services take that session and never
commit. Reads declare ``ReadSession`` (a deferred transaction on SQLite that never takes the write
lock).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

if TYPE_CHECKING:
    from amobridge.services import Services


def get_services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found


async def write_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with get_services(request).db.transaction() as session:
        yield session


async def read_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with get_services(request).db.read() as session:
        yield session


WriteSession = Annotated[AsyncSession, Depends(write_session, scope="function")]
ReadSession = Annotated[AsyncSession, Depends(read_session, scope="function")]
