"""The examples of docs/sdk-resources.md run as written, each against a fresh sandbox account."""

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
from sandbox_support import Connected

DOC = Path(__file__).resolve().parents[2] / "docs" / "sdk-resources.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.DOTALL)
IMPORTS, EXAMPLES = BLOCKS[0], BLOCKS[1:]


@pytest.fixture
async def amo(acme: Connected, sandbox_app: Any) -> AsyncIterator[AmoClient]:
    client = AmoClient(
        acme.host,
        token_provider=StaticTokenProvider(acme.tokens["access_token"]),
        transport=httpx.ASGITransport(app=sandbox_app),
        rate_limiter=InMemoryRateLimiter(rate=10_000),
    )
    async with client:
        yield client


def test_the_doc_has_examples() -> None:
    assert "import" in IMPORTS
    assert len(EXAMPLES) >= 5


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"example-{i}" for i in range(len(EXAMPLES))])
async def test_doc_example_runs(example: str, amo: AmoClient) -> None:
    namespace: dict[str, Any] = {}
    source = IMPORTS + "\n\nasync def _example(amo):\n" + textwrap.indent(example, "    ")
    exec(compile(source, str(DOC), "exec"), namespace)  # noqa: S102 - our own documentation
    await namespace["_example"](amo)
