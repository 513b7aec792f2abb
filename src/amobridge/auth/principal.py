"""The caller of a request, as every feature sees it."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Literal

from amobridge.errors import Forbidden, ServiceError

Role = Literal["admin", "app", "user"]
KEY_PREFIX = "amb_"
# The owner and id columns are VARCHAR(255): PostgreSQL refuses a longer value (SQLite would
# store it), and refuses a NUL byte in any text.
MAX_IDENTIFIER_LENGTH = 255


def identifier_problem(value: str, what: str = "owner") -> str | None:
    """Why ``value`` cannot be an owner or an id (``what`` names it in the message), or None.

    The one check for every owner and id that enters the service — a query parameter, a JWT
    ``sub``, a body field — so each is refused the same way, before any database sees it."""
    if not value.strip():
        return f"{what} must not be blank"
    if len(value) > MAX_IDENTIFIER_LENGTH:
        return f"{what} is longer than {MAX_IDENTIFIER_LENGTH} characters"
    # Cc: NUL and other control characters; Cs: lone surrogates, which no database can encode.
    if any(unicodedata.category(char) in ("Cc", "Cs") for char in value):
        return f"{what} must not contain control characters"
    return None


@dataclass(frozen=True)
class Principal:
    """``admin`` (any owner, token import, operations), ``app`` (a host app acting for the owner
    it names) or ``user`` (an end user's JWT: the owner is fixed by its ``sub``)."""

    role: Role
    name: str
    owner: str | None = None  # fixed for JWT users; None for API keys (they name it per request)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def owner_for(self, requested: str | None) -> str:
        """The owner this call acts for. Users get their own; keys must name one."""
        if self.owner is not None:
            if requested is not None and requested != self.owner:
                raise Forbidden("this token belongs to another owner", code="owner_mismatch")
            return self.owner
        if not requested or not requested.strip():
            raise ServiceError(
                "owner is required (query parameter or body field 'owner')", code="owner_required"
            )
        problem = identifier_problem(requested)
        if problem is not None:
            raise ServiceError(problem, code="invalid_owner")
        return requested
