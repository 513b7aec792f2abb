"""The token pair: :class:`TokenSet`, as stored and as read from the token endpoint's reply."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from amobridge.amo._logging import mask_token
from amobridge.amo.domains import token_claims

DEFAULT_ACCESS_TTL = 86400
"""Lifetime assumed for an access token whose reply gives neither ``expires_in`` nor ``exp``."""


@dataclass(frozen=True, repr=False)
class TokenSet:
    """An access token and (OAuth) its refresh token. Times are unix seconds on our clock.

    ``domain`` is the account host the pair belongs to (it changes after subdomain discovery);
    ``issued_at`` lets the provider cap the refresh leeway at half the lifetime; ``server_time`` is
    Kommo's clock at issue, when sent. ``repr`` shows token prefixes only.
    """

    access_token: str
    refresh_token: str | None = None
    expires_at: float = 0.0
    token_type: str = "Bearer"  # noqa: S105 - the token scheme, not a secret
    server_time: int | None = None
    issued_at: float | None = None
    domain: str | None = None

    def __repr__(self) -> str:
        return (
            f"TokenSet(access_token={mask_token(self.access_token)!r}, "
            f"refresh_token={mask_token(self.refresh_token)!r}, expires_at={self.expires_at!r}, "
            f"token_type={self.token_type!r}, domain={self.domain!r})"
        )

    def expires_within(self, seconds: float, *, now: float) -> bool:
        return self.expires_at - now <= seconds

    def to_dict(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "expires_at": self.expires_at,
            "token_type": self.token_type,
            "server_time": self.server_time,
            "issued_at": self.issued_at,
            "domain": self.domain,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TokenSet:
        access = data.get("access_token")
        if not isinstance(access, str) or not access:
            raise ValueError("a stored token set needs an access_token")
        refresh = data.get("refresh_token")
        server_time = data.get("server_time")
        issued_at = data.get("issued_at")
        domain = data.get("domain")
        return cls(
            access_token=access,
            refresh_token=refresh if isinstance(refresh, str) and refresh else None,
            expires_at=float(data.get("expires_at") or 0.0),
            token_type=str(data.get("token_type") or "Bearer"),
            server_time=int(server_time) if isinstance(server_time, int | float) else None,
            issued_at=float(issued_at) if isinstance(issued_at, int | float) else None,
            domain=domain if isinstance(domain, str) and domain else None,
        )

    @classmethod
    def from_token_response(
        cls,
        body: Any,
        *,
        now: float,
        domain: str | None = None,
        previous_refresh_token: str | None = None,
    ) -> TokenSet:
        """The pair in a 200 reply of ``/oauth2/access_token``. ``expires_in`` counts from ``now``
        (our clock, so clock skew with amoCRM does not matter); a reply without a refresh token
        keeps ``previous_refresh_token``."""
        if not isinstance(body, dict):
            raise ValueError("the token endpoint's reply is not a JSON object")
        access = body.get("access_token")
        if not isinstance(access, str) or not access:
            raise ValueError("the token endpoint's reply has no access_token")
        refresh = body.get("refresh_token")
        if not isinstance(refresh, str) or not refresh:
            refresh = previous_refresh_token
        expires_in = body.get("expires_in")
        if isinstance(expires_in, int | float) and not isinstance(expires_in, bool):
            expires_at = now + float(expires_in)
        else:
            exp = token_claims(access).get("exp")
            expires_at = float(exp) if isinstance(exp, int | float) else now + DEFAULT_ACCESS_TTL
        server_time = body.get("server_time")
        return cls(
            access_token=access,
            refresh_token=refresh,
            expires_at=expires_at,
            token_type=str(body.get("token_type") or "Bearer"),
            server_time=int(server_time) if isinstance(server_time, int | float) else None,
            issued_at=now,
            domain=domain,
        )
