"""The async client's statements on PostgreSQL: psycopg's async pool, so that a coroutine
waiting on the database holds no thread.

The statements are the stores' own named queries (``QUERIES``), and the flow store turns their
rows into records as it does for the blocking reads, so the two cannot drift apart. Reads that
belong together (a run with its steps) go out in one pipeline with their BEGIN and COMMIT: one
round trip.

An async pool belongs to the event loop that opened it, so there is one per loop, opened at
the loop's first call (an App used from several ``asyncio.run`` calls, as tests do, gets one
each). ``close`` closes them: at once for the running loop, soon for another running loop;
the pool of a loop that has ended is left to the garbage collector, which closes its sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.string import TextLoader
from psycopg_pool import AsyncConnectionPool

from tideflow.storage.database import Row
from tideflow.storage.postgres.connecting import connect_kwargs
from tideflow.storage.postgres.errors import translate
from tideflow.storage.sqlfile import load_dialect

AsyncConn = psycopg.AsyncConnection[Any]
QUERIES = load_dialect("tideflow.storage.postgres")


async def _configure(conn: AsyncConn) -> None:
    conn.adapters.register_loader("jsonb", TextLoader)
    conn.adapters.register_loader("json", TextLoader)


class PgAsyncStatements:
    """``AsyncStatements`` of one PostgreSQL database. Safe to share between loops."""

    def __init__(self, url: str, *, pool_size: int = 8) -> None:
        self.url = url
        self._pool_size = pool_size
        self._pools: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, AsyncConnectionPool[AsyncConn]
        ] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    async def _pool(self) -> AsyncConnectionPool[AsyncConn]:
        loop = asyncio.get_running_loop()
        with self._lock:
            pool = self._pools.get(loop)
            if pool is None:
                pool = self._pools[loop] = AsyncConnectionPool(
                    self.url,
                    min_size=1,
                    max_size=self._pool_size,
                    open=False,
                    configure=_configure,
                    kwargs={"autocommit": True, **connect_kwargs(self.url)},
                    name="tideflow-async",
                    # As the blocking pool: a caller waits at most 5 s for a connection, and
                    # the wait's outage loop does the rest.
                    timeout=5.0,
                )
                opening = True
            else:
                opening = False
        if opening:
            await pool.open(wait=False)
        return pool

    async def rows(self, name: str, /, **params: Any) -> list[Row]:
        """Named query ``name`` as a statement of its own; its rows as dicts."""
        try:
            pool = await self._pool()
            async with pool.connection() as conn:
                cur = conn.cursor(row_factory=dict_row)
                await cur.execute(QUERIES[name], params)
                return await cur.fetchall() if cur.description else []
        except psycopg.Error as exc:
            raise translate(exc, f"query {name}") from exc

    async def read_together(self, reads: Sequence[tuple[str, dict[str, Any]]]) -> list[list[Row]]:
        """BEGIN READ ONLY, the reads and COMMIT in one pipeline: one round trip."""
        try:
            pool = await self._pool()
            async with pool.connection() as conn:
                async with conn.pipeline():
                    await conn.execute("BEGIN READ ONLY")
                    cursors = []
                    for name, params in reads:
                        cur = conn.cursor(row_factory=dict_row)
                        await cur.execute(QUERIES[name], params)
                        cursors.append(cur)
                    await conn.execute("COMMIT")
                return [await c.fetchall() for c in cursors]
        except psycopg.Error as exc:
            raise translate(exc, f"queries {', '.join(name for name, _ in reads)}") from exc

    async def aclose(self) -> None:
        """Close this loop's pool."""
        with self._lock:
            pool = self._pools.pop(asyncio.get_running_loop(), None)
        if pool is not None:
            await pool.close()

    def close(self) -> None:
        """Close every loop's pool that can still be closed (see the module's docstring)."""
        with self._lock:
            pools = list(self._pools.items())
            self._pools.clear()
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for loop, pool in pools:
            if loop is running:
                loop.create_task(pool.close())
            elif loop.is_running() and not loop.is_closed():
                with contextlib.suppress(RuntimeError):
                    asyncio.run_coroutine_threadsafe(pool.close(), loop)
