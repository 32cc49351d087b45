"""What a client waiting for a run sees, against what the run took: python
benchmarks/bench_wait_latency.py [--backend sqlite|postgres|both] [--runs N]

Issue 12, item 3: for a three-step run and an idle worker, the p50 a client sees (from calling
``start_flow`` to ``wait_for_run`` returning the run with its steps) should be within 1 ms of
the run's own recorded duration (``finished_at - started_at``). Per backend, one worker process
(spawned, as in production, default options) and, interleaved run by run in this process:

  blocking   Client.wait_for_run: parked on the commit's wake-up (NOTIFY / SQLite's watcher)
  async      AsyncClient.wait_for_run on an event loop, the same way, holding no thread
  polling    the wait before issue 12 (kept here for the comparison): the run's status row
             read every 2 ms plus 10% of the time waited, then the whole run

For each: p50 / p99 of the client-seen time, of the recorded duration, and of their difference
(client - recorded, per run). Absolute figures on a shared 2-core machine are noisy; the modes
are interleaved so that they share the noise.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_flows_defs import FLOWS, Chain3
from benchdb import pg_database

from tideflow import App, RunRecord
from tideflow.storage.flow_contract import RUN_FINAL

MODES = ("blocking", "async", "polling")


def worker_main(url: str) -> None:
    app = App(url, flows=FLOWS)
    app.run_worker()


def wait_polling(app: App, run_id: str, timeout: float = 30.0) -> RunRecord:
    """The wait before issue 12: poll quickly at first, then back off in proportion."""
    store = app.read_store()
    started = time.monotonic()
    while True:
        if store.get_run(run_id, with_steps=False).status in RUN_FINAL:
            return store.get_run(run_id)
        now = time.monotonic()
        if now - started > timeout:
            raise TimeoutError(run_id)
        time.sleep(min(0.002 + 0.1 * (now - started), 0.5))


async def one(app: App, mode: str) -> tuple[float, float]:
    """One run: (client-seen ms, recorded ms)."""
    t0 = time.perf_counter()
    if mode == "async":
        run_id = await app.aio.start_flow(Chain3, {"x": 1})
        run = await app.aio.wait_for_run(run_id, timeout=30)
    else:
        run_id = app.start_flow(Chain3, {"x": 1})
        if mode == "blocking":
            run = app.wait_for_run(run_id, timeout=30)
        else:
            run = wait_polling(app, run_id)
    seen = (time.perf_counter() - t0) * 1000
    assert run.status == "completed" and len(run.steps) == 3 and run.duration is not None
    return seen, run.duration * 1000


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def measure(url: str, runs: int) -> dict[str, dict[str, list[float]]]:
    app = App(url, flows=FLOWS)
    app.migrate()
    ctx = mp.get_context("spawn")
    worker = ctx.Process(target=worker_main, args=(url,))
    worker.start()
    samples: dict[str, dict[str, list[float]]] = {
        m: {"seen": [], "recorded": [], "diff": []} for m in MODES
    }
    try:
        for mode in MODES:  # warm-up: the worker's first claim, connections, the LISTENs
            for _ in range(5):
                await one(app, mode)
        for _ in range(runs):
            for mode in MODES:
                seen, recorded = await one(app, mode)
                samples[mode]["seen"].append(seen)
                samples[mode]["recorded"].append(recorded)
                samples[mode]["diff"].append(seen - recorded)
                await asyncio.sleep(0.005)  # the worker idle again
    finally:
        worker.terminate()
        worker.join()
        app.close()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--runs", type=int, default=200, help="runs per mode and backend")
    args = parser.parse_args()
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    print(f"three-step runs, idle worker process, {args.runs} runs per mode (ms)")
    header = (
        f"{'backend':<9} {'wait':<9} {'seen p50':>9} {'seen p99':>9} {'run p50':>8} "
        f"{'run p99':>8} {'seen-run p50':>13} {'seen-run p99':>13}"
    )
    print(header)
    print("-" * len(header))
    for backend in backends:
        if backend == "postgres":
            url, drop = pg_database()
        else:
            url, drop = f"sqlite:///{tempfile.mkdtemp()}/bench.db", lambda: None
        try:
            samples = asyncio.run(measure(url, args.runs))
        finally:
            drop()
        for mode in MODES:
            s = samples[mode]
            print(
                f"{backend:<9} {mode:<9} {statistics.median(s['seen']):>9.2f} "
                f"{pct(s['seen'], 0.99):>9.2f} {statistics.median(s['recorded']):>8.2f} "
                f"{pct(s['recorded'], 0.99):>8.2f} {statistics.median(s['diff']):>13.2f} "
                f"{pct(s['diff'], 0.99):>13.2f}"
            )


if __name__ == "__main__":
    main()
