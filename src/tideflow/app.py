"""The App wires a database, flows, aggregates, a client and workers together.

    app = App("postgresql://localhost/mydb", flows=[Checkout], aggregates=[Inventory])
    run_id = app.start_flow("checkout", {"order": 42})
    app.dispatch(Command("AddStock", "sku-1", {"qty": 5}))
    app.run_worker()            # or: tideflow worker --app myproject.flows:app

With no URL it uses ``$TIDEFLOW_DATABASE_URL``, else a SQLite file ``tideflow.db``. Flows and
events share one database and, within a process, one connection pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, TypeVar, overload

from tideflow.client import AsyncClient
from tideflow.client import Client as StoreClient
from tideflow.clock import Clock
from tideflow.errors import DatabaseUnavailableError, ScheduleConflictError, TideflowError
from tideflow.events.aggregate import Aggregate
from tideflow.events.commands import Command, DispatchResult
from tideflow.events.handling import EventHandler, HandlerNotFoundError, check_handler
from tideflow.events.middleware import Middleware
from tideflow.events.upcasting import Upcasters
from tideflow.flows.dsl import Flow, InputT
from tideflow.flows.jobs import Job
from tideflow.flows.registry import FlowRegistry
from tideflow.flows.schedules import Schedule
from tideflow.jsonutil import check_id
from tideflow.runtime.dispatch import CommandDispatcher
from tideflow.runtime.instances import AsyncProcessHandle, ProcessHandle
from tideflow.runtime.retention import DEFAULT_BATCH_SIZE, Purged, Retention, purge
from tideflow.runtime.sagas import ProcessBindings
from tideflow.runtime.serving import Serving
from tideflow.sagas import ProcessManager
from tideflow.storage import (
    EventStore,
    HandlerStore,
    Stores,
    open_database,
    open_store,
    resolve_url,
)
from tideflow.storage.flow_contract import FlowStore, RunRecord
from tideflow.storage.flow_store import check_map_input
from tideflow.storage.monitor_contract import MonitorStore
from tideflow.storage.process_contract import ProcessStore
from tideflow.storage.schedule_contract import ScheduleRecord, TickRecord
from tideflow.storage.timer_contract import TimerStore
from tideflow.storage.urls import sqlite_path
from tideflow.telemetry.collector import DatabaseCollector
from tideflow.worker import Worker, WorkerOptions
from tideflow.worker.handlers import HandlerRunner, HandlerRunnerOptions

FlowT = TypeVar("FlowT", bound=type[Flow])
AggregateT = TypeVar("AggregateT", bound=type[Aggregate])
HandlerT = TypeVar("HandlerT", bound=type[EventHandler])
ProcessManagerT = TypeVar("ProcessManagerT", bound=type[ProcessManager])
JobT = TypeVar("JobT", bound=Job[Any, Any])

log = logging.getLogger("tideflow.worker")


def _unique_schedules(schedules: Iterable[Schedule]) -> list[Schedule]:
    found: dict[str, Schedule] = {}
    for schedule in schedules:
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedules takes Schedule(...) objects, got {schedule!r}")
        if schedule.key in found and found[schedule.key] != schedule:
            raise ScheduleConflictError(
                f"two schedules are named {schedule.key!r}; give one of them another "
                "name=... (a name is one row and one series of ticks)"
            )
        found[schedule.key] = schedule
    return list(found.values())


class AsyncApp(AsyncClient):
    """``app.aio``: the client's calls and ``dispatch``, awaitable - reads and waits natively
    (``AsyncClient``), the rest as a blocking call in a short thread, so an event loop never
    waits on the database - and a worker to run inside the loop (``run_worker``, ``worker``).
    Reads never migrate and writes do (see ``App.read_store``)."""

    def __init__(self, app: App) -> None:
        super().__init__(app, store=app.read_store)
        self._app = app

    async def dispatch(self, command: Command) -> DispatchResult:
        return await asyncio.to_thread(self._app.dispatch, command)

    def process(self, manager: type[ProcessManager] | str, process_id: str) -> AsyncProcessHandle:
        """``App.process``, awaitable."""
        return self._app.process(manager, process_id).aio

    async def run_worker(
        self,
        *,
        until_idle: bool = False,
        concurrency: int = WorkerOptions.concurrency,
        step_threads: int = WorkerOptions.step_threads,
        poll_interval: float = WorkerOptions.poll_interval,
        lease_margin: float = WorkerOptions.lease_margin,
        heartbeat_interval: float | None = WorkerOptions.heartbeat_interval,
        reap_interval: float = WorkerOptions.reap_interval,
        shutdown_grace: float = WorkerOptions.shutdown_grace,
        max_batch: int = WorkerOptions.max_batch,
        retention: Retention | None = None,
        handler_lease: float = HandlerRunnerOptions.lease_ttl,
        handler_batch_size: int | None = None,
        schedule_interval: float = WorkerOptions.schedule_interval,
    ) -> None:
        """``App.run_worker`` inside a running event loop (FastAPI, pytest-asyncio, any
        asyncio program): the app's flows and event handlers, until the task running this is
        cancelled - it then stops gracefully, as on a first SIGINT, before the cancellation
        goes on - or, with ``until_idle``, until there is nothing left to do. Installs no
        signal handlers: the host owns them. Options as ``App.run_worker``'s."""
        serving = await asyncio.to_thread(
            self._app.serving,
            concurrency=concurrency,
            step_threads=step_threads,
            poll_interval=poll_interval,
            lease_margin=lease_margin,
            heartbeat_interval=heartbeat_interval,
            reap_interval=reap_interval,
            shutdown_grace=shutdown_grace,
            max_batch=max_batch,
            retention=retention,
            handler_lease=handler_lease,
            handler_batch_size=handler_batch_size,
            schedule_interval=schedule_interval,
        )
        await serving.run(until_idle=until_idle)

    @contextlib.asynccontextmanager
    async def worker(
        self,
        *,
        concurrency: int = WorkerOptions.concurrency,
        step_threads: int = WorkerOptions.step_threads,
        poll_interval: float = WorkerOptions.poll_interval,
        lease_margin: float = WorkerOptions.lease_margin,
        heartbeat_interval: float | None = WorkerOptions.heartbeat_interval,
        reap_interval: float = WorkerOptions.reap_interval,
        shutdown_grace: float = WorkerOptions.shutdown_grace,
        max_batch: int = WorkerOptions.max_batch,
        retention: Retention | None = None,
        handler_lease: float = HandlerRunnerOptions.lease_ttl,
        handler_batch_size: int | None = None,
        schedule_interval: float = WorkerOptions.schedule_interval,
    ) -> AsyncIterator[Serving]:
        """``async with app.aio.worker(): ...``: the app's flows and event handlers run in this
        event loop while the block runs, and stop gracefully when it ends (running work gets
        ``shutdown_grace`` to finish) - an application's lifespan. Options as
        ``App.run_worker``'s. A bug that stops the worker is raised when the block ends."""
        serving = await asyncio.to_thread(
            self._app.serving,
            concurrency=concurrency,
            step_threads=step_threads,
            poll_interval=poll_interval,
            lease_margin=lease_margin,
            heartbeat_interval=heartbeat_interval,
            reap_interval=reap_interval,
            shutdown_grace=shutdown_grace,
            max_batch=max_batch,
            retention=retention,
            handler_lease=handler_lease,
            handler_batch_size=handler_batch_size,
            schedule_interval=schedule_interval,
        )
        task = asyncio.create_task(serving.run(), name="tideflow-worker")
        try:
            yield serving
        finally:
            serving.stop()
            await task


