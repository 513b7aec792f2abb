"""Authorization codes, access and refresh tokens, with amoCRM's lifetimes and rules.

- A code lives ``code_ttl`` (20 min) and can be exchanged once.
- An access token is an RS256 JWT with amoCRM's claims, ``expires_in`` = ``access_ttl`` (24 h).
- A refresh token lives ``refresh_ttl`` (3 months) and is **single-use**: each refresh spends it
  and returns a new pair; presenting a spent one answers 401 ``Token has been revoked``.
- Long-lived tokens (private integrations) have no refresh token.

Errors are :class:`OAuthError`, rendered by the HTTP layer with amoCRM's ``OAuthProblemJson`` body.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from amobridge.sandbox.config import SandboxConfig
from amobridge.sandbox.state import (
    AccessToken,
    Account,
    AuthCode,
    Integration,
    RefreshToken,
    SandboxState,
)

OAUTH_PROBLEM_TYPE = "https://developers.amocrm.ru/v3/errors/OAuthProblemJson"


class OAuthError(Exception):
    """A token-endpoint failure with amoCRM's problem body."""

    def __init__(self, status: int, hint: str | None, *, title: str, detail: str) -> None:
        super().__init__(hint or detail)
        self.status = status
        self.hint = hint
        self.title = title
        self.detail = detail

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if self.hint is not None:
            body["hint"] = self.hint
        body.update({"title": self.title, "type": OAUTH_PROBLEM_TYPE, "status": self.status})
        body["detail"] = self.detail
        return body

    @classmethod
    def bad_request(cls, hint: str) -> OAuthError:
        return cls(
            400,
            hint,
            title="Некорректный запрос",
            detail="В запросе отсутствует ряд параметров или параметры невалидны",
        )

    @classmethod
    def bad_client(cls) -> OAuthError:
        return cls(401, None, title="Некорректный клиент", detail="Авторизация клиента не прошла")

    @classmethod
    def revoked(cls) -> OAuthError:
        return cls(
            401,
            "Token has been revoked",
            title="Некорректный запрос",
            detail="В запросе отсутствует ряд параметров или параметры невалидны",
        )


