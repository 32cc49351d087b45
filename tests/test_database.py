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


@pytest.mark.parametrize("first", ["application sql", "driver connection", "named query"])
def test_whatever_a_transaction_runs_first_it_is_atomic(db_url: str, first: str) -> None:
    """PostgreSQL sends BEGIN with the first named query, or before the driver connection is
    handed out: an application's SQL run first is inside the transaction too, and rolls back."""
    with open_database(db_url) as stores:
        stores.db.migrate()
        with stores.db.transaction() as tx:
            tx.execute_script("CREATE TABLE notes (id integer PRIMARY KEY);")
        for commit in (False, True):
            expect = contextlib.nullcontext() if commit else pytest.raises(RuntimeError)
            with expect, stores.db.transaction() as tx:
                if first == "application sql":
                    tx.execute("INSERT INTO notes (id) VALUES (%s)", (1,))
                elif first == "driver connection":
                    tx.connection.execute("INSERT INTO notes (id) VALUES (1)")
                else:
                    tx.run(
                        "reset_checkpoint", name="n", position=1, updated_at=stores.db.clock.now()
                    )
                    tx.execute("INSERT INTO notes (id) VALUES (%s)", (1,))
                if not commit:
                    raise RuntimeError("roll back")
            with stores.db.transaction() as tx:
                count = tx.execute("SELECT count(*) FROM notes").fetchone()[0]
            assert count == (1 if commit else 0)
            assert stores.events.get_checkpoint("n") == (
                1 if commit and first == "named query" else 0
            )


def test_a_transaction_whose_first_statement_fails_leaves_its_connection_clean(
    db_url: str,
) -> None:
    with open_database(db_url) as stores:
        stores.db.migrate()
        for _ in range(3):  # more than once: the pool hands the same connection back
            with pytest.raises(StorageError), stores.db.transaction() as tx:
                tx.run("reset_checkpoint", name=None, position=1, updated_at=None)
        with stores.db.transaction() as tx:
            tx.run("reset_checkpoint", name="n", position=2, updated_at=stores.db.clock.now())
        with stores.db.transaction():
            pass  # runs nothing: sends nothing
        assert stores.events.get_checkpoint("n") == 2


# --- on_commit -----------------------------------------------------------------------------------


def test_on_commit_runs_after_the_commit_and_never_after_a_rollback(db_url: str) -> None:
    with open_database(db_url) as stores:
        stores.db.migrate()
        calls: list[str] = []
        with stores.db.transaction() as tx:
            tx.on_commit(lambda: calls.append(f"committed: {stores.events.stream_version('s')}"))
            tx.on_end(lambda: calls.append("ended"))
            assert calls == []
        assert calls == ["ended", "committed: 0"]

        calls.clear()
        with pytest.raises(RuntimeError), stores.events.transaction() as etx:
            etx.append("s", [NewEvent("E")], NO_STREAM)
            etx.on_commit(lambda: calls.append("committed"))
            raise RuntimeError("roll back")
        assert calls == []

        with stores.events.transaction() as etx:  # the event store's Tx delegates it
            etx.append("s", [NewEvent("E")], NO_STREAM)
            etx.on_commit(lambda: calls.append(f"v{stores.events.stream_version('s')}"))
        assert calls == ["v1"]  # run once the events can be read by others


def test_on_commit_inside_a_savepoint_waits_for_the_commit_or_goes_with_the_savepoint(
    db_url: str,
) -> None:
    with open_database(db_url) as stores:
        stores.db.migrate()
        calls: list[str] = []
        with stores.db.transaction() as tx:
            with tx.savepoint():
                tx.on_commit(lambda: calls.append("released"))
            with pytest.raises(RuntimeError), tx.savepoint():
                tx.on_commit(lambda: calls.append("rolled back"))
                raise RuntimeError("undo the savepoint")
            tx.on_commit(lambda: calls.append("after"))
            assert calls == []
        assert calls == ["released", "after"]


