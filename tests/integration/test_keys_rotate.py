"""``amobridge keys rotate`` re-encrypts every stored secret with the new key, so
the old key can be removed and the connections keep working.

The operator's procedure (docs/operating.md): put the new key B in front of the old key A
(``AMOBRIDGE_SECURITY__SECRET_KEYS=B,A``), run ``amobridge keys rotate``, then drop A.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import select
from typer.testing import CliRunner, Result

from amobridge.cli import app
from amobridge.services import Services
from amobridge.storage.crypto import DecryptionError, Keyring, generate_key
from amobridge.storage.rotate import ENCRYPTED


async def cli(database_url: str, keys: list[str], *args: str) -> Result:
    """``amobridge …`` as an operator runs it: settings from the environment only."""
    env = {
        "AMOBRIDGE_ENVIRONMENT": "test",
        "AMOBRIDGE_DATABASE__URL": database_url,
        "AMOBRIDGE_SECURITY__SECRET_KEYS": ",".join(keys),
    }
    # The command runs its own event loop (asyncio.run): give it a thread of its own.
    return await asyncio.to_thread(CliRunner().invoke, app, list(args), env=env)


async def stored_ciphertexts(services: Services) -> list[str]:
    found = []
    async with services.db.transaction() as session:
        for table, columns in ENCRYPTED.items():
            for row in await session.scalars(select(table)):
                found += [getattr(row, c) for c in columns if getattr(row, c)]
    return found


def decrypts_with(key: str, ciphertext: str) -> bool:
    try:
        Keyring([key]).decrypt(ciphertext)
    except DecryptionError:
        return False
    return True


async def pending_button_secret(stack: Any) -> None:
    """Credentials amoCRM POSTed for a button install the user has not finished (kept encrypted
    up to 10 minutes): rotation must cover them too."""
    import re

    page = await stack.http.get(
        "/amocrm/connect", params={"owner": "pending"}, headers=stack.app_headers()
    )
    state = re.search(r'data-state="([^"]+)"', page.text)
    assert state
    reply = await stack.http.post(
        "/amocrm/secrets",
        json={"client_id": "button-client", "client_secret": "s" * 40, "state": state.group(1)},
    )
    assert reply.status_code == 200, reply.text


async def test_rotate_then_drop_the_old_key(
    stack: Any, database_url: str, sandbox_app: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no developer .env
    key_a = stack.settings.security.secret_keys[0].get_secret_value()
    key_b = generate_key()
    assert (await stack.connect("u")).status_code == 200
    await pending_button_secret(stack)
    before = await stored_ciphertexts(stack.services)
    # Access + refresh token, the integration's and the button's secret, the webhook URL secret.
    assert len(before) == 5
    assert all(decrypts_with(key_a, c) for c in before)

    # A wrong key list changes nothing and says why (no traceback, no half-rotated rows).
    wrong = await cli(database_url, [generate_key()], "keys", "rotate")
    assert wrong.exit_code == 2, wrong.output
    assert "cannot be decrypted with any key in AMOBRIDGE_SECURITY__SECRET_KEYS" in wrong.output
    assert "nothing was changed" in wrong.output
    assert "Traceback" not in wrong.output
    assert await stored_ciphertexts(stack.services) == before

    rotated = await cli(database_url, [key_b, key_a], "keys", "rotate")
    assert rotated.exit_code == 0, rotated.output
    assert "re-encrypted 5 values" in rotated.output
    after = await stored_ciphertexts(stack.services)
    assert len(after) == 5
    assert all(decrypts_with(key_b, c) and not decrypts_with(key_a, c) for c in after)
    again = await cli(database_url, [key_b, key_a], "keys", "rotate")
    assert "re-encrypted 0 values" in again.output

    # Key A is gone: the connection still works, and its refresh is stored under B.
    security = stack.settings.security.model_copy(update={"secret_keys": [SecretStr(key_b)]})
    settings = stack.settings.model_copy(update={"security": security})
    services = Services.build(settings, amo_transport=httpx.ASGITransport(app=sandbox_app))
    try:
        async with services.db.transaction() as session:
            row = await services.connections(session).for_owner("u")
        assert row is not None
        await stack.control.post("/_sandbox/tokens/expire", json={})
        account = await (await services.clients.client(row)).account.get()
        assert account.id == stack.account["id"]
        async with services.db.transaction() as session:
            after_refresh = await services.connections(session).for_owner("u")
        assert after_refresh is not None
        assert after_refresh.token_version == row.token_version + 1  # refreshed once
        assert after_refresh.refresh_token_enc is not None
        assert decrypts_with(key_b, after_refresh.refresh_token_enc)
    finally:
        await services.stop()
