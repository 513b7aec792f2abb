"""Invariant: nothing ever logs a token or secret.

Every log record of every logger (the root at DEBUG: the service, the SDK, the sandbox,
SQLAlchemy's statements and parameters, httpx) is captured during every flow — redirect connect,
refresh, re-auth of a revoked grant, website button with its secrets webhook, exchange-code,
long-lived import, disconnect, amoCRM's uninstall hook and the error paths — three ways:

- as emitted, before any handler's filter (what a user's own handler, e.g. an error tracker, gets);
- as ``amobridge.logs.configure_logging`` writes it (text and JSON lines);
- as pytest's ``caplog`` holds it;

and searched for every token, code and secret the sandbox issued, the API keys, the encryption
and JWT keys, live OAuth states, and anything that looks like a JWT or a ``def502…`` value.
"""

from __future__ import annotations

import io
import logging
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from _procs import DEF502_IN_TEXT, JWT_LIKE, SERVICE_URL, full_flows, needles, sandbox_secrets

from amobridge.logs import configure_logging


class Snapshot(logging.Handler):
    """Each record's final text as it was emitted, before a later handler's filter masks it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += "\n" + "".join(traceback.format_exception(*record.exc_info))
        if record.stack_info:
            text += "\n" + record.stack_info
        self.records.append((record.name, text))


@dataclass
class Logs:
    raw: Snapshot
    output: io.StringIO
    caplog: pytest.LogCaptureFixture


@pytest.fixture(params=["text", "json"])
def logs(request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture) -> Iterator[Logs]:
    """The service's logging at DEBUG, installed before the stack is built (its start-up logs
    count too), with a snapshot handler in front and caplog's handler behind."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    configure_logging("DEBUG", json_lines=request.param == "json")
    [handler] = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    output = io.StringIO()
    handler.setStream(output)
    raw = Snapshot()
    root.handlers.insert(0, raw)
    root.addHandler(caplog.handler)
    caplog.set_level(logging.DEBUG)
    # SQLAlchemy keeps its loggers at WARNING unless asked (as an operator debugging would):
    # its statements and their parameters are searched too.
    caplog.set_level(logging.DEBUG, logger="sqlalchemy")
    try:
        yield Logs(raw, output, caplog)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def browser_callback(name: str, text: str) -> bool:
    """The test's own HTTP client standing in for the user's browser: it requests the callback
    URL amoCRM built, authorization code included, and httpx logs that URL. (In production the
    same line is uvicorn's access log, which goes through ``configure_logging``'s handler.)"""
    return name == "httpx" and f"{SERVICE_URL}/amocrm/callback?" in text


def found(text: str, search: set[str]) -> list[str]:
    hits = [needle[:6] + "…" for needle in search if needle in text]
    hits += [m[:6] + "…" for m in JWT_LIKE.findall(text) + DEF502_IN_TEXT.findall(text)]
    return hits


async def test_no_token_or_secret_in_any_log(logs: Logs, stack: Any) -> None:
    extra = await full_flows(stack)
    secrets = sandbox_secrets(stack.sandbox) | set(extra.values())
    secrets |= {k.get_secret_value() for k in stack.settings.security.secret_keys}
    jwt_secret = stack.settings.security.jwt_secret
    assert jwt_secret is not None
    secrets.add(jwt_secret.get_secret_value())
    search = needles(secrets)

    # The capture saw the flows: the service, the SDK, SQLAlchemy and the sandbox all logged.
    names = {name.split(".")[0] for name, _ in logs.raw.records}
    assert {"amobridge", "sqlalchemy", "httpx"} <= names, names
    output = logs.output.getvalue()
    assert "refreshed amoCRM tokens" in output
    assert "needs re-authorization" in output

    # The search finds secrets where they are: the browser's callback URLs carry the codes.
    browser = [text for name, text in logs.raw.records if browser_callback(name, text)]
    assert browser
    assert any(found(text, search) for text in browser)

    # As emitted, by the service, the SDK, the sandbox, SQLAlchemy (statements and parameters)
    # and every other logger: nothing.
    leaks = [
        (name, found(text, search))
        for name, text in logs.raw.records
        if not browser_callback(name, text) and found(text, search)
    ]
    assert leaks == []
    # As written by configure_logging's handler (masked even where the browser's URL had a
    # code), and as caplog holds them: nothing.
    assert found(output, search) == []
    assert found(logs.caplog.text, search) == []
    assert [
        found(r.getMessage(), search) for r in logs.caplog.records if found(r.getMessage(), search)
    ] == []
