"""The examples of docs/sdk.md run as written, each against a fresh sandbox account."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox_support import Connected

DOC = Path(__file__).resolve().parents[2] / "docs" / "sdk.md"
EXAMPLES = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.DOTALL)


def test_the_doc_has_examples() -> None:
    assert len(EXAMPLES) >= 8


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"example-{i}" for i in range(len(EXAMPLES))])
async def test_doc_example_runs(
    example: str, acme: Connected, sandbox_app: Any, control: httpx.AsyncClient, tmp_path: Path
) -> None:
    token = (
        await control.post(
            "/_sandbox/long-lived-tokens",
            json={"client_id": acme.integration["client_id"], "account_id": acme.account_id},
        )
    ).json()["access_token"]
    code = (
        await control.post(
            "/_sandbox/authorize",
            json={"client_id": acme.integration["client_id"], "account_id": acme.account_id},
        )
    ).json()["code"]
    namespace: dict[str, Any] = {
        "TRANSPORT": httpx.ASGITransport(app=sandbox_app),
        "DOMAIN": acme.host,
        "TOKEN": token,
        "CLIENT_ID": acme.integration["client_id"],
        "CLIENT_SECRET": acme.integration["client_secret"],
        "REDIRECT_URI": acme.integration["redirect_uri"],
        "CODE": code,
        "TOKEN_FILE": tmp_path / "tokens.json",
    }
    source = "async def _example():\n" + textwrap.indent(example, "    ")
    exec(compile(source, str(DOC), "exec"), namespace)  # noqa: S102 - our own documentation
    await namespace["_example"]()
