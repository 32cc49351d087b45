"""Projections: event handlers that keep a read-model table up to date.

    class OrderTotals(Projection):
        name = "order_totals"
        event_types = ["OrderPlaced"]
        tables = "order_totals"
        schema = '''CREATE TABLE IF NOT EXISTS order_totals (
                        customer TEXT PRIMARY KEY, orders INTEGER NOT NULL, total REAL NOT NULL)'''

        def handle(self, event, ctx):
            ctx.execute(
                "INSERT INTO order_totals (customer, orders, total) VALUES (%(c)s, 1, %(t)s) "
                "ON CONFLICT (customer) DO UPDATE SET orders = order_totals.orders + 1, "
                "total = order_totals.total + excluded.total",
                {"c": event.data["customer"], "t": event.data["total"]})

A projection is always transactional: its rows and its checkpoint commit together, so every event
is counted exactly once, whatever crashes. The runner calls ``setup`` (create the tables if they
do not exist) when it starts the projection, and a reset (``tideflow handlers reset NAME``)
empties them with ``reset`` and sets the checkpoint back to 0 *in one transaction*; the runner
then rebuilds the table from the whole log. Readers see the table fill up again during a rebuild;
to switch without a gap, deploy the changed projection under a new name (and table), let it catch
up, then point readers at it.

``schema`` is one SQL text (statements separated by ``;``) for both backends, a list of
statements, or a mapping ``{"sqlite": ..., "postgresql": ...}`` when the DDL differs; override
``setup(tx)`` and ``reset(tx)`` for anything else (``tx`` is the event store transaction:
``tx.connection`` is the driver connection, ``tx.dialect`` which database it is).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from tideflow.events.handling import (
    Dialect,
    EventHandler,
    HandlerDefinitionError,
    HandlerKind,
    HandlerUsageError,
)

if TYPE_CHECKING:  # a type only: this module imports nothing from storage at run time
    from tideflow.storage.event_contract import EventTransaction

#: A table name: an SQL identifier, optionally schema-qualified (PostgreSQL).
TABLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")

Schema = str | Sequence[str] | Mapping[str, str | Sequence[str]]


class Projection(EventHandler):
    """Base class of projections: an ``EventHandler`` that owns read-model tables."""

    kind: ClassVar[HandlerKind] = "projection"
    tables: ClassVar[str | Sequence[str]] = ()
    """The tables this projection owns: ``reset`` empties them. One name or a list."""
    schema: ClassVar[Schema | None] = None
    """DDL run by ``setup``; write ``CREATE TABLE IF NOT EXISTS``: it runs on every start."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        where = f"projection class {cls.__qualname__}"
        if not cls.transactional:
            raise HandlerDefinitionError(
                f"{where}: a projection must be transactional (its rows commit with its "
                "checkpoint); use an EventHandler with transactional = False for external work"
            )
        for table in table_names(cls):
            if not TABLE_RE.match(table):
                raise HandlerDefinitionError(
                    f"{where}: table name {table!r} is not a plain SQL identifier (letters, "
                    "digits, underscores; optionally schema.table)"
                )
        schema = cls.schema
        if isinstance(schema, Mapping):
            unknown = set(schema) - {"sqlite", "postgresql"}
            if unknown:
                raise HandlerDefinitionError(
                    f"{where}: schema keys must be 'sqlite' and/or 'postgresql', got "
                    f"{sorted(unknown)}"
                )
        elif schema is not None and not isinstance(schema, str | Sequence):
            raise HandlerDefinitionError(
                f"{where}: schema must be SQL text, a list of statements or a mapping by "
                f"dialect, got {type(schema).__name__}"
            )

    def setup(self, tx: EventTransaction) -> None:
        """Create the read model if it does not exist, in the caller's transaction ``tx`` (an
        event store transaction: ``tx.connection`` is the driver connection, ``tx.dialect`` says
        which database). Runs each time a runner starts the projection, and before a reset; so
        it must be idempotent."""
        for script in self.schema_statements(tx.dialect):
            tx.execute_script(script)

    def reset(self, tx: EventTransaction) -> None:
        """Empty the read model, in the transaction ``tx`` that sets the checkpoint back to 0."""
        if not table_names(type(self)):
            raise HandlerUsageError(
                f"projection {self.name!r} names no tables and does not override "
                "reset(tx), so a reset would replay every event onto rows it keeps: set "
                "tables = 'its_table' on the class (or override reset)"
            )
        for table in table_names(type(self)):
            tx.connection.execute(
                f"DELETE FROM {table}" if tx.dialect == "sqlite" else f"TRUNCATE {table}"
            )

    def schema_statements(self, dialect: Dialect) -> list[str]:
        """The SQL of ``schema`` for ``dialect`` (none if it has none for it): one text, which
        may hold several statements (the store's ``execute_script`` runs it), or the list given."""
        schema = self.schema
        if isinstance(schema, Mapping):
            schema = schema.get(dialect)
        if schema is None:
            return []
        if isinstance(schema, str):
            return [schema]
        return list(schema)


def table_names(cls: type[Projection]) -> tuple[str, ...]:
    tables = cls.tables
    return (tables,) if isinstance(tables, str) else tuple(tables)
