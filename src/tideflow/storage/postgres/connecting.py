"""Connections of PostgreSQL's own, outside the pool: their settings, the first connection that
says at once whether the server is there, and the LISTEN loop."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from tideflow.errors import StorageError
from tideflow.retrying import Backoff
from tideflow.storage.postgres.errors import translate
from tideflow.storage.urls import redact_url

log = logging.getLogger(__name__)


#: Connection settings for every connection tideflow opens, unless the URL sets them: give up
#: connecting after 5 s (libpq's default waits for the operating system, minutes when a host is
#: unreachable), and TCP keepalives, so that a peer that vanished without closing the connection
#: (a network partition, a frozen VM) is noticed in about 25 s - a listening connection only
#: reads and would otherwise wait forever, a pooled one would hang its caller.
CONNECT_DEFAULTS: dict[str, Any] = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}


def connect_kwargs(url: str) -> dict[str, Any]:
    """``CONNECT_DEFAULTS`` minus what ``url`` sets itself (the user's settings win)."""
    try:
        given = conninfo_to_dict(url)
    except psycopg.Error:  # a malformed URL: let connecting report it
        given = {}
    return {k: v for k, v in CONNECT_DEFAULTS.items() if k not in given}


def check_connection(url: str) -> None:
    """One direct connection attempt, failing in moments with a one-line ``StorageError``: a
    pool retries until its timeout, which would turn "server down" or "no such database" into
    a silent ten-second stall."""
    try:
        psycopg.connect(url, connect_timeout=5).close()
    except psycopg.Error as exc:
        raise connect_error(url, exc) from exc


def connect_error(url: str, exc: BaseException) -> StorageError:
    """``DatabaseUnavailableError`` when the server is down or restarting (worth waiting
    for), a plain ``StorageError`` when the URL is wrong (no such database, bad password)."""
    kind = type(translate(exc))
    if not issubclass(kind, StorageError):  # pragma: no cover - translate maps to storage errors
        kind = StorageError
    detail = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return kind(
        f"cannot connect to PostgreSQL at {redact_url(url)}: {detail or type(exc).__name__}"
    )


def listen_forever(
    url: str,
    channel: str,
    on_notify: Callable[[str | None], None],
    stopping: threading.Event,
    ignore: Callable[[int], bool] = lambda pid: False,
) -> None:
    """LISTEN on ``channel`` and call ``on_notify`` with each notification's payload until
    ``stopping``.

    A lost connection (a server restart) is retried with ``Backoff`` - one warning per outage,
    one info line when listening again - and ``on_notify(None)`` is called once after each
    reconnect: notifications sent while nobody listened are gone, so the subscribers look for
    themselves (a catch-up poll) instead of waiting for their next poll interval. Meanwhile
    they poll.
    A notification sent by a backend ``ignore`` names (this process's own notifier, whose
    subscribers were woken in the process before it notified) wakes nobody a second time."""
    backoff = Backoff()
    lost = False
    while not stopping.is_set():
        try:
            with psycopg.connect(url, autocommit=True, **connect_kwargs(url)) as conn:
                conn.execute(f"LISTEN {channel}")
                if lost:
                    lost = False
                    log.info("LISTEN %s re-established", channel)
                    on_notify(None)
                backoff.reset()
                while not stopping.is_set():
                    for notify in conn.notifies(timeout=0.5, stop_after=1):
                        if not ignore(notify.pid):
                            on_notify(notify.payload)
        except psycopg.Error as exc:
            if stopping.is_set():
                return
            if not lost:
                lost = True
                log.warning(
                    "LISTEN %s connection lost (%s); subscribers poll until it is back",
                    channel,
                    " ".join(str(exc).split()) or type(exc).__name__,
                )
            stopping.wait(backoff.next_delay())
