"""The seam between the HTTP pipeline (``client.py``) and the endpoint resources (``resources/``).

Resources build paths, params and bodies and turn replies into models; the requester owns
everything else (base URL, tokens and refresh, rate limit, retries, errors, logging). Tests of a
resource can pass any object with this method.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Protocol

# How a request may be retried after a failure whose outcome is unknown:
# - "safe": reads and idempotent writes (PATCH of known ids, DELETE): retried with backoff.
# - "create": a POST that creates entities: never blindly re-sent after the body may have left;
#   an unknown outcome raises AmoAmbiguousWrite (carrying the request_ids sent) instead.
RetryMode = Literal["safe", "create"]


class Requester(Protocol):
    async def request_json(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        retry: RetryMode = "safe",
    ) -> Any:
        """Send one API request (``path`` relative to ``/api/v4/``, e.g. ``"leads"``).

        Returns the decoded JSON of a 2xx reply, or None for 204 (amoCRM's "empty" / "missing").
        Raises an ``AmoError`` subclass for everything else.
        """
        ...
