"""The :class:`TokenProvider` protocol AmoClient asks for credentials, and the simplest provider,
:class:`StaticTokenProvider` (a long-lived token). OAuth lives in :mod:`amobridge.amo.auth.oauth`."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from amobridge.amo._logging import mask_token
from amobridge.amo.domains import token_claims
from amobridge.amo.errors import AmoReauthRequired


@runtime_checkable
class TokenProvider(Protocol):
    """What :class:`~amobridge.amo.client.AmoClient` asks for credentials.

    ``get_token()`` returns an access token good to use now; ``refresh(stale_token)`` is called
    after amoCRM answered 401 to ``stale_token`` and returns a newer one, or raises
    :class:`AmoReauthRequired`. Optional attributes the client reads: ``integration_id`` (the
    rate-limit key) and ``domain`` (an :class:`AccountDomain` that discovery may change).
    """

    async def get_token(self) -> str: ...

    async def refresh(self, stale_token: str) -> str: ...


class StaticTokenProvider:
    """A long-lived token (private integrations): no refresh; a 401 means it expired or was
    revoked, which raises :class:`AmoReauthRequired`."""

    def __init__(self, token: str) -> None:
        if not token or not token.strip():
            raise ValueError("StaticTokenProvider needs a token")
        self._token = token.strip()
        aud = token_claims(self._token).get("aud")
        self.integration_id: str | None = aud if isinstance(aud, str) else None

    def __repr__(self) -> str:
        return f"StaticTokenProvider({mask_token(self._token)!r})"

    async def get_token(self) -> str:
        return self._token

    async def refresh(self, stale_token: str) -> str:
        raise AmoReauthRequired(
            "amoCRM refused the long-lived token (expired or revoked). Generate a new one on the "
            'integration\'s Keys tab ("Сгенерировать токен") and configure it.',
            status=401,
        )
