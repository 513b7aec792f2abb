"""The webhook and phone examples of docs/sdk-webhooks.md run as written."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

DOC = Path(__file__).resolve().parents[3] / "docs" / "sdk-webhooks.md"
TEXT = DOC.read_text(encoding="utf-8")
BLOCK = re.compile(r"```python\n(.*?)```", flags=re.DOTALL)
IMPORTS = BLOCK.findall(TEXT)[0]


def section(title: str) -> list[str]:
    """The python blocks under the ``## title`` heading (up to the next ``## ``)."""
    start = TEXT.index(f"\n## {title}\n")
    end = TEXT.find("\n## ", start + 1)
    return BLOCK.findall(TEXT[start : end if end != -1 else None])


EXAMPLES = section("Webhooks") + section("Phones and e-mails")


def test_the_doc_has_examples() -> None:
    assert "parse_webhook" in IMPORTS
    assert len(EXAMPLES) >= 5


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"example-{i}" for i in range(len(EXAMPLES))])
async def test_doc_example_runs(example: str) -> None:
    namespace: dict[str, Any] = {}
    source = IMPORTS + "\n\nasync def _example():\n" + textwrap.indent(example, "    ")
    exec(compile(source, str(DOC), "exec"), namespace)  # noqa: S102 - our own documentation
    await namespace["_example"]()
