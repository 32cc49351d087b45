"""A worker process survives PostgreSQL restarts under load (issue 7, section 1).

The test runs a PostgreSQL server of its own (initdb into a temporary directory, on a free port),
starts ``tideflow worker`` on it with a flow, a projection and a process manager (an undoable
command, a durable timer, a flow that reports back, an automatic undo when a charge is refused),
and keeps starting runs, appending events and booking while it restarts the server three times:
``restart -m fast``, ``restart -m immediate`` (a crash: no shutdown checkpoint, connections cut
mid-transaction) and a stop, two seconds down, start. Then every run completes, the projection
counts every event exactly once, no step ran twice in one attempt, every booking's saga ended as it
should with each command, timer, undo and flow exactly once, and the worker is the same process it
was at the start - with warnings in its log and no traceback.

Skipped when the PostgreSQL server binaries are missing, except under CI=true, where that fails.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.polling import wait_until
from tideflow import App, DatabaseUnavailableError, RunAlreadyExistsError
from tideflow.events import Command
from tideflow.events.errors import DuplicateEventIdError
from tideflow.events.model import ExpectedVersion, NewEvent

ROOT = Path(__file__).resolve().parent.parent


class Server:
    """A throwaway PostgreSQL server run as the ``postgres`` user (initdb refuses root)."""

    def __init__(self, bindir: Path, base: Path) -> None:
        self.bindir = bindir
        self.base = base
        self.data = base / "data"
        self.port = _free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, check=check, capture_output=True, text=True, timeout=60)

    def init(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres")
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "--no-instructions",
        )

    def ctl(self, *args: str) -> None:
        options = (
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off"
        )  # commits stay durable: -m immediate
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.base / "server.log"),
            "-w",
            "-t",
            "30",
            "-o",
            options,
            *args,
        )

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server() -> Iterator[Server]:
    found = shutil.which("pg_config")
    bindir = None
    if found:
        out = subprocess.run([found, "--bindir"], capture_output=True, text=True, check=False)
        candidate = Path(out.stdout.strip())
        if (candidate / "initdb").exists() and (candidate / "pg_ctl").exists():
            bindir = candidate
    if bindir is None or (os.geteuid() == 0 and not shutil.which("runuser")):
        if os.environ.get("CI") == "true":
            pytest.fail(
                "the restart test needs PostgreSQL's server binaries (pg_config "
                "--bindir) under CI=true"
            )
        pytest.skip("PostgreSQL server binaries not found (pg_config --bindir)")
    base = Path(tempfile.mkdtemp(prefix="tideflow-restart-"))
    srv = Server(bindir, base)
    try:
        srv.init()
        srv.ctl("start")
        yield srv
    finally:
        srv.stop()
        shutil.rmtree(base, ignore_errors=True)


class _Never(Exception):
    """Nothing a dispatch raises: sending the same Command again after an outage replays it."""


class Load:
    """Starts runs and appends events from a thread until stopped, through the outages: a call
    that still fails after the client's own retries is repeated with the same run id / event
    id, so the sets below are exactly what the database holds."""

    def __init__(self, url: str) -> None:
        from tests.restart.app import Venue

        self.app = App(url, migrate=False, aggregates=[Venue])
        self.runs: set[str] = set()
        self.events: set[uuid.UUID] = set()
        self.bookings: dict[str, bool] = {}
        """Booking id -> whether its charge is refused (every third)."""
        self.gave_up = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="load")

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _work(self) -> None:
        from tests.restart.app import Pipeline

        i = 0
        while not self._stop.is_set():
            i += 1
            start = functools.partial(self.app.start_flow, Pipeline, {"n": i}, run_id=f"run-{i}")
            while not self._retry(start, RunAlreadyExistsError):
                pass
            self.runs.add(f"run-{i}")
            event = NewEvent("Tick", {"i": i})
            append = functools.partial(
                self.app.event_store.append, f"stream-{i % 7}", [event], ExpectedVersion.ANY
            )
            while not self._retry(append, DuplicateEventIdError):
                pass
            self.events.add(event.event_id)
            booking, refuse = f"b-{i}", i % 3 == 0
            book = Command("Book", booking, {"refuse": refuse})  # one command_id: sent once
            while not self._retry(functools.partial(self.app.dispatch, book), _Never):
                pass
            self.bookings[booking] = refuse
            time.sleep(0.01)

    def _retry(self, call: Callable[[], object], done_already: type[Exception]) -> bool:
        try:
            call()
            return True
        except done_already:
            return True  # an earlier try committed before its connection dropped
        except DatabaseUnavailableError:
            self.gave_up += 1
            time.sleep(0.2)
            return False


def test_a_worker_survives_three_postgres_restarts_under_load(
    server: Server, tmp_path: Path
) -> None:
    admin = psycopg.connect(server.url, autocommit=True)
    admin.execute("CREATE DATABASE tideflow")
    admin.close()
    url = server.url.rsplit("/", 1)[0] + "/tideflow"
    with App(url) as app:
        app.migrate()
    marks = tmp_path / "marks"
    marks.mkdir()
    env = {
        **os.environ,
        "TIDEFLOW_RESTART_MARKS": str(marks),
        "PYTHONPATH": str(ROOT),
        "COLUMNS": "300",
    }
    stderr = (tmp_path / "worker.err").open("w+")
    worker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from tideflow.cli.main import main; main()",
            "worker",
            "--app",
            "tests.restart.app:app",
            "-d",
            url,
            "--concurrency",
            "8",
            "--poll-interval",
            "0.1",
            "--lease-margin",
            "3",
            "--heartbeat-interval",
            "0.5",
            "--handler-lease",
            "3",
            "--shutdown-grace",
            "5",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )
    pid = worker.pid
    load = Load(url)
    try:

        def running(outages: int) -> None:
            """Wait until, after ``outages`` outages, the worker listens on both channels again
            and the load has started more runs: the next outage hits a working system (not
            one still reconnecting from the last, which would merge two outages into one)."""
            before = len(load.runs)

            def back() -> bool:
                if outages == 0:
                    with psycopg.connect(url, autocommit=True) as c:
                        row = c.execute(
                            "SELECT count(DISTINCT query) FROM pg_stat_activity "
                            "WHERE query IN ('LISTEN tideflow_tasks', "
                            "'LISTEN tideflow_events')"
                        ).fetchone()
                    listening = row is not None and row[0] == 2
                else:
                    listening = _tail(stderr, 200_000).count(" re-established") >= 2 * outages
                return listening and len(load.runs) >= before + 10

            wait_until(
                back,
                timeout=45,
                interval=0.1,
                details=lambda: _tail(stderr),
                what=f"the worker listening and the load going on after {outages} outage(s)",
            )

        with load:
            running(0)
            server.ctl("-m", "fast", "restart")
            running(1)
            server.ctl("-m", "immediate", "restart")
            running(2)
            server.ctl("-m", "fast", "stop")
            time.sleep(2.0)  # two seconds down
            server.ctl("start")
            running(3)
        assert worker.poll() is None, _tail(stderr)
        assert len(load.runs) > 20 and len(load.events) > 20

        with psycopg.connect(url) as conn:

            def caught_up() -> bool:
                done = conn.execute(
                    "SELECT count(*) FROM tideflow.runs "
                    "WHERE status = 'completed' AND flow_slug = 'pipeline'"
                ).fetchone()
                seen = _count(conn, "SELECT count(*) FROM tally_seen")
                ended = _count(
                    conn,
                    "SELECT count(*) FROM tideflow.process_instances "
                    "WHERE manager = 'booking' AND status IN ('completed', 'compensated')",
                )
                return (
                    bool(done and done[0] == len(load.runs))
                    and seen == len(load.events)
                    and ended == len(load.bookings)
                )

            def pending() -> str:
                counts = [
                    _count(conn, sql)
                    for sql in (
                        "SELECT count(*) FROM tideflow.runs WHERE status = 'completed' "
                        "AND flow_slug = 'pipeline'",
                        "SELECT count(*) FROM tally_seen",
                        "SELECT count(*) FROM tideflow.process_instances WHERE manager = "
                        "'booking' AND status IN ('completed', 'compensated')",
                    )
                ]
                return (
                    f"runs, events, bookings done: {counts} of "
                    f"{[len(load.runs), len(load.events), len(load.bookings)]}\n"
                    + repr(
                        conn.execute(
                            "SELECT * FROM tideflow.tasks WHERE status <> 'completed'"
                        ).fetchall()
                    )
                    + repr(conn.execute("SELECT * FROM tideflow.event_handlers").fetchall())
                    + repr(
                        conn.execute(
                            "SELECT process_id, status, error FROM tideflow.process_instances "
                            "WHERE status NOT IN ('completed', 'compensated')"
                        ).fetchall()
                    )
                    + f"\n{_tail(stderr)}"
                )

            wait_until(
                caught_up,
                timeout=45,
                interval=0.2,
                details=pending,
                what=f"{len(load.runs)} runs completed, {len(load.events)} events seen",
            )
            # The projection: each event exactly once (the primary key would have refused a
            # second delivery, failing the batch), totals that add up, no dead letters.
            assert _count(conn, "SELECT coalesce(sum(n), 0) FROM tally_totals") == len(load.events)
            assert _count(conn, "SELECT count(*) FROM tideflow.dead_letters") == 0
            assert conn.execute(
                "SELECT status FROM tideflow.event_handlers WHERE name = 'tally'"
            ).fetchone() == ("running",)
            attempts = {
                (r, s): a
                for r, s, a in conn.execute(
                    "SELECT run_id, step_slug, attempts FROM tideflow.tasks "
                    "WHERE run_id LIKE 'run-%'"
                )
            }
            _check_bookings(conn, load.bookings)
        assert len(attempts) == 2 * len(load.runs)
        # Steps: exactly one execution of the attempt that completed, never two executions of
        # one attempt (a retry after a lost lease is a new attempt).
        executions = Counter(tuple(p.name.split("~")[:3]) for p in marks.iterdir())
        assert max(executions.values()) == 1, [k for k, n in executions.items() if n > 1]
        for (run_id, slug), attempt in attempts.items():
            assert (run_id, slug, str(attempt)) in executions, (run_id, slug, attempt)
        # Both listeners come back (backoff: at most ~5 s after the server does).
        wait_until(
            lambda: _tail(stderr, 200_000).count(" re-established") >= 6,
            timeout=15,
            interval=0.1,
            what="6 lines 're-established'",
            details=lambda: _tail(stderr),
        )
        assert worker.poll() is None and worker.pid == pid  # the same process, still running
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
        try:
            rc = worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            rc = worker.wait()
        load.app.close()
    log = _tail(stderr, 200_000)
    assert rc == 0, log
    assert "Traceback" not in log, log
    # Warned, once per outage and listener (the pool may have absorbed an outage before any
    # loop saw it: then the listeners' lines are the only ones), and said when it was back.
    assert log.count("LISTEN tideflow_tasks connection lost") == 3, log
    assert log.count("LISTEN tideflow_tasks re-established") == 3, log
    assert log.count("LISTEN tideflow_events re-established") == 3, log
    assert "error connecting" not in log, log  # the pool's per-attempt lines are kept quiet


def _check_bookings(conn: psycopg.Connection[Any], bookings: dict[str, bool]) -> None:
    """Every booking's saga ran exactly once through the restarts: each command's event is in
    its stream once, each timer fired once, each paid booking's ticket flow ran once and
    reported back; each refused one undid its hold once."""
    streams: dict[str, list[str]] = {}
    for stream_id, event_type in conn.execute(
        "SELECT stream_id, event_type FROM tideflow.events ORDER BY position"
    ):
        streams.setdefault(stream_id, []).append(event_type)
    statuses = dict(
        conn.execute(
            "SELECT state->>'booking', status FROM tideflow.process_instances "
            "WHERE manager = 'booking'"
        ).fetchall()
    )
    tickets = Counter(
        r[0]
        for r in conn.execute(
            "SELECT input->>'booking' FROM tideflow.runs WHERE flow_slug = 'ticket'"
        )
    )
    fired = Counter(
        r[0]
        for r in conn.execute(
            "SELECT data->>'booking' FROM tideflow.events WHERE event_type = 'Waited'"
        )
    )
    for booking, refused in bookings.items():
        assert fired[booking] == 1, (booking, fired[booking])
        if refused:
            assert statuses[booking] == "compensated", booking
            assert streams[f"venue-seat-{booking}"] == ["Held", "Released"], booking
            assert f"venue-pay-{booking}" not in streams and tickets[booking] == 0, booking
        else:
            assert statuses[booking] == "completed", booking
            assert streams[f"venue-seat-{booking}"] == ["Held"], booking
            assert streams[f"venue-pay-{booking}"] == ["Charged"], booking
            assert tickets[booking] == 1, booking
    assert _count(conn, "SELECT count(*) FROM tideflow.process_timers") == 0


def _count(conn: psycopg.Connection[tuple[int]], sql: str) -> int:
    try:
        row = conn.execute(sql).fetchone()
    except psycopg.errors.UndefinedTable:
        conn.rollback()
        return 0
    conn.commit()
    return int(row[0]) if row else 0


def _tail(stream: object, size: int = 6000) -> str:
    stream.flush()  # type: ignore[attr-defined]
    stream.seek(0)  # type: ignore[attr-defined]
    text: str = stream.read()  # type: ignore[attr-defined]
    return text[-size:]
