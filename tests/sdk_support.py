"""Helpers of the SDK unit tests (``from sdk_support import …``): a syntactically valid JWT-shaped
token, a recorder for backoff waits, and an amoCRM-style problem reply."""

from __future__ import annotations

from typing import Any

import httpx

TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJhYmMifQ.c2lnbmF0dXJl"


class Recorder:
    """Records backoff waits instead of waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def problem(status: int, detail: str, **extra: Any) -> httpx.Response:
    body = {"title": "x", "type": f"https://httpstatus.es/{status}", "status": status}
    body.update(detail=detail, **extra)
    return httpx.Response(status, json=body, headers={"content-type": "application/problem+json"})
