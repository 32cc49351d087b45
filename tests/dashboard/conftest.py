"""The browser under test: Debian's Chromium driven by Playwright for Python.

Playwright's own browser download needs the internet; Debian's ``chromium`` package does not
(``apt-get install -y chromium``), so the session installs it when ``/usr/bin/chromium`` is
missing - once, under a file lock, so that parallel test runs do not run apt together - and
launches it with ``executable_path``. Under ``CI=true`` a browser that cannot be had fails the
run; elsewhere it skips the browser tests with the reason.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_examples import load_example
from tideflow import App

CHROMIUM = "/usr/bin/chromium"
LOCK = Path("/tmp/tideflow-chromium-install.lock")


def _apt_install() -> str | None:
    """Install Debian's chromium; None when done, else why not."""
    if shutil.which("apt-get") is None:
        return "no apt-get on this machine: install Chromium and put it at /usr/bin/chromium"
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*sudo, "apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    done = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
    if done.returncode != 0:  # a fresh machine may have no package lists yet
        subprocess.run([*sudo, "apt-get", "update"], capture_output=True, env=env, timeout=600)
        done = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
    if done.returncode != 0:
        return f"apt-get install chromium failed: {done.stderr.strip()[-500:]}"
    return None


@pytest.fixture(scope="session")
def chromium() -> str:
    """The path of a Chromium to launch, installed first if need be."""
    path = os.environ.get("TIDEFLOW_CHROMIUM", CHROMIUM)
    if not os.path.exists(path):
        with LOCK.open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another session may be installing it now
            why = None if os.path.exists(path) else _apt_install()
        if why is not None or not os.path.exists(path):
            message = why or f"no Chromium at {path} after installing it"
            if os.environ.get("CI") == "true":
                pytest.fail(f"browser tests cannot run: {message}")
            pytest.skip(f"browser tests need Chromium: {message}")
    return path


@pytest.fixture
def browser_page(chromium: str) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(20_000)
        try:
            yield page
        finally:
            browser.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    """A dashboard served by uvicorn in a thread of this process."""

    def __init__(self, asgi: object) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(asgi, host="127.0.0.1", port=self.port, log_level="warning")  # type: ignore[arg-type]
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the dashboard did not start within 20 s")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def saga_app(db_url: str) -> Iterator[App]:
    example = load_example("order_saga")
    example.main(db_url)
    app: App = example.shop(db_url)
    event = next(iter(app.event_store.read_all(None, limit=1)))
    with app.event_store.transaction() as tx:
        app.handler_store.record_dead_letter(tx, "audit", event, "RuntimeError: audit is down", 3)
    yield app
    app.close()
