"""PostgreSQL ``LISTEN`` on a connection of its own (outside the pools: a pooled connection
would be handed to others and lose its subscription), kept open and re-opened after a failure.

The channel's payloads are not read, only their arrival: ``on_notify()`` is called for each, and
once after every (re)connect, since anything sent while no one listened was missed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

log = logging.getLogger("amobridge.storage")

RECONNECT_FIRST = 0.5
RECONNECT_MAX = 30.0


def libpq_url(url: str) -> str:
    """A SQLAlchemy PostgreSQL URL as libpq takes it (``postgresql://…``, no driver name)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def listen(
    url: str,
    channel: str,
    on_notify: Callable[[], object],
    *,
    on_listening: Callable[[], object] | None = None,
) -> None:
    """Listen on ``channel`` until cancelled, re-connecting with a growing pause on failure."""
    wait = RECONNECT_FIRST
    conninfo = libpq_url(url)
    while True:
        try:
            connection = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
            async with connection:
                await connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                wait = RECONNECT_FIRST
                if on_listening is not None:
                    on_listening()
                on_notify()
                async for _notice in connection.notifies():
                    on_notify()
        except (psycopg.Error, OSError) as exc:
            # The reason without the URL (it may hold a password): the driver's first line.
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            log.warning(
                "job wake-ups: LISTEN %s failed (%s); polling until it is back", channel, reason
            )
        await asyncio.sleep(wait)
        wait = min(wait * 2, RECONNECT_MAX)
