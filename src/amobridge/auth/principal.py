"""The caller of a request, as every feature sees it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from amobridge.errors import Forbidden, ServiceError

Role = Literal["admin", "app", "user"]
KEY_PREFIX = "amb_"


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
                raise Forbidden("this token belongs to another owner")
            return self.owner
        if not requested or not requested.strip():
            raise ServiceError("owner is required (query parameter or body field 'owner')")
        if len(requested) > 255:
            raise ServiceError("owner is longer than 255 characters")
        return requested
