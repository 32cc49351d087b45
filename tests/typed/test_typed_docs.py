"""The typed-flow and typed-payload examples of the docs run as printed (on SQLite, in memory:
they open their own App) and assert what they show."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs" / "concepts"


def block(page: str, marker: str) -> str:
    text = (DOCS / page).read_text(encoding="utf-8")
    [found] = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if marker in b]
    return found


@pytest.mark.parametrize(
    ("page", "marker"),
    [
        ("flows.md", "class Pricing(Flow[OrderInput])"),
        ("events.md", "command.payload_as(AddStock)"),
    ],
)
def test_the_example_runs_as_printed(page: str, marker: str) -> None:
    namespace: dict[str, Any] = {"__name__": f"docs_{page.removesuffix('.md')}"}
    exec(
        compile(block(page, marker), page, "exec", dont_inherit=True), namespace
    )  # it asserts what it shows
