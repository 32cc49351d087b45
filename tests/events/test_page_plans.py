"""The plan of a handler batch's page on PostgreSQL: an ordered walk of the position index
between the checkpoint and the horizon kept by ``set_horizon``, with or without statistics,
never a scan or a sort of the log (PostgreSQL only: SQLite has no planner to flip)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.pgdb import empty_database
from tideflow.storage import open_store
from tideflow.storage.sqlfile import load_dialect

QUERIES = load_dialect("tideflow.storage.postgres")
EVENTS = 100_000

_FILL = """
INSERT INTO tideflow.events (position, version, schema_version, stream_id, event_id, event_type,
                             recorded_at, data, metadata)
SELECT nextval('tideflow.event_position_seq'), 1, 1, 's-' || i, gen_random_uuid(),
       CASE WHEN i %% 1000 = 0 THEN 'Rare' ELSE 'Common' END, now(), '{}', '{}'
FROM generate_series(1, %(n)s) AS i
"""


@pytest.fixture(scope="module", params=["no statistics", "fresh statistics"])
def log(request: pytest.FixtureRequest, pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    with empty_database(pg_url, "tideflow_page_plans") as url:
        store = open_store(url)
        store.migrate()
        store.close()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(_FILL, {"n": EVENTS})
            if request.param == "fresh statistics":
                conn.execute("ANALYZE")
            yield conn


@pytest.mark.parametrize(("name", "types"), [("read_page", None), ("read_page_of_types", ["Rare"])])
@pytest.mark.parametrize("after", [0, EVENTS // 2])
def test_a_page_walks_the_position_index_up_to_the_kept_horizon(
    log: psycopg.Connection[Any], name: str, types: list[str] | None, after: int
) -> None:
    with log.transaction(force_rollback=True):
        kept = log.execute(QUERIES["set_horizon"], {"after": after, "checkpoint": None})
        assert kept.fetchone()[:2] == (EVENTS, after)  # type: ignore[index]
        params = {"limit": 50, "event_types": types}
        plan = "\n".join(r[0] for r in log.execute(f"EXPLAIN {QUERIES[name]}", params))
        assert "Index Scan using events_pkey on events" in plan, plan
        assert "Sort" not in plan and "Seq Scan" not in plan, plan
        rows = log.execute(QUERIES[name], params).fetchall()
    expected = [after + n for n in range(1, 51)]
    if types:
        expected = [p for p in range(after + 1, EVENTS + 1) if p % 1000 == 0][:50]
    assert [r[0] for r in rows] == expected
