"""Where a drain's time goes, per run: python benchmarks/profile_drain.py [--src A --src B].

For issue 13's "large database" drain: one worker process (bench_flows.drain_in_worker_process,
the flows of bench_flows_defs) drains an "empty" database (--small runs queued, nothing else)
and a "large" one (--history finished runs bulk-inserted and ANALYZEd, then --backlog queued), at
each --levels concurrency, for each --src tree (a tideflow checkout's src folder: before/after),
interleaved round by round. Per drain it prints runs/s and what a loaded machine disturbs less:

- the CPU time per run of the worker process and of the server backends serving its database
  (read from /proc every 50 ms, so PostgreSQL must run on this machine);
- buffer accesses per run, per table and index (pg_statio deltas: which B-tree grew);
- the server time per run of each tideflow function (track_functions = 'all', set on the
  throwaway database only).

Each tree migrates its own copy of the large database (built once per tree, then copied per
drain with CREATE DATABASE ... TEMPLATE, a file copy), so every drain starts from the same state.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from benchdb import ADMIN_URL  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
STATIO = """
SELECT relname || '/' || indexrelname, idx_blks_hit + idx_blks_read FROM pg_statio_user_indexes
UNION ALL SELECT relname, heap_blks_hit + heap_blks_read FROM pg_statio_user_tables
"""
FUNCTIONS = "SELECT funcname, calls, total_time FROM pg_stat_user_functions ORDER BY 3 DESC"


def _url(name: str) -> str:
    return f"{ADMIN_URL.rsplit('/', 1)[0]}/{name}"


def _cpu(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK


def _in_tree(src: str, *args: str) -> str:
    """Run this script's ``--one``/``--template`` step with ``src``'s tideflow; its output."""
    env = {**os.environ, "PYTHONPATH": f"{src}:{HERE}"}
    done = subprocess.run(
        [sys.executable, __file__, *args], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise RuntimeError(done.stderr)
    return done.stdout


def build_template(history: int) -> None:
    """(In the tree's interpreter.) Migrate a new database, insert the history, ANALYZE: its
    name on stdout."""
    from bench_flows_defs import FLOWS, NoOp
    from largedb import analyze, insert_runs

    from tideflow import App

    name = f"tideflow_bench_t{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    with App(_url(name), flows=FLOWS) as app:
        app.migrate()
        app.store.ensure_flow(NoOp.definition)
    if history:
        insert_runs(_url(name), history)
    analyze(_url(name))
    print(name)


def one_drain(template: str, n: int, level: str) -> None:
    """(In the tree's interpreter.) Copy ``template``, queue ``n`` runs, drain them: the
    figures as JSON on stdout."""
    import bench_flows
    from bench_flows_defs import NoOp
    from largedb import start_backlog

    name = f"tideflow_bench_p{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        admin.execute(f"ALTER DATABASE \"{name}\" SET track_functions = 'all'")
    url = _url(name)
    try:
        start_backlog(url, NoOp.definition, n, prefix="p")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
            before = dict(conn.execute(STATIO).fetchall())
        seen: dict[int, list[float]] = {}
        stop = threading.Event()

        def watch() -> None:
            with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
                while not stop.is_set():
                    for (pid,) in admin.execute(
                        "SELECT pid FROM pg_stat_activity WHERE datname = %s", (name,)
                    ).fetchall():
                        now = _cpu(pid)
                        if now is not None:
                            seen.setdefault(pid, [now, now])[1] = now
                    time.sleep(0.05)

        watcher = threading.Thread(target=watch)
        watcher.start()
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        seconds = bench_flows.drain_in_worker_process(
            url, None if level == "default" else int(level)
        )
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        stop.set()
        watcher.join()
        time.sleep(0.6)  # the worker's backends flush their function statistics as they exit
        with psycopg.connect(url, autocommit=True) as conn:
            after = dict(conn.execute(STATIO).fetchall())
            functions = conn.execute(FUNCTIONS).fetchall()
        worker = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
        buffers = {k: (v - before.get(k, 0)) / n for k, v in after.items()}
        print(
            json.dumps(
                {
                    "runs_s": n / seconds,
                    "worker_us": worker / n * 1e6,
                    "server_us": sum(b - a for a, b in seen.values()) / n * 1e6,
                    "buffers": sum(buffers.values()),
                    "top_buffers": sorted(buffers.items(), key=lambda kv: -kv[1])[:6],
                    # start_run_v2 and the steps it queues ran before the clock: left out.
                    "functions_us": {
                        f: t / n * 1000
                        for f, _calls, t in functions
                        if f not in ("start_run_v2", "_queue_step_v1")
                    },
                }
            )
        )
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", action="append", help="a tideflow src folder (repeatable)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--history", type=int, default=1_000_000)
    parser.add_argument("--backlog", type=int, default=50_000)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--levels", default="default,256")
    parser.add_argument("--template", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.template is not None:
        build_template(args.template)
        return
    if args.one:
        one_drain(args.one[0], int(args.one[1]), args.one[2])
        return
    srcs = args.src or [str(HERE.parent / "src")]
    templates: dict[tuple[str, str], str] = {}
    for src in srcs:
        templates[src, "empty"] = _in_tree(src, "--template", "0").strip()
        templates[src, "large"] = _in_tree(src, "--template", str(args.history)).strip()
    results: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    try:
        for r in range(args.rounds):
            for level in args.levels.split(","):
                for kind, n in (("empty", args.small), ("large", args.backlog)):
                    for src in srcs if r % 2 == 0 else srcs[::-1]:
                        got = json.loads(
                            _in_tree(src, "--one", templates[src, kind], str(n), level)
                        )
                        results.setdefault((src, kind, level), []).append(got)
                        fns = ", ".join(f"{f} {us:.0f}" for f, us in got["functions_us"].items())
                        print(
                            f"round {r + 1} {src} {kind} c={level}: {got['runs_s']:,.0f} runs/s, "
                            f"worker {got['worker_us']:.0f} us/run, server {got['server_us']:.0f} "
                            f"us/run, {got['buffers']:.1f} buffers/run; functions us/run: {fns}",
                            flush=True,
                        )
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            for name in templates.values():
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print("\nmedians (min-max) over rounds:")
    for (src, kind, level), got in sorted(results.items()):
        rate = [g["runs_s"] for g in got]
        print(
            f"{src} {kind} c={level}: {statistics.median(rate):,.0f} "
            f"({min(rate):,.0f}-{max(rate):,.0f}) runs/s, server "
            f"{statistics.median(g['server_us'] for g in got):.0f} us/run, worker "
            f"{statistics.median(g['worker_us'] for g in got):.0f} us/run, "
            f"{statistics.median(g['buffers'] for g in got):.1f} buffers/run"
        )


if __name__ == "__main__":
    main()
