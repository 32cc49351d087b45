"""Wake event handlers on other connections after appends, without slowing the appends down.

Handler runners LISTEN on ``EVENTS_CHANNEL``; something has to NOTIFY it when events commit.
The obvious place - a ``pg_notify`` inside the append's own transaction - is the wrong one:
PostgreSQL serialises the commits of all transactions that notify (each takes one
database-wide lock from before its commit until after it, to keep the notification queue in
commit order), so concurrent appenders would stop sharing WAL flushes. Measured with pgbench on
the 2-core VM, one-row inserts from four clients: 5,300-5,700 commits/s plain, 3,100/s with a
pg_notify in each transaction - no better than one client.

So the notification is sent after the commit, from a connection of its own, by a background
thread that coalesces: however many appends report in while one NOTIFY is in flight, one more
follows it. Every commit is followed by at least one NOTIFY that starts after it, so a listener
never sleeps through an append, and an appender pays only for setting a flag. The notifying
connection runs with ``synchronous_commit = off``: a notification has nothing to make durable,
so its commit does not wait for a WAL flush either. And it sends at most one NOTIFY every
``min_interval`` (5 ms): each is a small transaction of its own, and on the 2-core VM one per
append cost a single appender 10-35% of its appends/s (none measurable at 5 ms); five
milliseconds of wake-up latency cost a handler nothing it would notice.

A lost connection is logged once per outage and retried with capped, jittered backoff (0.1 s up to
``retry_delay``, 5 s by default); runners poll in the meantime, as they would without
notifications at all, and their listeners wake them once when they reconnect.
"""

from __future__ import annotations

import logging
import threading

import psycopg

from tideflow.retrying import Backoff
from tideflow.storage.postgres.connecting import connect_kwargs

log = logging.getLogger(__name__)


class CoalescingNotifier:
    """Sends ``NOTIFY channel`` after ``poke()`` calls, at most one in flight. Thread-safe."""

    def __init__(
        self, url: str, channel: str, *, min_interval: float = 0.005, retry_delay: float = 5.0
    ) -> None:
        self._url = url
        self._channel = channel
        self._min_interval = min_interval
        self._retry_delay = retry_delay
        self._pending = threading.Event()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.backend_pid: int | None = None
        """The server process of the notifying connection: listeners of this process ignore
        its notifications (``listen_forever``'s ``ignore``)."""

    def poke(self) -> None:
        """Ask for a NOTIFY that starts after this call; returns at once."""
        self._pending.set()
        if self._thread is None:
            with self._start_lock:
                if self._thread is None and not self._closing.is_set():
                    self._thread = threading.Thread(
                        target=self._run, daemon=True, name=f"tideflow-notify-{self._channel}"
                    )
                    self._thread.start()

    def close(self, timeout: float = 2.0) -> None:
        """Send what is pending, then stop the thread and its connection."""
        with self._start_lock:
            self._closing.set()
            thread = self._thread
        self._pending.set()  # let the thread see the flag
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        sql = f"SELECT pg_notify('{self._channel}', '')"
        backoff = Backoff(maximum=max(self._retry_delay, 0.1))
        lost = False
        while True:
            try:
                with psycopg.connect(
                    self._url, autocommit=True, **connect_kwargs(self._url)
                ) as conn:
                    conn.execute("SET synchronous_commit = off")
                    self.backend_pid = conn.info.backend_pid
                    if lost:
                        lost = False
                        log.info("NOTIFY %s works again", self._channel)
                    backoff.reset()
                    while True:
                        self._pending.wait()
                        # Cleared before sending: a poke that lands during the NOTIFY asks for
                        # another, which then starts after that poke's commit.
                        self._pending.clear()
                        conn.execute(sql)
                        if self._closing.is_set() and not self._pending.is_set():
                            return
                        # Appends that land meanwhile share the next NOTIFY.
                        self._closing.wait(self._min_interval)
            except psycopg.Error as exc:
                if self._closing.is_set():
                    return
                if not lost:  # one line per outage, not one per try
                    lost = True
                    log.warning(
                        "NOTIFY %s failed (%s); handler runners poll until it works again",
                        self._channel,
                        " ".join(str(exc).split()),
                    )
                self._pending.set()  # the failed NOTIFY may not have gone out: send it again
                self._closing.wait(backoff.next_delay())
