"""Python blocks of the docs that run as written (issues 7 and 9; the others say they are
fragments)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs" / "concepts"


def python_blocks(page: str) -> list[str]:
    text = (DOCS / page).read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_max_stalls_example_defines_what_it_says() -> None:
    [block] = [b for b in python_blocks("flows.md") if "max_stalls=5" in b]
    namespace: dict[str, Any] = {}
    exec(compile(block, "flows.md", "exec"), namespace)
    definition = namespace["Import"].definition
    assert definition.step("fetch").options()["max_stalls"] == 5
    assert definition.step("send_invoice").options()["max_stalls"] == 0


def test_the_operations_page_marks_its_fragment() -> None:
    for block in python_blocks("operations.md"):
        assert block.startswith("# fragment:"), block


def test_the_automatic_undo_example_runs_as_printed(capsys: Any) -> None:
    [block] = [b for b in python_blocks("sagas.md") if "class TripSaga" in b]
    exec(compile(block, "sagas.md", "exec"), {"__name__": "sagas_md"})
    printed = capsys.readouterr().out.splitlines()
    assert printed == [
        "compensated",
        "[('Book', 'hotel-bob'), ('Cancel', 'hotel-bob')]",
        "running",
    ]


def test_the_timer_example_of_the_sagas_page_runs_as_written() -> None:
    [block] = [b for b in python_blocks("sagas.md") if "class AwaitPayment" in b]
    namespace: dict[str, Any] = {}
    exec(compile(block, "sagas.md", "exec"), namespace)  # it asserts what it shows
    assert namespace["AwaitPayment"].name == "await_payment"


def test_the_event_pages_new_blocks_say_they_are_fragments() -> None:
    """The blocks issue 9 added to events.md use a dispatcher and a store defined elsewhere."""
    added = [
        b
        for b in python_blocks("events.md")
        if "the same command_id: a replay" in b or "backwards=True" in b
    ]
    assert len(added) == 2
    for block in added:
        assert block.startswith("# fragment:"), block


def test_the_conditions_example_of_the_flows_page_defines_what_it_says() -> None:
    [block] = [b for b in python_blocks("flows.md") if "class Checkout" in b]
    namespace: dict[str, Any] = {}
    exec(compile(block, "flows.md", "exec"), namespace)  # it asserts what it shows
    definition = namespace["Checkout"].definition
    assert definition.step("newsletter").when_failed == "skip"
    assert definition.step("gift").when_unmet == "skip" and definition.conditional


def test_the_flows_page_marks_the_fragments_issue_10_added() -> None:
    """Retrying, starting by slug and bulk starts need an App and a database the page lacks."""
    added = [
        b
        for b in python_blocks("flows.md")
        if "retry_run(" in b or "version=" in b or "start_flows(" in b
    ]
    assert len(added) == 3
    for block in added:
        assert block.startswith("# fragment:"), block


def test_the_testing_page_runs_as_written() -> None:
    """Every block of testing.md is complete and asserts what it shows."""
    blocks = python_blocks("testing.md")
    assert len(blocks) == 3
    for block in blocks:
        exec(compile(block, "testing.md", "exec"), {"__name__": "testing_md"})


def test_the_handlers_page_runs_or_says_fragment(tmp_path: Any) -> None:
    blocks = python_blocks("handlers.md")
    assert len(blocks) == 3
    assert blocks[0].startswith("# fragment:")
    exec(compile(blocks[1], "handlers.md", "exec"), {"__name__": "handlers_md"})  # asserts
    namespace: dict[str, Any] = {"__name__": "handlers_md"}
    exec(compile(blocks[2], "handlers.md", "exec"), namespace)
    # The projection, run as the page says, on SQLite.
    from tideflow.events import ANY, NewEvent
    from tideflow.storage import open_event_store, open_handler_store
    from tideflow.worker.handlers import HandlerRunner

    url = f"sqlite:///{tmp_path / 'totals.db'}"
    events, handlers = open_event_store(url), open_handler_store(url)
    events.migrate()
    for customer, total in (("ann", 10.0), ("bob", 5.0), ("ann", 2.5)):
        events.append(
            "orders", [NewEvent("OrderPlaced", {"customer": customer, "total": total})], ANY
        )
    HandlerRunner(events, handlers, [namespace["OrderTotals"]()]).run_until_idle()
    with events.transaction() as tx:
        rows = tx.execute("SELECT customer, orders, total FROM order_totals ORDER BY customer")
        assert [tuple(r) for r in rows.fetchall()] == [("ann", 2, 12.5), ("bob", 1, 5.0)]
    events.close()
    handlers.close()


def test_the_readmes_first_examples_run_as_written(
    tmp_path: Any, monkeypatch: Any, capsys: Any
) -> None:
    """The flow, typed flow and event sourcing blocks at the top of the README (a newcomer's
    first copy and paste), in an empty directory: their SQLite file is ./tideflow.db."""
    readme = (DOCS.parent.parent / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TIDEFLOW_DATABASE_URL", raising=False)
    for block in blocks[:3]:
        namespace: dict[str, Any] = {"__name__": "readme"}
        exec(compile(block, "README.md", "exec", dont_inherit=True), namespace)
        namespace["app"].close()
    assert capsys.readouterr().out.splitlines() == [
        "['label for tea', 'label for cocoa']",
        "{'pay_back': {'refunded': Decimal('12.50')}}",
        "not enough stock",
    ]


PAGES = sorted(p.name for p in DOCS.glob("*.md"))


@pytest.mark.parametrize("page", ["README.md", *PAGES])
def test_every_python_block_runs_or_says_it_is_a_fragment(
    page: str, tmp_path: Any, monkeypatch: Any
) -> None:
    """Issue 12: every Python block of the README and the concept pages is complete - run here,
    in order, one namespace per page (a page reads like a notebook: a later block may use what
    an earlier one defined), on SQLite in an empty directory - or starts with ``# fragment:``."""
    path = DOCS.parent.parent / page if page == "README.md" else DOCS / page
    blocks = re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TIDEFLOW_DATABASE_URL", raising=False)
    namespace: dict[str, Any] = {"__name__": f"doc_{page}"}
    for number, block in enumerate(blocks):
        if block.startswith("# fragment:"):
            continue
        # dont_inherit: run the block as a reader's file would, without this module's
        # ``from __future__ import annotations`` (string annotations break a dataclass whose
        # module is not in sys.modules, and are not what the reader wrote).
        code = compile(block, f"{page} block {number}", "exec", dont_inherit=True)
        exec(code, namespace)
    for value in list(namespace.values()):  # close what the page opened
        close = getattr(value, "close", None)
        if callable(close) and type(value).__module__.startswith("tideflow"):
            close()


def test_the_asyncio_example_of_the_flows_page_runs_as_printed(capsys: Any) -> None:
    """It runs a worker inside ``asyncio.run``'s loop (issue 12)."""
    [block] = [b for b in python_blocks("flows.md") if "app.aio.worker(" in b]
    exec(compile(block, "flows.md", "exec"), {"__name__": "flows_md"})
    assert capsys.readouterr().out.splitlines() == ["['hello ada', 'hello alan']"]
