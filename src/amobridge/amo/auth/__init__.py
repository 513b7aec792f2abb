"""Tokens: where they live, how they are refreshed, and the one rule that keeps a grant alive.

amoCRM's refresh token is **single-use**: each refresh returns a new pair and spends the
old one. Two refreshes with the same token race and one loses; a pair that is received but not
stored is lost for good. So :class:`OAuthTokenProvider`:

- refreshes **single-flight**: one in-process refresh at a time (every concurrent caller awaits the
  same task), inside the store's ``lock(key)`` (cross-process in the service), and re-reads the
  store under that lock: if the stored token differs from the caller's stale one, someone else
  refreshed and the stored pair is reused without calling amoCRM;
- **saves the new pair before anyone uses it**. If the save fails it raises
  :class:`AmoTokenStoreError` and keeps the pair in memory ("pending save"); the next call retries
  the save first, so the grant survives a flaky store. A pair is never used unsaved: the process
  could die and lose it. (A pair pending when the process exits is lost: use a durable store.) The
  refresh-and-save runs shielded from cancellation of the caller;
- refreshes **before expiry** (``leeway``, 5 min by default; at most half the token's lifetime)
  and when the API answers 401;
- turns any 400/401 from the token endpoint (``Token has been revoked``, ``invalid_grant``, …) into
  :class:`AmoReauthRequired`, once: until different tokens are stored, later calls raise it again
  without touching the network. ``Invalid account`` (or 404) triggers one subdomain discovery and
  one retry on the discovered host.

Stores implement :class:`TokenStore`: ``load``, ``save`` and ``lock`` (the lock hook the service
implements across processes). Shipped: :class:`InMemoryTokenStore` and :class:`JsonFileTokenStore`.

The package: :mod:`~amobridge.amo.auth.tokens` (the pair), :mod:`~amobridge.amo.auth.stores`,
:mod:`~amobridge.amo.auth.endpoint` (the token endpoint, :func:`exchange_code`),
:mod:`~amobridge.amo.auth.providers` (the protocol, the static provider) and
:mod:`~amobridge.amo.auth.oauth` (:class:`OAuthTokenProvider`).
"""

from __future__ import annotations

from amobridge.amo.auth.endpoint import TOKEN_PATH, exchange_code
from amobridge.amo.auth.oauth import DEFAULT_LEEWAY, OAuthTokenProvider
from amobridge.amo.auth.providers import StaticTokenProvider, TokenProvider
from amobridge.amo.auth.stores import InMemoryTokenStore, JsonFileTokenStore, TokenStore
from amobridge.amo.auth.tokens import DEFAULT_ACCESS_TTL, TokenSet

__all__ = [
    "DEFAULT_ACCESS_TTL",
    "DEFAULT_LEEWAY",
    "TOKEN_PATH",
    "InMemoryTokenStore",
    "JsonFileTokenStore",
    "OAuthTokenProvider",
    "StaticTokenProvider",
    "TokenProvider",
    "TokenSet",
    "TokenStore",
    "exchange_code",
]
