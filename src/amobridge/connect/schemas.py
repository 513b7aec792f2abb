"""Request bodies of the connect routes (validated before any service code runs)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ExchangeCodeBody(_Body):
    code: str = Field(min_length=1, max_length=4096)
    referer: str = Field(min_length=1, max_length=255)
    owner: str | None = Field(None, max_length=255)


class ImportTokensBody(_Body):
    owner: str = Field(min_length=1, max_length=255)
    domain: str = Field(min_length=1, max_length=255, description="acme.amocrm.ru or acme")
    access_token: str = Field(min_length=1, max_length=8192)
    refresh_token: str | None = Field(None, max_length=8192)
    expires_in: int | None = Field(None, ge=1, le=5 * 365 * 86400)
    client_id: str | None = Field(None, max_length=128)
    client_secret: str | None = Field(None, max_length=1024)
    redirect_uri: str | None = Field(None, max_length=2048)
