"""Clients waiting for runs - blocking and async - wait a PostgreSQL restart out (issue 12).

A PostgreSQL-only behaviour by nature: SQLite has no server to restart (its waits read a file).
The test runs a server of its own (``tests/test_restart.py``'s ``server`` fixture), parks ten
waits - five blocking, five async in one event loop - on runs that no worker runs yet, crashes
the server (``restart -m immediate``: every connection cut, the LISTEN one included), and only
then starts a worker. Every wait returns its completed run, none raises. Twice: with the waits
polling through the outage (every 0.2 s, meeting a dead server) and with them parked until a
notification (the fallback poll beyond the timeout: what wakes them is the LISTEN connection's
catch-up check after it reconnects, or the NOTIFY of the runs' ends).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.polling import wait_until
from tests.test_aio import WORKER_SCRIPT, Trio
from tests.test_restart import Server, server  # noqa: F401 - the fixture
from tests.threads import in_thread
from tideflow import App
from tideflow.runtime import waiting
from tideflow.storage.flow_store import SqlFlowStore

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("fallback", [0.2, 600.0], ids=["polling", "parked"])
def test_waits_wait_out_a_postgres_restart(
    server: Server,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    fallback: float,
) -> None:
    monkeypatch.setattr(waiting, "FALLBACK_POLL", fallback)
    with psycopg.connect(server.url, autocommit=True) as admin:
        admin.execute("CREATE DATABASE tideflow")
    url = server.url.rsplit("/", 1)[0] + "/tideflow"
    with App(url, flows=[Trio]) as app:
        app.migrate()
        run_ids = [app.start_flow(Trio, i) for i in range(10)]
        store = app.store
        assert isinstance(store, SqlFlowStore)
        blocking = [in_thread(lambda r=r: app.wait_for_run(r, timeout=120)) for r in run_ids[:5]]

        async def wait_async() -> list[str]:
            runs = await asyncio.gather(
                *(app.aio.wait_for_run(r, timeout=120) for r in run_ids[5:])
            )
            return [r.status for r in runs]

        loop_thread, loop_result = in_thread(lambda: asyncio.run(wait_async()))
        wait_until(lambda: store._run_watch.watching() == 10, what="ten parked waits")
        server.ctl("-m", "immediate", "restart")
        worker = subprocess.Popen([sys.executable, "-c", WORKER_SCRIPT, url], cwd=ROOT)
        try:
            for thread, _ in blocking:
                thread.join(timeout=150)
            loop_thread.join(timeout=150)
        finally:
            worker.terminate()
            worker.wait(timeout=30)
        results = [result for _, result in blocking]
        assert [r.get("error") for r in results] == [None] * 5
        assert [r["value"].status for r in results] == ["completed"] * 5
        assert loop_result.get("error") is None
        assert loop_result["value"] == ["completed"] * 5
