"""``GET /api/v4/account``: the account the token belongs to."""

from __future__ import annotations

from collections.abc import Sequence

from amobridge.amo.models.account import Account
from amobridge.amo.resources.base import Resource, parse_model, unexpected_reply, with_param


class AccountResource(Resource):
    async def get(self, *, with_: Sequence[str] = ()) -> Account:
        """The account; ``with_`` asks for parts such as ``users_groups``, ``task_types``,
        ``amojo_id``, ``datetime_settings`` (they land on ``Account.embedded`` or as fields)."""
        parts = with_param(with_)
        reply = await self._requester.request_json(
            "GET", "account", params={"with": parts} if parts else None
        )
        if reply is None:
            raise unexpected_reply("GET", "account", "an empty reply")
        return parse_model(Account, reply, method="GET", path="account")
