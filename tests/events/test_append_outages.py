"""``append`` through a brief outage: retried, and never recorded twice - even when the first
try committed and only its answer was lost with the connection."""

from __future__ import annotations

from typing import Any

import pytest

from tideflow.errors import DatabaseUnavailableError
from tideflow.events import ExpectedVersion, NewEvent
from tideflow.storage.event_contract import EventStore

pytestmark = pytest.mark.usefixtures("quick_backoff")  # outages end by count, not time


def _lose_answers(
    store: EventStore, monkeypatch: pytest.MonkeyPatch, times: int, *, after_commit: bool
) -> list[int]:
    """Make the next ``times`` appends fail with ``DatabaseUnavailableError``: before they
    write anything, or (``after_commit``) once they have committed - the answer lost with the
    connection. Patches the Database's append hook, which an append outside a transaction runs
    as a transaction of its own."""
    db = store.db  # type: ignore[attr-defined]
    real = db.append_events
    failures = [times]

    def flaky(tx: Any, prepared: Any, recorded_at: Any) -> Any:
        if failures[0] and not after_commit:
            failures[0] -= 1
            raise DatabaseUnavailableError("the server is restarting (simulated)")
        result = real(tx, prepared, recorded_at)
        if failures[0] and after_commit:
            failures[0] -= 1
            raise DatabaseUnavailableError("connection lost during COMMIT (simulated)")
        return result

    monkeypatch.setattr(db, "append_events", flaky)
    return failures


@pytest.mark.parametrize("expected", [ExpectedVersion.ANY, 1])
def test_an_append_whose_answer_was_lost_is_not_recorded_twice(
    events: EventStore, monkeypatch: pytest.MonkeyPatch, expected: ExpectedVersion | int
) -> None:
    events.append("order-1", [NewEvent("Placed", {"n": 1})], ExpectedVersion.NO_STREAM)
    left = _lose_answers(events, monkeypatch, 1, after_commit=True)
    recorded = events.append(
        "order-1", [NewEvent("Paid", {"n": 2}), NewEvent("Packed", {"n": 3})], expected
    )
    assert left == [0]
    assert [(e.event_type, e.version) for e in recorded] == [("Paid", 2), ("Packed", 3)]
    assert [e.event_type for e in events.read_stream("order-1")] == ["Placed", "Paid", "Packed"]


def test_an_append_with_a_key_whose_answer_was_lost_returns_its_events(
    events: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    _lose_answers(events, monkeypatch, 1, after_commit=True)
    recorded = events.append(
        "s", [NewEvent("Happened", {})], ExpectedVersion.ANY, idempotency_key="once"
    )
    assert [e.version for e in recorded] == [1]
    assert len(list(events.read_stream("s"))) == 1


def test_an_append_is_retried_while_the_database_is_away(
    events: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    left = _lose_answers(events, monkeypatch, 3, after_commit=False)
    recorded = events.append("s", [NewEvent("Happened", {})], ExpectedVersion.NO_STREAM)
    assert left == [0]
    assert [e.version for e in recorded] == [1]


def test_an_outage_that_lasts_raises_database_unavailable(
    events: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tideflow.retrying.CLIENT_RETRY_SECONDS", 0.3)
    _lose_answers(events, monkeypatch, 10_000, after_commit=False)
    with pytest.raises(DatabaseUnavailableError, match="restarting"):
        events.append("s", [NewEvent("Happened", {})], ExpectedVersion.NO_STREAM)
    monkeypatch.undo()
    assert list(events.read_stream("s")) == []
