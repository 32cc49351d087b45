"""``retry_briefly``: nested retries collapse into the outermost (a dispatch retrying its append
around a store whose ``append`` retries too waits out one budget, not one per layer)."""

from __future__ import annotations

import pytest

from tideflow.errors import DatabaseUnavailableError
from tideflow.retrying import retry_briefly


def test_a_nested_retry_tries_once_and_leaves_the_waiting_to_the_outer_one() -> None:
    calls: list[str] = []
    outer_sleeps: list[float] = []
    inner_sleeps: list[float] = []

    def flaky() -> str:
        calls.append("try")
        if len(calls) < 3:
            raise DatabaseUnavailableError("the server is restarting (simulated)")
        return "done"

    def layer() -> str:
        return retry_briefly(flaky, sleep=inner_sleeps.append)

    assert retry_briefly(layer, sleep=outer_sleeps.append) == "done"
    assert len(calls) == 3
    assert len(outer_sleeps) == 2 and inner_sleeps == []
    # Outside any retry again, a call retries on its own.
    calls.clear()
    assert retry_briefly(flaky, sleep=inner_sleeps.append) == "done"
    assert len(inner_sleeps) == 2


def test_the_outer_budget_still_ends_in_database_unavailable() -> None:
    def down() -> None:
        raise DatabaseUnavailableError("down")

    with pytest.raises(DatabaseUnavailableError):
        retry_briefly(lambda: retry_briefly(down), seconds=0.2)
