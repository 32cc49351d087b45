"""A projection's DDL runs through the event store transaction, which knows its database.

The domain (``tideflow.events.projections``) used to ask the driver which database a connection
talked to and split SQL with ``sqlite3``; now the store says (``dialect``) and runs the script
(``execute_script``), so that no driver is imported above ``storage/<backend>/``.
"""

from __future__ import annotations

import sqlite3

import psycopg
import pytest

from tideflow.events import Projection, RecordedEvent
from tideflow.events.handling import HandlerContext
from tideflow.storage import EventStore


class Tallies(Projection):
    name = "tallies"
    tables = ("tallies", "tally_log")
    # A comment with a ; in it, two tables and - on SQLite - a trigger whose body holds a ;
    # of its own: the script is split where statements end, not at every semicolon.
    schema = {
        "sqlite": """
            -- tallies; one row per stream
            CREATE TABLE IF NOT EXISTS tallies (stream TEXT PRIMARY KEY, n INTEGER NOT NULL);
            CREATE TABLE IF NOT EXISTS tally_log (stream TEXT NOT NULL);
            CREATE TRIGGER IF NOT EXISTS tally_logged AFTER INSERT ON tallies BEGIN
                INSERT INTO tally_log (stream) VALUES (new.stream);
            END;
        """,
        "postgresql": """
            -- tallies; one row per stream
            CREATE TABLE IF NOT EXISTS tallies (stream TEXT PRIMARY KEY, n BIGINT NOT NULL);
            CREATE TABLE IF NOT EXISTS tally_log (stream TEXT NOT NULL);
        """,
    }

    def handle(self, event: RecordedEvent, ctx: HandlerContext) -> None:
        raise NotImplementedError


def test_the_transaction_and_the_store_name_their_database(events: EventStore) -> None:
    expected = "sqlite" if events.url.startswith("sqlite") else "postgresql"
    assert events.dialect == expected
    with events.transaction() as tx:
        assert tx.dialect == expected


def test_setup_runs_the_whole_script_and_reset_empties_the_tables(events: EventStore) -> None:
    projection = Tallies()
    with events.transaction() as tx:
        projection.setup(tx)
        projection.setup(tx)  # idempotent: it runs on every start
        tx.connection.execute("INSERT INTO tallies (stream, n) VALUES ('a', 1)")
    with events.transaction() as tx:
        logged = tx.connection.execute("SELECT count(*) FROM tally_log").fetchone()[0]
        assert logged == (1 if events.dialect == "sqlite" else 0)  # the trigger ran
        projection.reset(tx)
        assert tx.connection.execute("SELECT count(*) FROM tallies").fetchone()[0] == 0


def test_a_failed_script_leaves_nothing_behind(events: EventStore) -> None:
    with pytest.raises((sqlite3.Error, psycopg.Error)), events.transaction() as tx:
        tx.execute_script("CREATE TABLE half_done (n INTEGER);\nCREATE TABLE broken (;")
    with events.transaction() as tx:
        tx.execute_script("CREATE TABLE half_done (n INTEGER)")  # not there: rolled back
