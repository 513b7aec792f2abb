"""``/api/v4/webhooks``: webhook *subscriptions* (where amoCRM POSTs changes). Parsing what it
POSTs is :mod:`amobridge.amo.webhooks`."""

from __future__ import annotations

import builtins
from collections.abc import Sequence

from amobridge.amo.errors import AmoNotFound
from amobridge.amo.models.webhooks import WebhookSubscription
from amobridge.amo.resources.base import (
    Resource,
    embedded_items,
    encode_params,
    parse_model,
    unexpected_reply,
)

PATH = "webhooks"


class WebhooksResource(Resource):
    """Managing webhooks needs an account administrator's token (others get 403)."""

    async def list(self, *, destination: str | None = None) -> builtins.list[WebhookSubscription]:
        """The account's subscriptions, or only ``destination``'s."""
        params = encode_params({"filter": {"destination": destination}})
        reply = await self._requester.request_json("GET", PATH, params=params or None)
        return [
            parse_model(WebhookSubscription, item, method="GET", path=PATH)
            for item in embedded_items(reply, "webhooks", method="GET", path=PATH)
        ]

    async def subscribe(
        self, destination: str, settings: Sequence[str], *, sort: int | None = None
    ) -> WebhookSubscription:
        """Subscribe ``destination`` to the events ``settings`` (``add_lead``, ``status_lead``,
        ``update_contact``, …). Subscribing a known destination updates it (so retrying is safe)."""
        if isinstance(settings, str) or not settings:
            raise ValueError('settings is a non-empty list of events, e.g. ["add_lead"]')
        body: dict[str, object] = {"destination": destination, "settings": list(settings)}
        if sort is not None:
            body["sort"] = sort
        reply = await self._requester.request_json("POST", PATH, json=body, retry="safe")
        if not isinstance(reply, dict):
            raise unexpected_reply("POST", PATH, "no subscription in the reply")
        return parse_model(WebhookSubscription, reply, method="POST", path=PATH)

    async def unsubscribe(self, destination: str) -> bool:
        """Remove ``destination``'s subscription: True if it existed, False if there was none
        (so a retried unsubscribe is not an error)."""
        try:
            await self._requester.request_json(
                "DELETE", PATH, json={"destination": destination}, retry="safe"
            )
        except AmoNotFound:
            return False
        return True
