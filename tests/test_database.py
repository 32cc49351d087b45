"""The storage seam itself, on both backends: one Database under every store, one Tx across them,
an application's SQL written once for both dialects, and nothing left behind by a rollback."""

from __future__ import annotations

import contextlib
import json

import pytest

from tests.flows.flows_for_tests import Chain
from tideflow.errors import StorageError
from tideflow.events import NO_STREAM, NewEvent
from tideflow.storage import open_database


def test_every_store_is_on_one_database(db_url: str) -> None:
    with open_database(db_url) as stores:
        stores.db.migrate()
        assert {
            id(s.db) for s in (stores.flows, stores.events, stores.handlers, stores.processes)
        } == {id(stores.db)}
        assert stores.events.dialect == stores.db.dialect


def test_closing_the_stores_closes_the_database(db_url: str) -> None:
    stores = open_database(db_url)
    stores.db.migrate()
    with stores:
        stores.events.append("s", [NewEvent("E")], NO_STREAM)
    with pytest.raises(StorageError):
        stores.events.stream_version("s")


def test_one_transaction_spans_the_stores_and_rolls_back_as_one(db_url: str) -> None:
    """Events, a process instance, a flow run and a checkpoint in one Tx: all or nothing."""
    with open_database(db_url) as stores:
        stores.db.migrate()
        for fail in (True, False):
            expect = pytest.raises(RuntimeError) if fail else contextlib.nullcontext()
            with expect, stores.events.transaction() as tx:
                tx.append("order-1", [NewEvent("Placed")], NO_STREAM)
                stores.processes.save(
                    tx,
                    "m",
                    "order-1",
                    status="running",
                    state_json=json.dumps({"n": 1}),
                    version=1,
                    last_position=1,
                    error=None,
                )
                stores.flows.start_run(Chain.definition, "run-1", "{}", tx=tx)
                tx.advance_checkpoint("m", 1)
                if fail:
                    raise RuntimeError("undo")
            committed = not fail
            assert stores.events.stream_version("order-1") == (1 if committed else 0)
            assert (stores.processes.get("m", "order-1") is not None) == committed
            assert [r.run_id for r in stores.flows.list_runs()] == (["run-1"] if committed else [])
            assert stores.events.get_checkpoint("m") == (1 if committed else 0)


def test_application_sql_is_written_once_for_both_dialects(db_url: str) -> None:
    """``Tx.execute`` takes psycopg's placeholders on both: ``%s``, ``%(name)s`` and ``%%``."""
    with open_database(db_url) as stores:
        stores.db.migrate()
        with stores.events.transaction() as tx:
            tx.execute_script("CREATE TABLE notes (id integer PRIMARY KEY, body text NOT NULL);")
            tx.execute("INSERT INTO notes (id, body) VALUES (%s, '50%% done')", (1,))
            tx.execute(
                "INSERT INTO notes (id, body) VALUES (%(id)s, %(body)s)", {"id": 2, "body": "x"}
            )
            rows = tx.execute("SELECT body FROM notes WHERE body LIKE %s ORDER BY id", ("%done",))
            assert [r[0] for r in rows.fetchall()] == ["50% done"]
            assert tx.execute("SELECT count(*) FROM notes").fetchone()[0] == 2
