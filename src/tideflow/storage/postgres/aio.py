"""The async client's statements on PostgreSQL: psycopg's ``AsyncConnection``, so that a
coroutine waiting on the database holds no thread.

The statements are the stores' own named queries (``QUERIES``), and the flow store turns their
rows into records as it does for the blocking reads, so the two cannot drift apart. Reads that
belong together (a run with its steps) go out in one pipeline with their BEGIN and COMMIT: one
round trip.

Connections: an async connection belongs to the event loop that opened it, so each loop gets
its own few (``LoopConnections``: up to ``pool_size``, opened on demand, kept for reuse). Not
``psycopg_pool.AsyncConnectionPool``: its maintenance tasks swallow a cancellation that lands
while they run, so a pool still open when its loop ends - an App that outlives an
``asyncio.run``, a pytest-asyncio test's loop - hangs the loop's shutdown for good (seen here:
``asyncio.Runner.close`` waiting forever in ``_cancel_all_tasks``). These connections have no
task of their own; a loop that ends leaves its idle ones to ``close`` or the garbage collector.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row
from psycopg.types.string import TextLoader

from tideflow.storage.database import Row
from tideflow.storage.postgres.connecting import connect_kwargs
from tideflow.storage.postgres.errors import translate
from tideflow.storage.postgres.plans import KEYED_READS
from tideflow.storage.sqlfile import load_dialect

AsyncConn = psycopg.AsyncConnection[Any]
QUERIES = load_dialect("tideflow.storage.postgres")
#: How long a call waits to connect (the blocking pool's checkout timeout, for the same reason:
#: the caller's outage loop does the rest).
CONNECT_TIMEOUT = 5


class LoopConnections:
    """The connections of one event loop: at most ``size`` in use at once (the others wait
    their turn without a thread), idle ones reused. One that broke - a server restart - is
    closed with every idle one, which broke with it."""

    def __init__(self, url: str, size: int) -> None:
        self._url = url
        self._idle: list[AsyncConn] = []
        self._turns = asyncio.Semaphore(size)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConn]:
        async with self._turns:
            conn = self._idle.pop() if self._idle else await self._connect()
            healthy = False
            try:
                yield conn
                healthy = conn.info.transaction_status == TransactionStatus.IDLE
            finally:
                if healthy:
                    self._idle.append(conn)
                else:
                    if conn.broken or conn.closed:
                        self.close_idle()
                    await conn.close()

    async def _connect(self) -> AsyncConn:
        kwargs = {"connect_timeout": CONNECT_TIMEOUT, **connect_kwargs(self._url)}
        conn = await psycopg.AsyncConnection.connect(self._url, autocommit=True, **kwargs)
        conn.adapters.register_loader("jsonb", TextLoader)
        conn.adapters.register_loader("json", TextLoader)
        return conn

    def close_idle(self) -> None:
        """Close the idle connections now (libpq's own close: nothing to await on an idle
        connection)."""
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.pgconn.finish()


class PgAsyncStatements:
    """``AsyncStatements`` of one PostgreSQL database. Safe to share between loops."""

    def __init__(self, url: str, *, pool_size: int = 8) -> None:
        self.url = url
        self._pool_size = pool_size
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopConnections] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    def _connections(self) -> LoopConnections:
        loop = asyncio.get_running_loop()
        with self._lock:
            found = self._loops.get(loop)
            if found is None:
                found = self._loops[loop] = LoopConnections(self.url, self._pool_size)
            return found

    async def rows(self, name: str, /, **params: Any) -> list[Row]:
        """Named query ``name`` as a statement of its own; its rows as dicts."""
        try:
            async with self._connections().connection() as conn:
                cur = conn.cursor(row_factory=dict_row)
                await cur.execute(QUERIES[name], params)
                return await cur.fetchall() if cur.description else []
        except psycopg.Error as exc:
            raise translate(exc, f"query {name}") from exc

    async def read_together(self, reads: Sequence[tuple[str, dict[str, Any]]]) -> list[list[Row]]:
        """BEGIN, the reads and COMMIT in one pipeline: one round trip. REPEATABLE READ, so
        that the reads share one snapshot (a run and its steps as of one moment) - at no cost
        for a read-only transaction."""
        try:
            async with self._connections().connection() as conn:
                async with conn.pipeline():
                    await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    await conn.execute(KEYED_READS)
                    cursors = []
                    for name, params in reads:
                        cur = conn.cursor(row_factory=dict_row)
                        await cur.execute(QUERIES[name], params)
                        cursors.append(cur)
                    await conn.execute("COMMIT")
                return [await c.fetchall() for c in cursors]
        except psycopg.Error as exc:
            raise translate(exc, f"queries {', '.join(name for name, _ in reads)}") from exc

    def close(self) -> None:
        """Close every loop's idle connections (those in use close as their calls end)."""
        with self._lock:
            loops = list(self._loops.values())
            self._loops.clear()
        for connections in loops:
            connections.close_idle()
