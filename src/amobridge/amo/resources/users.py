"""``/api/v4/users``: the account's users."""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Sequence

from amobridge.amo.models.account import User
from amobridge.amo.models.base import Page
from amobridge.amo.resources.base import DEFAULT_PAGE_LIMIT, Resource, with_param


class UsersResource(Resource):
    async def list(
        self, *, page: int = 1, limit: int = DEFAULT_PAGE_LIMIT, with_: Sequence[str] = ()
    ) -> Page[User]:
        """One page of users; ``with_`` may ask for ``role``, ``group``, ``uuid``, ``amojo_id``."""
        return await self._page(
            "users", "users", User, page=page, limit=limit, params={"with": with_param(with_)}
        )

    async def iterate(
        self, *, limit: int = DEFAULT_PAGE_LIMIT, with_: Sequence[str] = ()
    ) -> AsyncIterator[User]:
        """Every user, page after page."""

        async def fetch(number: int) -> Page[User]:
            return await self.list(page=number, limit=limit, with_=with_)

        async for user in self._iterate(fetch):
            yield user

    async def all(self, *, with_: Sequence[str] = ()) -> builtins.list[User]:
        """Every user, as a list."""
        return [user async for user in self.iterate(with_=with_)]

    async def get(self, user_id: int, *, with_: Sequence[str] = ()) -> User | None:
        """One user; None when amoCRM has no such user (204)."""
        return await self._get(f"users/{int(user_id)}", User, {"with": with_param(with_)})
