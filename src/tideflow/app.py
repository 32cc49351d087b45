"""The App wires a database, a flow registry, a client and workers together.

    app = App("postgresql://localhost/mydb", flows=[Checkout])
    run_id = app.start_flow("checkout", {"order": 42})
    app.run_worker()            # or: tideflow worker --app myproject.flows:app

With no URL it uses ``$TIDEFLOW_DATABASE_URL``, else a SQLite file ``tideflow.db``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterable
from typing import Any, TypeVar

from tideflow.client import AsyncClient, Client
from tideflow.clock import Clock
from tideflow.flows.dsl import Flow
from tideflow.flows.registry import FlowRegistry
from tideflow.storage import open_store, resolve_url
from tideflow.storage.contract import FlowStore, RunRecord
from tideflow.worker import Worker, WorkerOptions

FlowT = TypeVar("FlowT", bound=type[Flow])


class App:
    def __init__(self, database_url: str | None = None, *,
                 flows: Iterable[type[Flow] | str] = (), migrate: bool = True,
                 clock: Clock | None = None) -> None:
        """``migrate`` applies pending schema migrations when the database is first used (under
        a lock, so many workers starting at once are fine); pass False to manage the schema
        with ``tideflow migrate`` instead."""
        self.database_url = resolve_url(database_url)
        self.registry = FlowRegistry(list(flows))
        self._migrate = migrate
        self._clock = clock
        self._store: FlowStore | None = None

    @property
    def store(self) -> FlowStore:
        if self._store is None:
            store = open_store(self.database_url, clock=self._clock)
            if self._migrate:
                store.migrate()
            self._store = store
        return self._store

    def register(self, flow: FlowT) -> FlowT:
        """Register a flow; usable as a class decorator."""
        self.registry.register(flow)
        return flow

    @property
    def client(self) -> Client:
        return Client(self.store, self.registry)

    @property
    def aio(self) -> AsyncClient:
        """Async versions of the client calls: ``await app.aio.start_flow(...)``."""
        return AsyncClient(self.client)

    # Shortcuts to the client, the calls most code makes.
    def start_flow(self, flow: type[Flow] | str, input: Any = None, *,
                   run_id: str | None = None) -> str:
        return self.client.start_flow(flow, input, run_id=run_id)

    def get_run(self, run_id: str) -> RunRecord:
        return self.client.get_run(run_id)

    def wait_for_run(self, run_id: str, timeout: float | None = None) -> RunRecord:
        return self.client.wait_for_run(run_id, timeout)

    def cancel_run(self, run_id: str) -> bool:
        return self.client.cancel_run(run_id)

    def list_runs(self, **filters: Any) -> list[RunRecord]:
        return self.client.list_runs(**filters)

    def migrate(self) -> list[str]:
        return self.store.migrate()

    def worker(self, **options: Any) -> Worker:
        for flow in self.registry:
            self.store.ensure_flow(flow.definition)
        return Worker(self.store, self.registry, options=WorkerOptions(**options))

    def run_worker(self, *, until_idle: bool = False, **options: Any) -> None:
        """Run a worker in this thread until SIGINT/SIGTERM (graceful) or, with ``until_idle``,
        until there is nothing left to do."""
        worker = self.worker(**options)

        async def main() -> None:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                # Not possible outside the main thread; the caller then stops the worker itself.
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, worker.stop)
            await worker.run(until_idle=until_idle)

        asyncio.run(main())

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> App:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
