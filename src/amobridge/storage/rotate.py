"""``amobridge keys rotate``: re-encrypt every stored secret with the primary key, so an old key
can then be removed from AMOBRIDGE_SECURITY__SECRET_KEYS."""

from __future__ import annotations

from sqlalchemy import select

from amobridge.storage.crypto import Keyring
from amobridge.storage.db import Database
from amobridge.storage.tables import (
    ButtonSecret,
    Connection,
    EventSubscription,
    Integration,
    WebhookSubscription,
)

ENCRYPTED = {
    Connection: ("access_token_enc", "refresh_token_enc", "webhook_secret_enc"),
    WebhookSubscription: ("unsubscribe_token_enc",),
    Integration: ("client_secret_enc",),
    ButtonSecret: ("client_secret_enc",),
    EventSubscription: ("secret_enc",),
}


async def rotate_all(db: Database, keyring: Keyring) -> int:
    """Returns how many values were re-encrypted. Runs in one transaction: all or nothing."""
    changed = 0
    async with db.transaction() as session:
        for table, columns in ENCRYPTED.items():
            for row in await session.scalars(select(table)):
                for column in columns:
                    value = getattr(row, column)
                    if value and not keyring.encrypted_with_primary(value):
                        setattr(row, column, keyring.rotate(value))
                        changed += 1
    return changed