def fingerprint(token: str) -> str:
    """A stable, non-reversible label for a token: what the request log shows instead of it."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def generate_signing_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def api_domain_for(base_domain: str) -> str:
    return {"amocrm.ru": "api-b.amocrm.ru", "amocrm.com": "api-c.amocrm.com"}.get(
        base_domain, f"api-c.{base_domain}"
    )


@dataclass
class TokenPair:
    access: AccessToken
    refresh: RefreshToken | None

    def response(self, config: SandboxConfig, server_time: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "token_type": "Bearer",
            "expires_in": round(self.access.expires_at - self.access.issued_at),
            "access_token": self.access.token,
        }
        if self.refresh is not None:
            body["refresh_token"] = self.refresh.token
        if config.include_server_time:
            body["server_time"] = server_time
        return body


class TokenAuthority:
    """Issues and checks every credential of one sandbox."""

    def __init__(
        self,
        state: SandboxState,
        config_getter: Any,
        signing_key: rsa.RSAPrivateKey | None = None,
    ) -> None:
        self._state = state
        self._config = config_getter  # callable returning the current SandboxConfig
        self._key = signing_key or generate_signing_key()
        self._key_id = uuid.uuid4().hex[:16]

    @property
    def config(self) -> SandboxConfig:
        cfg: SandboxConfig = self._config()
        return cfg

    def public_key_pem(self) -> str:
        return (
            self._key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    # --- codes ----------------------------------------------------------------------------------
    def issue_code(self, integration: Integration, account: Account, user_id: int) -> AuthCode:
        now = self._state.clock.now()
        code = AuthCode(
            code="def50200" + secrets.token_hex(160),
            client_id=integration.client_id,
            account_id=account.id,
            user_id=user_id,
            issued_at=now,
            expires_at=now + self.config.code_ttl,
        )
        self._state.codes[code.code] = code
        integration.installs[account.id] = True
        return code

    def exchange_code(
        self,
        *,
        client_id: str,
        client_secret: str,
        code: str,
        redirect_uri: str | None,
        host_account: Account | None,
    ) -> TokenPair:
        integration = self._client(client_id, client_secret)
        found = self._state.codes.get(code)
        if found is None:
            raise OAuthError.bad_request("Cannot decrypt the authorization code")
        if found.client_id != integration.client_id:
            raise OAuthError.bad_request("Authorization code was not issued to this client")
        if host_account is not None and host_account.id != found.account_id:
            raise OAuthError.bad_request("Invalid account")
        if found.used:
            raise OAuthError.bad_request("Authorization code has been revoked")
        if self._state.clock.now() >= found.expires_at:
            raise OAuthError.bad_request("Authorization code has expired")
        if redirect_uri != integration.redirect_uri:
            raise OAuthError.bad_request("Redirect URI is not associated with client")
        if not integration.installs.get(found.account_id, False):
            raise OAuthError.bad_request("Authorization code has been revoked")
        found.used = True
        return self._issue_pair(integration, found.account_id, found.user_id, grant_type="")

    # --- refresh --------------------------------------------------------------------------------
    def refresh(
        self,
        *,
        client_id: str,
        client_secret: str,
        refresh_token: str,
        redirect_uri: str | None,
        host_account: Account | None,
    ) -> TokenPair:
        integration = self._client(client_id, client_secret)
        found = self._state.refresh_tokens.get(refresh_token)
        if found is None or found.client_id != integration.client_id:
            raise OAuthError.bad_request("Cannot decrypt the refresh token")
        if host_account is not None and host_account.id != found.account_id:
            raise OAuthError.bad_request("Invalid account")
        if found.spent_at is not None or found.revoked:
            raise OAuthError.revoked()
        if self._state.clock.now() >= found.expires_at:
            raise OAuthError.bad_request("Token has expired")
        if redirect_uri != integration.redirect_uri:
            raise OAuthError.bad_request("Redirect URI is not associated with client")
        if not integration.installs.get(found.account_id, False):
            raise OAuthError.revoked()
        found.spent_at = self._state.clock.now()
        if self.config.revoke_old_access_on_refresh:
            for access in self._state.access_tokens.values():
                if access.jti == found.access_jti:
                    access.revoked = True
                    break
        return self._issue_pair(
            integration, found.account_id, found.user_id, grant_type="refresh_token"
        )

    # --- long-lived -----------------------------------------------------------------------------
    def issue_long_lived(
        self, integration: Integration, account: Account, ttl_seconds: int
    ) -> AccessToken:
        integration.installs[account.id] = True
        now = self._state.clock.now()
        return self._issue_access(
            integration, account, account.admin_user_id, now, now + ttl_seconds, long_lived=True
        )

    # --- revocation -----------------------------------------------------------------------------
    def revoke_integration(self, client_id: str, account_id: int) -> int:
        """Revoke every token of ``client_id`` in ``account_id``; returns how many."""
        count = 0
        for access in self._state.access_tokens.values():
            if access.client_id == client_id and access.account_id == account_id:
                if not access.revoked:
                    count += 1
                access.revoked = True
        for refresh in self._state.refresh_tokens.values():
            if refresh.client_id == client_id and refresh.account_id == account_id:
                refresh.revoked = True
        for code in self._state.codes.values():
            if code.client_id == client_id and code.account_id == account_id:
                code.used = True
        return count

    def expire_tokens(self, *, account_id: int | None = None, client_id: str | None = None) -> int:
        """Make matching access tokens expired now (tests of the refresh path)."""
        now = self._state.clock.now()
        count = 0
        for access in self._state.access_tokens.values():
            if account_id is not None and access.account_id != account_id:
                continue
            if client_id is not None and access.client_id != client_id:
                continue
            if access.expires_at > now:
                access.expires_at = now
                count += 1
        return count

    # --- checking -------------------------------------------------------------------------------
    def authenticate(self, token: str) -> AccessToken | None:
        """The live access token for a Bearer value, or None (expired, revoked or unknown)."""
        access = self._state.access_tokens.get(token)
        if access is None or access.revoked:
            return None
        if self._state.clock.now() >= access.expires_at:
            return None
        integration = self._state.integrations.get(access.client_id)
        if integration is None or not integration.installs.get(access.account_id, False):
            return None
        return access

    def decode(self, token: str) -> dict[str, Any]:
        claims: dict[str, Any] = jwt.decode(
            token,
            self._key.public_key(),
            algorithms=["RS256"],
            options={
                "verify_exp": False,
                "verify_aud": False,
                "verify_nbf": False,
                "verify_iat": False,
            },
        )
        return claims

    # --- internals ------------------------------------------------------------------------------
    def _client(self, client_id: str, client_secret: str) -> Integration:
        integration = self._state.integrations.get(client_id)
        if integration is None:
            raise OAuthError.bad_request("Check the `client_id` parameter")
        if not secrets.compare_digest(integration.client_secret, client_secret):
            raise OAuthError.bad_client()
        return integration

    def _issue_pair(
        self, integration: Integration, account_id: int, user_id: int, *, grant_type: str
    ) -> TokenPair:
        account = self._state.accounts[account_id]
        now = self._state.clock.now()
        access = self._issue_access(
            integration, account, user_id, now, now + self.config.access_ttl, grant_type=grant_type
        )
        refresh = RefreshToken(
            token="def50200" + secrets.token_hex(240),
            client_id=integration.client_id,
            account_id=account_id,
            user_id=user_id,
            issued_at=now,
            expires_at=now + self.config.refresh_ttl,
            access_jti=access.jti,
        )
        self._state.refresh_tokens[refresh.token] = refresh
        return TokenPair(access, refresh)

    def _issue_access(
        self,
        integration: Integration,
        account: Account,
        user_id: int,
        issued_at: float,
        expires_at: float,
        *,
        long_lived: bool = False,
        grant_type: str = "",
    ) -> AccessToken:
        jti = str(uuid.uuid4())
        claims = {
            "aud": integration.client_id,
            "jti": jti,
            "iat": int(issued_at),
            "nbf": int(issued_at),
            "exp": int(expires_at),
            "sub": str(user_id),
            "grant_type": "" if long_lived else grant_type,
            "account_id": account.id,
            "base_domain": account.base_domain,
            "version": 2,
            "scopes": list(integration.scopes),
            "hash_uuid": str(uuid.uuid4()),
            "user_flags": 0,
            "api_domain": api_domain_for(account.base_domain),
        }
        token = jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self._key_id})
        access = AccessToken(
            token=token,
            jti=jti,
            client_id=integration.client_id,
            account_id=account.id,
            user_id=user_id,
            issued_at=issued_at,
            expires_at=expires_at,
            long_lived=long_lived,
            scopes=list(integration.scopes),
        )
        self._state.access_tokens[token] = access
        return access
