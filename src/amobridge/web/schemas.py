"""Answers of the operations routes (``/``, ``/healthz``, ``/readyz``) and their examples."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ServiceIndex(BaseModel):
    """Where things are (paths under the proxy's prefix, if any)."""

    model_config = ConfigDict(extra="allow")

    service: Literal["amobridge"]
    version: str
    docs: str
    openapi: str
    health: str
    ready: str
    connect: str
    status: str


class Health(BaseModel):
    """The process is up (no database call)."""

    status: Literal["ok"]
    version: str


class Ready(BaseModel):
    """The service can serve: its database answers."""

    model_config = ConfigDict(extra="allow")

    status: Literal["ready"]
    reason: str | None = Field(None, description="why, when the service says more")
    checks: dict[str, Any] | None = Field(None, description="each check's own answer")


class NotReady(BaseModel):
    """The service cannot serve yet (503): take it out of the load balancer, do not restart it
    for this alone."""

    model_config = ConfigDict(extra="allow")

    status: Literal["unavailable"]
    error: str | None = Field(
        None, description="a code, as in the error body: `storage_unavailable`"
    )
    reason: str | None = Field(None, description="what is not ready")
    detail: str | None = Field(None, description="what failed and what to do")
    checks: dict[str, Any] | None = Field(None, description="each check's own answer")


INDEX_EXAMPLE = {
    "service": "amobridge",
    "version": "0.1.0",
    "docs": "/docs",
    "openapi": "/openapi.json",
    "health": "/healthz",
    "ready": "/readyz",
    "connect": "/amocrm/auth?owner=…",
    "status": "/amocrm/status?owner=…",
}
HEALTH_EXAMPLE = {"status": "ok", "version": "0.1.0"}
READY_EXAMPLE = {"status": "ready"}
NOT_READY_EXAMPLE = {
    "status": "unavailable",
    "error": "storage_unavailable",
    "detail": "the database did not answer a write within 5 s",
}
INDEX_PAGE_EXAMPLE = (
    '<!doctype html><html lang="en"><head><title>amobridge</title></head><body>'
    '<h1>amobridge</h1><a href="/docs">API reference</a></body></html>'
)
