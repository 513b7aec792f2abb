"""The finder examples of docs/sdk-webhooks.md run as written, against a fresh sandbox account."""

from __future__ import annotations

import re
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from amobridge.amo.auth import StaticTokenProvider
from amobridge.amo.client import AmoClient
from amobridge.amo.ratelimit import InMemoryRateLimiter

DOC = Path(__file__).resolve().parents[2] / "docs" / "sdk-webhooks.md"
TEXT = DOC.read_text(encoding="utf-8")
BLOCK = re.compile(r"```python\n(.*?)```", flags=re.DOTALL)
IMPORTS = BLOCK.findall(TEXT)[0]
EXAMPLES = BLOCK.findall(TEXT[TEXT.index("\n## Finding leads\n") :])


@pytest.fixture
async def amo(acme: Any, sandbox_app: Any) -> AsyncIterator[AmoClient]:
    client = AmoClient(
        acme.host,
        token_provider=StaticTokenProvider(acme.tokens["access_token"]),
        transport=httpx.ASGITransport(app=sandbox_app),
        rate_limiter=InMemoryRateLimiter(rate=10_000),
    )
    async with client:
        yield client


def test_the_doc_has_finder_examples() -> None:
    assert "find_lead_by_phone" in IMPORTS
    assert EXAMPLES


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"example-{i}" for i in range(len(EXAMPLES))])
async def test_doc_example_runs(example: str, amo: AmoClient) -> None:
    namespace: dict[str, Any] = {}
    source = IMPORTS + "\n\nasync def _example(amo):\n" + textwrap.indent(example, "    ")
    exec(compile(source, str(DOC), "exec"), namespace)  # noqa: S102 - our own documentation
    await namespace["_example"](amo)