class _ReadClient(StoreClient):
    """The client of the App's reads: its store is ``App.read_store()``, taken when a call
    reaches the database - after the call has checked its arguments, so that a bad filter is
    reported as such, even on a database without the schema."""

    def __init__(self, app: App) -> None:  # no super().__init__: the store comes later
        self._app = app
        self.registry = app.registry

    @property
    def store(self) -> FlowStore:
        return self._app.read_store()

    @store.setter
    def store(self, value: FlowStore) -> None:  # pragma: no cover - Client's attribute
        raise AttributeError("a read client's store is the App's read_store()")


class App:
    def __init__(
        self,
        database_url: str | None = None,
        *,
        flows: Iterable[type[Flow] | str] = (),
        jobs: Iterable[Job[Any, Any]] = (),
        schedules: Iterable[Schedule] = (),
        aggregates: Iterable[type[Aggregate]] = (),
        command_middleware: Iterable[Middleware] = (),
        handlers: Iterable[EventHandler | type[EventHandler]] = (),
        upcasters: Upcasters | None = None,
        migrate: bool = True,
        clock: Clock | None = None,
    ) -> None:
        """``migrate`` applies pending schema migrations before the app first writes - a worker,
        ``start_flow``, ``dispatch``, or getting one of the store handles (``store``,
        ``event_store``, ``client``, ...) - under a lock, so many workers starting at once are
        fine; pass False to manage the schema with ``tideflow migrate`` instead. Reads
        (``get_run``, ``list_runs``, ``wait_for_run``, ``cancel_run``, ``read_store()``) never
        migrate and never create a database file: on a database without the schema they raise
        ``SchemaMissingError``, so a read pointed at the wrong database leaves it untouched.

        The URL is checked here (``tideflow.storage.check_url``): a PostgreSQL URL without a host
        or database name, or a bare file name, raises ``UnsupportedDatabaseURLError``.

        ``schedules``: cron schedules (``Schedule``) the app's workers store as they start and
        fire, each tick once across all of them; a schedule's Flow class or job is registered
        with the app. Two schedules with one name raise ``ScheduleConflictError``."""
        self.database_url = resolve_url(database_url)
        self.schedules: list[Schedule] = _unique_schedules(schedules)
        targets = [s.target for s in self.schedules if not isinstance(s.target, str)]
        self.registry = FlowRegistry([*flows, *jobs, *targets])
        self.upcasters = upcasters or Upcasters()
        self._aggregates: list[type[Aggregate]] = list(aggregates)
        #: Event handlers, projections and process managers the app's workers run.
        self.handlers: list[EventHandler | type[EventHandler]] = list(handlers)
        self._middleware = list(command_middleware)
        self._migrate = migrate
        self._clock = clock
        self._stores: Stores | None = None
        self._schema_ready = False  # migrated or checked current: reads need not check again
        self._dispatcher: CommandDispatcher | None = None
        self._schedule_problems: set[tuple[str, str]] = set()

    @property
    def store(self) -> FlowStore:
        """The flow store: the handle writes go through (workers, ``start_flow``, ``client``,
        and the event, handler and process stores, which share its connections). With
        ``migrate=True``, getting it the first time applies pending migrations - creating the
        schema, and a SQLite file, if need be. Code that only reads uses ``read_store()``."""
        return self._open().flows

    def _open(self) -> Stores:
        if self._stores is None:
            stores = open_database(self.database_url, clock=self._clock, upcasters=self.upcasters)
            if self._migrate:
                try:
                    stores.db.migrate()
                except BaseException:
                    stores.close()
                    raise
            self._stores = stores
            self._schema_ready = self._migrate
        return self._stores

    def read_store(self) -> FlowStore:
        """The flow store for reading: whatever ``migrate`` says, it creates and migrates
        nothing - no SQLite file or folder, no PostgreSQL schema. Raises ``SchemaMissingError``
        on a database without the tideflow schema and ``SchemaNotReadyError`` on one with
        pending migrations. The store it opens is the app's store from then on (its schema is
        current, so later writes need no migration). An in-memory SQLite database exists only
        in this process, so there this is ``store``."""
        memory = (
            self.database_url.startswith("sqlite://")
            and sqlite_path(self.database_url) == ":memory:"
        )
        if self._stores is None and not memory:
            stores = open_database(
                self.database_url, clock=self._clock, create=False, upcasters=self.upcasters
            )
            try:
                stores.db.check_schema()
            except BaseException:
                stores.close()
                raise
            self._stores, self._schema_ready = stores, True
            return stores.flows
        stores = self._open()
        if not self._schema_ready:
            stores.db.check_schema()
            self._schema_ready = True
        return stores.flows

    @property
    def event_store(self) -> EventStore:
        """The event store, on the same connections as the flow store."""
        return self._open().events

    @property
    def handler_store(self) -> HandlerStore:
        """Handler leases and dead letters, on the same connections as the flow store."""
        return self._open().handlers

    def handler(self, cls: HandlerT) -> HandlerT:
        """Register an event handler or projection; usable as a class decorator."""
        self.handlers.append(cls)
        return cls

    def on_database(
        self,
        database_url: str,
        *,
        flows: Iterable[type[Flow] | str] | None = None,
        migrate: bool | None = None,
    ) -> App:
        """This app's configuration - flows (or ``flows``), schedules, aggregates, middleware,
        handlers, upcasters, clock - on another database: what ``--database-url`` with
        ``--app`` runs."""
        return App(
            database_url,
            flows=list(self.registry) if flows is None else flows,
            schedules=self.schedules,
            aggregates=self._aggregates,
            command_middleware=self._middleware,
            handlers=self.handlers,
            upcasters=self.upcasters,
            migrate=self._migrate if migrate is None else migrate,
            clock=self._clock,
        )

    def process_manager(self, cls: ProcessManagerT) -> ProcessManagerT:
        """Register a process manager (saga); usable as a class decorator. It runs as one of
        the app's event handlers, sending commands through the app's dispatcher and starting
        the app's flows."""
        self.handlers.append(cls)
        return cls

    @property
    def process_store(self) -> ProcessStore:
        """Process manager instances, on the same connections as the flow store."""
        return self._open().processes

    @property
    def monitor_store(self) -> MonitorStore:
        """Read-only aggregates (runs per status, queues, leases) for the dashboard and
        metrics; like ``read_store()``, it creates and migrates nothing."""
        self.read_store()
        return self._open().monitor

    def metrics_collector(self) -> DatabaseCollector:
        """The Prometheus collector of the database's gauges (``tideflow.telemetry``)."""
        self.read_store()
        stores = self._open()
        return DatabaseCollector(stores.monitor, stores.events, stores.handlers, stores.processes)

    @property
    def timer_store(self) -> TimerStore:
        """Pending timers of process manager instances, on the same connections as the flow
        store; the app's workers fire them."""
        return self._open().timers

    def handler_runner(
        self, worker_id: str | None = None, options: HandlerRunnerOptions | None = None
    ) -> HandlerRunner:
        handlers = self.bound_handlers()
        managers = any(isinstance(h, ProcessManager) for h in handlers)
        if managers:
            # Record the flows' versions now, in transactions of their own: a process manager
            # that starts a run would otherwise record its flow inside its batch, every batch
            # (a row written in a transaction that may roll back cannot be remembered).
            for flow in self.registry:
                self.store.ensure_flow(flow.definition)
        return HandlerRunner(
            self.event_store,
            self.handler_store,
            handlers,
            worker_id=worker_id,
            options=options,
            timers=self.timer_store if managers else None,  # they fire their timers
        )

    def bound_handlers(self) -> list[EventHandler]:
        """The app's handlers, instantiated, its process managers bound to its dispatcher,
        process store and flows - ready to be run (or to retry a dead letter)."""
        handlers = [check_handler(h) for h in self.handlers]
        for handler in handlers:
            if isinstance(handler, ProcessManager):
                handler.bind(
                    lambda: ProcessBindings(
                        self.dispatcher, self.process_store, self.client, self.timer_store
                    )
                )
        return handlers

    def process(self, manager: type[ProcessManager] | str, process_id: str) -> ProcessHandle:
        """The instance ``process_id`` of a registered process manager (its class or name):
        start it with a config, feed it an event, read its state, compensate, stop, wait -
        ``tideflow.runtime.instances.ProcessHandle``; ``.aio`` for the awaitable calls."""
        name = manager if isinstance(manager, str) else getattr(manager, "name", None)
        managers = [h for h in self.bound_handlers() if isinstance(h, ProcessManager)]
        for handler in managers:
            if handler.name == name:
                bindings = handler.bindings()
                assert isinstance(bindings, ProcessBindings)  # bound by bound_handlers()
                process_id = check_id(process_id, "process_id")
                return ProcessHandle(handler, process_id, bindings, self.event_store)
        known = sorted(h.name for h in managers)
        raise HandlerNotFoundError(
            f"no process manager {name!r} is registered with this app (registered: "
            f"{', '.join(known) or 'none'}); register it with app.process_manager(...)"
        )

    @property
    def dispatcher(self) -> CommandDispatcher:
        """The command dispatcher, built once (it checks every aggregate when built)."""
        if self._dispatcher is None:
            self._dispatcher = CommandDispatcher(
                self.event_store, self._aggregates, middleware=self._middleware
            )
        return self._dispatcher

    def aggregate(self, cls: AggregateT) -> AggregateT:
        """Register an aggregate; usable as a class decorator. Register every aggregate
        before the app serves commands from several threads."""
        self._aggregates.append(cls)
        if self._dispatcher is not None:
            self._dispatcher.register(cls)
        return cls

    def dispatch(self, command: Command) -> DispatchResult:
        """Route a command to its aggregate, record the resulting events (see
        ``CommandDispatcher.dispatch``)."""
        return self.dispatcher.dispatch(command)

    def register(self, flow: FlowT) -> FlowT:
        """Register a flow; usable as a class decorator."""
        self.registry.register(flow)
        return flow

    def register_job(self, job: JobT) -> JobT:
        """Register a job (``@job``): this app's workers then run it."""
        self.registry.register(job)
        return job

    def enqueue(
        self,
        job: Job[InputT, Any],
        input: InputT,
        *,
        delay: float | timedelta | None = None,
        at: datetime | None = None,
        key: str | None = None,
    ) -> str:
        """``Client.enqueue``: one run of ``job``, claimable after ``delay`` seconds or ``at``
        a time; ``key`` makes enqueueing the same work again a no-op."""
        return self.client.enqueue(job, input, delay=delay, at=at, key=key)

    @property
    def client(self) -> StoreClient:
        return StoreClient(self.store, self.registry)

    @property
    def aio(self) -> AsyncApp:
        """Awaitable client calls and ``dispatch``: ``await app.aio.start_flow(...)``."""
        return AsyncApp(self)

    # Shortcuts to the client, the calls most code makes.
    @overload
    def start_flow(
        self,
        flow: type[Flow[InputT]],
        input: InputT = ...,
        *,
        run_id: str | None = None,
        version: str | None = None,
    ) -> str: ...
    @overload
    def start_flow(
        self,
        flow: str,
        input: object = None,
        *,
        run_id: str | None = None,
        version: str | None = None,
    ) -> str: ...
    def start_flow(
        self,
        flow: type[Flow] | str,
        input: object = None,
        *,
        run_id: str | None = None,
        version: str | None = None,
    ) -> str:
        """``Client.start_flow``: a slug the App has no class for starts the flow's latest
        stored version (or ``version``), so a web app can start runs without the flows' code."""
        return self.client.start_flow(flow, input, run_id=run_id, version=version)

    @overload
    def start_flows(
        self,
        flow: type[Flow[InputT]],
        inputs: Iterable[InputT],
        *,
        run_ids: Sequence[str] | None = None,
        version: str | None = None,
    ) -> list[str]: ...
    @overload
    def start_flows(
        self,
        flow: str,
        inputs: Iterable[object],
        *,
        run_ids: Sequence[str] | None = None,
        version: str | None = None,
    ) -> list[str]: ...
    def start_flows(
        self,
        flow: type[Flow] | str,
        inputs: Iterable[object],
        *,
        run_ids: Sequence[str] | None = None,
        version: str | None = None,
    ) -> list[str]:
        """``Client.start_flows``: many runs of one flow in one transaction."""
        return self.client.start_flows(flow, inputs, run_ids=run_ids, version=version)

    # Reads, and cancel_run (a run to cancel lives in a migrated database): never migrate.
    def get_run(self, run_id: str) -> RunRecord:
        return _ReadClient(self).get_run(run_id)

    def wait_for_run(self, run_id: str, timeout: float | None = None) -> RunRecord:
        return _ReadClient(self).wait_for_run(run_id, timeout)

    def cancel_run(self, run_id: str) -> bool:
        return _ReadClient(self).cancel_run(run_id)

    def retry_run(self, run_id: str) -> None:
        """``Client.retry_run``; like ``cancel_run`` it never migrates (a failed run lives in
        a migrated database)."""
        _ReadClient(self).retry_run(run_id)

    def list_runs(
        self,
        *,
        flow: type[Flow] | str | None = None,
        status: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[RunRecord]:
        return _ReadClient(self).list_runs(flow=flow, status=status, limit=limit, offset=offset)

    def migrate(self) -> list[str]:
        return self.store.migrate()

    def worker(
        self,
        *,
        concurrency: int = WorkerOptions.concurrency,
        step_threads: int = WorkerOptions.step_threads,
        poll_interval: float = WorkerOptions.poll_interval,
        lease_margin: float = WorkerOptions.lease_margin,
        heartbeat_interval: float | None = WorkerOptions.heartbeat_interval,
        reap_interval: float = WorkerOptions.reap_interval,
        shutdown_grace: float = WorkerOptions.shutdown_grace,
        max_batch: int = WorkerOptions.max_batch,
        retention: Retention | None = None,
        schedule_interval: float = WorkerOptions.schedule_interval,
    ) -> Worker:
        """A flow worker for this app's flows (``WorkerOptions`` says what each option does);
        records the flows' versions first. With a ``retention``, the worker also deletes what
        it says is old, in small batches every ``WorkerOptions.purge_interval`` seconds. With
        schedules, it stores them (``sync_schedules``) and fires their due ticks every
        ``schedule_interval`` seconds."""
        for flow in self.registry:
            self.store.ensure_flow(flow.definition)
        self.sync_schedules()
        return Worker(
            self.store,
            self.registry,
            dispatch=self._step_dispatch if self._aggregates else None,
            purge=None if retention is None or not retention.enabled else self._purger(retention),
            monitor=self._open().monitor,
            schedules=self.fire_schedules if self.schedules else None,
            options=WorkerOptions(
                concurrency=concurrency,
                step_threads=step_threads,
                poll_interval=poll_interval,
                lease_margin=lease_margin,
                heartbeat_interval=heartbeat_interval,
                reap_interval=reap_interval,
                shutdown_grace=shutdown_grace,
                max_batch=max_batch,
                schedule_interval=schedule_interval,
            ),
        )

    # --- cron schedules ------------------------------------------------------------------------
    def sync_schedules(self) -> None:
        """Store this app's schedules (a worker does it as it starts): new ones from now on,
        changed ones updated, unchanged ones untouched. A schedule of a slug that is neither
        registered nor stored raises ``FlowNotFoundError`` first, and nothing is written."""
        if not self.schedules:
            return
        for schedule in self.schedules:
            definition = self.client.flow_definition(schedule.flow_slug)
            check_map_input(definition, schedule.input_json)
        self._open().schedules.sync(self.schedules)

    def fire_schedules(self) -> list[str]:
        """Fire the due ticks of this app's schedules now and return the run ids started: what
        each worker's loop does every ``schedule_interval`` seconds. Each tick starts one run
        however many processes call this at once."""
        store = self._open().schedules
        started: list[str] = []
        for name in store.due([s.key for s in self.schedules]):
            try:
                started += store.fire(name, self.client.flow_definition)
            except DatabaseUnavailableError:
                raise  # the worker waits the outage out
            except TideflowError as exc:
                # The tick's run cannot start (its flow's stored version is gone, or now takes
                # an array its input is not): nothing was written, the tick waits and fires
                # once that is fixed. Said once per problem, not every second.
                problem = (name, str(exc))
                if problem not in self._schedule_problems:
                    self._schedule_problems.add(problem)
                    log.error("schedule %s cannot fire its due tick: %s", name, exc)
        if started:
            log.info("cron schedules started %d run(s): %s", len(started), ", ".join(started))
        return started

    def list_schedules(self) -> list[ScheduleRecord]:
        """Every stored schedule with its next tick (``tideflow schedules``); a read, like
        ``list_runs``: it creates and migrates nothing."""
        self.read_store()
        return self._open().schedules.list_schedules()

    def schedule_ticks(self, name: str, limit: int = 20) -> list[TickRecord]:
        """A schedule's newest fired ticks and their runs, newest first (a read)."""
        self.read_store()
        return self._open().schedules.ticks(name, limit)

    def _purger(self, retention: Retention) -> Callable[[Callable[[], bool]], object]:
        """A worker's background retention pass: small batches with a short pause between full
        ones, so that a first pass over a large backlog leaves the database to the hot path."""

        def purge_pass(stop: Callable[[], bool]) -> Purged:
            done = self._purge(retention, stop, pause=0.05)
            if done.total:
                log.info(
                    "retention: deleted %d run(s), %d idempotency key(s), %d retried dead "
                    "letter(s), %d ended process instance(s)",
                    done.runs,
                    done.idempotency_keys,
                    done.dead_letters,
                    done.process_instances,
                )
            return done

        return purge_pass

    def purge(
        self,
        older_than: float | None = None,
        *,
        idempotency_keys_older_than: float | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> Purged:
        """Delete, now, the runs that ended more than ``older_than`` seconds ago (with their
        steps and tasks), the dead letters retried and the process instances ended that long
        ago, and the idempotency keys older than ``idempotency_keys_older_than`` - in batches
        of ``batch_size`` rows, one short transaction each, so that workers running meanwhile
        are not held up. ``tideflow purge`` calls this. Like ``cancel_run`` it changes only rows
        a migrated database holds, so it creates no schema (``SchemaMissingError`` without one).
        ``InvalidRetentionError`` for a window or size that is not positive."""
        retention = Retention(older_than, idempotency_keys_older_than, batch_size)
        self.read_store()  # never creates the schema
        return self._purge(retention)

    def _purge(
        self, retention: Retention, stop: Callable[[], bool] = lambda: False, pause: float = 0.0
    ) -> Purged:
        stores = self._open()
        return purge(
            retention,
            flows=stores.flows,
            events=stores.events,
            handlers=stores.handlers,
            processes=stores.processes,
            stop=stop,
            pause=pause,
        )

    def _step_dispatch(self, command: Command, key: str, correlation_id: str | None) -> Any:
        """A step's ``ctx.dispatch``: the run's correlation, and a key that makes a retried
        step's commands land once (``StepContext.dispatch``)."""
        changes: dict[str, Any] = {}
        if command.idempotency_key is None:
            changes["idempotency_key"] = key
        if correlation_id is not None and command.correlation_id == command.command_id:
            changes["correlation_id"] = correlation_id
        return self.dispatch(replace(command, **changes) if changes else command)

    def run_worker(
        self,
        *,
        until_idle: bool = False,
        concurrency: int = WorkerOptions.concurrency,
        step_threads: int = WorkerOptions.step_threads,
        poll_interval: float = WorkerOptions.poll_interval,
        lease_margin: float = WorkerOptions.lease_margin,
        heartbeat_interval: float | None = WorkerOptions.heartbeat_interval,
        reap_interval: float = WorkerOptions.reap_interval,
        shutdown_grace: float = WorkerOptions.shutdown_grace,
        max_batch: int = WorkerOptions.max_batch,
        retention: Retention | None = None,
        handler_lease: float = HandlerRunnerOptions.lease_ttl,
        handler_batch_size: int | None = None,
        schedule_interval: float = WorkerOptions.schedule_interval,
    ) -> None:
        """Run a worker in this thread until SIGINT/SIGTERM or, with ``until_idle``, until
        there is nothing left to do. One worker process runs both the flows and the event
        handlers of this app.

        Failover: ``lease_margin`` is how long the tasks of a worker that died (or lost the
        database) wait before another worker retries them, ``heartbeat_interval`` (default
        ``lease_margin / 3``) how often a live worker renews them; ``handler_lease`` is the same
        delay for event handlers. Shorter means faster failover and more writes while idle.
        ``handler_batch_size`` overrides every handler's ``batch_size`` (events per batch
        transaction). ``retention`` (default: keep everything) has the worker delete old runs,
        idempotency keys, retried dead letters and ended process instances in small background
        batches (``Retention``; docs/concepts/operations.md).

        Stopping: the first SIGINT/SIGTERM stops gracefully - nothing new is claimed, running
        tasks and handler batches get ``shutdown_grace`` seconds to finish, then the tasks still
        running are released to the queue without counting the attempt, and this returns. A
        second signal stops at once (running tasks are released now) and raises
        ``KeyboardInterrupt``.

        A database outage is waited out, never raised. Raises only for a bug in tideflow: the
        other half (flows or handlers) is then stopped gracefully and the error re-raised."""

        serving = self.serving(
            concurrency=concurrency,
            step_threads=step_threads,
            poll_interval=poll_interval,
            lease_margin=lease_margin,
            heartbeat_interval=heartbeat_interval,
            reap_interval=reap_interval,
            shutdown_grace=shutdown_grace,
            max_batch=max_batch,
            retention=retention,
            handler_lease=handler_lease,
            handler_batch_size=handler_batch_size,
            schedule_interval=schedule_interval,
        )
        signals = 0

        def on_signal(name: str) -> None:
            nonlocal signals
            signals += 1
            if signals == 1:
                log.info(
                    "%s: stopping gracefully (up to %gs for running work); send it again "
                    "to stop at once",
                    name,
                    shutdown_grace,
                )
                serving.stop()
            else:
                log.warning("%s again: stopping now; running tasks go back to the queue", name)
                serving.stop(force=True)

        async def main() -> None:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                # Not possible outside the main thread; the caller then stops the worker itself.
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, on_signal, sig.name)
            try:
                await serving.run(until_idle=until_idle)
            finally:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    with contextlib.suppress(NotImplementedError, RuntimeError):
                        loop.remove_signal_handler(sig)

        asyncio.run(main())
        if signals > 1:
            raise KeyboardInterrupt

    def serving(
        self,
        *,
        concurrency: int = WorkerOptions.concurrency,
        step_threads: int = WorkerOptions.step_threads,
        poll_interval: float = WorkerOptions.poll_interval,
        lease_margin: float = WorkerOptions.lease_margin,
        heartbeat_interval: float | None = WorkerOptions.heartbeat_interval,
        reap_interval: float = WorkerOptions.reap_interval,
        shutdown_grace: float = WorkerOptions.shutdown_grace,
        max_batch: int = WorkerOptions.max_batch,
        retention: Retention | None = None,
        handler_lease: float = HandlerRunnerOptions.lease_ttl,
        handler_batch_size: int | None = None,
        schedule_interval: float = WorkerOptions.schedule_interval,
    ) -> Serving:
        """What ``run_worker`` runs - a flow worker and, when the app has handlers, a handler
        runner - not started: ``await serving.run()`` in a loop of your own, ``stop()`` to end
        it (``app.aio.run_worker`` and ``app.aio.worker`` do both). Options as
        ``run_worker``'s."""

        def make_worker() -> Worker:
            return self.worker(
                concurrency=concurrency,
                step_threads=step_threads,
                poll_interval=poll_interval,
                lease_margin=lease_margin,
                heartbeat_interval=heartbeat_interval,
                reap_interval=reap_interval,
                shutdown_grace=shutdown_grace,
                max_batch=max_batch,
                retention=retention,
                schedule_interval=schedule_interval,
            )

        worker = make_worker()
        runner = (
            self.handler_runner(
                worker_id=worker.worker_id,
                options=HandlerRunnerOptions(
                    poll_interval=poll_interval,
                    lease_ttl=handler_lease,
                    shutdown_grace=shutdown_grace,
                    batch_size=handler_batch_size,
                ),
            )
            if self.handlers
            else None
        )
        return Serving(make_worker, runner, worker)

    def close(self) -> None:
        if self._stores is not None:
            self._stores.close()
            self._stores = None
            self._dispatcher = None

    def __enter__(self) -> App:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Client(StoreClient):
    """Runs on a database, for a process that only starts and follows them - a web app, a
    script: ``Client(url).start_flow("checkout", {...})`` starts the flow's latest stored
    version (its workers store each flow's shape), without the flows' code; pass ``flows=``
    (classes or import paths) to start and check them from their code instead. It neither
    migrates nor creates a database (``tideflow migrate`` does): starting on a database without
    the schema raises ``SchemaMissingError`` / ``SchemaNotReadyError``. Close it (or use it as
    a context manager) to close its connections. ``tideflow.client.Client`` is the same API
    over a flow store an App hands it."""

    def __init__(
        self,
        database_url: str | None = None,
        *,
        flows: Iterable[type[Flow] | str] = (),
    ) -> None:
        registry = FlowRegistry()
        for flow in flows:
            registry.register(flow)
        self._opened = open_store(database_url, create=False)
        super().__init__(self._opened, registry)

    def close(self) -> None:
        self._opened.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