def test_a_failing_on_commit_callback_is_logged_and_the_others_still_run(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with open_database(db_url) as stores:
        stores.db.migrate()
        calls: list[str] = []

        def broken() -> None:
            raise ValueError("a bug in a callback")

        with stores.db.transaction() as tx:
            tx.on_commit(broken)
            tx.on_commit(lambda: calls.append("second"))
        assert calls == ["second"]
        assert "a callback run after a commit raised" in caplog.text


def test_on_commit_of_a_nested_sqlite_transaction_waits_for_the_outer_commit(
    db_url: str, backend: str
) -> None:
    if backend != "sqlite":
        pytest.skip("a nested transaction() is a savepoint on SQLite only (its one connection)")
    with open_database(db_url) as stores:
        stores.db.migrate()
        calls: list[str] = []
        with stores.db.transaction():
            with stores.db.transaction() as inner:
                inner.on_commit(lambda: calls.append("inner"))
            with pytest.raises(RuntimeError), stores.db.transaction() as inner:
                inner.on_commit(lambda: calls.append("rolled back"))
                raise RuntimeError("undo the nested one")
            assert calls == []
        assert calls == ["inner"]

        calls.clear()
        with pytest.raises(RuntimeError), stores.db.transaction():
            with stores.db.transaction() as inner:
                inner.on_commit(lambda: calls.append("inner"))
            raise RuntimeError("the outer one rolls back")
        assert calls == []


def test_run_many_runs_a_named_query_once_per_parameter_set_in_the_transaction(
    db_url: str,
) -> None:
    """One round trip for a batch's writes on PostgreSQL (a pipelined executemany); the rows
    commit or roll back with the transaction, and an error names the query."""
    with open_database(db_url) as stores:
        stores.db.migrate()
        rows = [
            {"name": f"h-{n}", "position": n, "updated_at": stores.db.clock.now()}
            for n in range(1, 4)
        ]
        with pytest.raises(RuntimeError), stores.db.transaction() as tx:
            tx.run_many("reset_checkpoint", rows)
            raise RuntimeError("undo")
        assert [stores.events.get_checkpoint(r["name"]) for r in rows] == [0, 0, 0]
        with stores.db.transaction() as tx:
            tx.run_many("reset_checkpoint", rows)
            tx.run_many("reset_checkpoint", [])
        assert [stores.events.get_checkpoint(r["name"]) for r in rows] == [1, 2, 3]
        with pytest.raises(StorageError, match="reset_checkpoint"), stores.db.transaction() as tx:
            tx.run_many("reset_checkpoint", [{"name": None, "position": 1, "updated_at": None}])


def test_deferred_and_prefetched_statements_keep_their_order_and_commit_with_the_transaction(
    db_url: str,
) -> None:
    """``defer`` / ``prefetch`` only change when a statement reaches the server (PostgreSQL:
    with the next one, or the COMMIT), never what it sees or whether it commits."""
    with open_database(db_url) as stores:
        stores.db.migrate()
        now = stores.db.clock.now()
        with stores.db.transaction() as tx:
            tx.defer("reset_checkpoint", name="a", position=1, updated_at=now)
            tx.defer_many(
                "reset_checkpoint",
                [{"name": "b", "position": 2, "updated_at": now}],
            )
            tx.defer_many("reset_checkpoint", [])
            a = tx.prefetch("lock_checkpoint", name="a", updated_at=now)
            tx.defer("reset_checkpoint", name="a", position=5, updated_at=now)
            # Sent together with this statement, in order: the prefetch saw position 1.
            assert [
                r["position"] for r in tx.rows("lock_checkpoint", name="b", updated_at=now)
            ] == [2]
            assert [r["position"] for r in a()] == [1]
            assert a() is a()  # read once
            late = tx.prefetch("lock_checkpoint", name="a", updated_at=now)
            tx.defer("reset_checkpoint", name="c", position=7, updated_at=now)
        # The last ones went with the COMMIT; a prefetch nobody read is simply dropped.
        assert [stores.events.get_checkpoint(n) for n in "abc"] == [5, 2, 7]
        with pytest.raises(StorageError, match="ended"):
            late()
        with pytest.raises(RuntimeError), stores.db.transaction() as tx:
            tx.defer("reset_checkpoint", name="d", position=1, updated_at=now)
            tx.rows("lock_checkpoint", name="a", updated_at=now)
            tx.defer("reset_checkpoint", name="e", position=1, updated_at=now)
            raise RuntimeError("undo")
        assert [stores.events.get_checkpoint(n) for n in "de"] == [0, 0]
        with pytest.raises(StorageError, match="ended"):
            tx.defer("reset_checkpoint", name="f", position=1, updated_at=now)


def test_a_deferred_statement_that_fails_fails_its_transaction_and_is_named(db_url: str) -> None:
    """Refused where it reaches the server (PostgreSQL: the COMMIT): nothing commits, the error
    names the query, and the connection goes back to the pool clean."""
    with open_database(db_url) as stores:
        stores.db.migrate()
        now = stores.db.clock.now()
        with pytest.raises(StorageError, match="reset_checkpoint"), stores.db.transaction() as tx:
            tx.defer("reset_checkpoint", name="ok", position=3, updated_at=now)
            tx.defer("reset_checkpoint", name=None, position=1, updated_at=None)
        assert stores.events.get_checkpoint("ok") == 0
        for _ in range(3):  # every pooled connection is usable
            with stores.db.transaction() as tx:
                tx.defer("reset_checkpoint", name="ok", position=4, updated_at=now)
        assert stores.events.get_checkpoint("ok") == 4


def test_a_page_read_after_the_commit_sees_it_and_never_fails_the_commit(db_url: str) -> None:
    """``page_after_commit`` (PostgreSQL: in the COMMIT's round trip) reads what the commit
    made visible; a read that fails after a COMMIT leaves it committed and returns None (the
    caller reads the usual way), and the connection clean; SQLite reads nothing ahead."""
    with open_database(db_url) as stores:
        stores.db.migrate()
        with stores.events.transaction() as tx:
            tx.append("s", [NewEvent("A"), NewEvent("B")], NO_STREAM)
            page = tx.read_page_after_commit(0, None, 10)
        found = page()
        if stores.db.dialect == "sqlite":
            assert found is None
        else:
            assert found is not None
            events, head = found
            assert [e.event_type for e in events] == ["A", "B"] and head == events[-1].position
            assert page() is None  # read once
        with stores.events.transaction() as tx:
            tx.append("s", [NewEvent("C")], 2)
            broken = tx.page_after_commit("read_page", after=0, limit=-1, event_types=None)
        assert broken() is None
        assert stores.events.stream_version("s") == 3  # committed all the same
        for _ in range(3):  # and every pooled connection is usable
            with stores.events.transaction() as tx:
                assert tx.rows("lock_checkpoint", name="x", updated_at=stores.db.clock.now())


def test_a_wake_reaches_this_process_at_once_and_others_by_notify_never_twice(
    db_url: str, backend: str
) -> None:
    """PostgreSQL: ``wake`` calls this Database's subscribers at once and NOTIFYs the others;
    its own NOTIFY, coming back through its own LISTEN, wakes nobody a second time (SQLite's
    watcher sees only other connections' commits by construction)."""
    if backend == "sqlite":
        pytest.skip("SQLite's change counter counts other connections' commits only")
    import psycopg

    from tests.polling import wait_until
    from tideflow.storage.opening import connect

    here, there = connect(db_url), connect(db_url)
    try:
        calls: dict[str, list[int]] = {"here": [], "there": []}
        here.subscribe("tideflow_test", lambda: calls["here"].append(1))
        there.subscribe("tideflow_test", lambda: calls["there"].append(1))
        with psycopg.connect(db_url, autocommit=True) as admin:

            def listening() -> bool:
                row = admin.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE query = 'LISTEN tideflow_test'"
                ).fetchone()
                return row is not None and row[0] == 2

            wait_until(listening, what="both Databases listening")
            here.wake("tideflow_test")
            assert calls["here"] == [1]  # at once, in this process
            wait_until(lambda: calls["there"], what="the other Database woken by NOTIFY")
            # A later notification from elsewhere reaches "here" after its own NOTIFY did (one
            # listener gets notifications in commit order): by then that one was ignored.
            admin.execute("SELECT pg_notify('tideflow_test', '')")
            wait_until(lambda: len(calls["here"]) >= 2, what="the outside notification")
            assert calls["here"] == [1, 1]
    finally:
        here.close()
        there.close()
