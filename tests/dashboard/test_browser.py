"""The dashboard in a real browser (Chromium through Playwright), on both backends: the runs
page lists a failed run; its page shows the DAG with the failed step marked and the traceback;
pressing retry runs it again, and the page - refreshing itself - shows it completed.

With ``TIDEFLOW_SCREENSHOTS=1`` the test also writes the screenshots of docs/images/ (taken on
SQLite)."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.dashboard.conftest import Served
from tests.observability.flows import Broken, Fixable
from tideflow import App
from tideflow.dashboard import create_app
from tideflow.events import NewEvent
from tideflow.events.model import ExpectedVersion

DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"


class BackgroundWorker:
    """A real worker (asyncio loop, thread pool) in a thread, stopped at the end."""

    def __init__(self, app: App) -> None:
        self.worker = app.worker(poll_interval=0.05, reap_interval=0.5)
        self.thread = threading.Thread(target=lambda: asyncio.run(self.worker.run()))

    def __enter__(self) -> BackgroundWorker:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.worker.stop(force=True)
        self.thread.join(30)


@pytest.fixture
def shop(db_url: str, tmp_path: Path) -> Iterator[tuple[App, str, Path]]:
    """Runs to look at: one completed, one failed on a missing marker file, one failed with a
    KeyError; a few events."""
    app = App(db_url, flows=[Fixable, Broken])
    marker = tmp_path / "marker"
    app.start_flow(Fixable, {"marker": __file__})
    failed = app.start_flow(Fixable, {"marker": str(marker)})
    app.start_flow(Broken, {})
    app.run_worker(until_idle=True, poll_interval=0.02)
    for n in range(3):
        app.event_store.append(
            f"order-{n}",
            [NewEvent("OrderPlaced", {"order": n, "total": 10 * n})],
            ExpectedVersion.ANY,
        )
    yield app, failed, marker
    app.close()


def test_retry_a_failed_run_from_the_browser(
    shop: tuple[App, str, Path], browser_page: Any, backend: str
) -> None:
    app, failed, marker = shop
    screenshots = os.environ.get("TIDEFLOW_SCREENSHOTS") == "1" and backend == "sqlite"
    page = browser_page
    with Served(create_app(app, allow_actions=True)) as served, BackgroundWorker(app):
        page.goto(f"{served.url}/runs")
        row = page.locator(f'tr[data-run="{failed}"]')
        assert row.get_attribute("data-status") == "failed"
        assert page.locator('tr[data-status="failed"]').count() == 2
        assert page.locator('tr[data-status="completed"]').count() == 1
        if screenshots:
            page.screenshot(path=DOCS_IMAGES / "dashboard-runs.png", full_page=True)

        row.locator("a").click()
        page.wait_for_url(f"**/runs/{failed}")
        assert page.locator("#run-status").inner_text() == "failed"
        dag = page.locator("svg.dag")
        assert dag.locator('g[data-step="check"]').get_attribute("data-status") == "failed"
        assert dag.locator('g[data-step="fetch"]').get_attribute("data-status") == "completed"
        assert dag.locator('g[data-step="report"]').get_attribute("data-status") == "skipped"
        assert "marker" in page.locator("pre.traceback").first.inner_text()
        assert "NonRetryableError" in page.locator(".failure .error").first.inner_text()
        if screenshots:
            page.screenshot(path=DOCS_IMAGES / "dashboard-run-failed.png", full_page=True)

        marker.write_text("now it exists")
        page.locator("button#retry").click()
        # the worker runs it; the page refreshes itself (no reload) until it shows the end
        page.locator('#run-status:text("completed")').wait_for(timeout=30_000)
        assert dag.locator('g[data-step="report"]').get_attribute("data-status") == "completed"
        assert page.locator('g[data-step="check"]').get_attribute("data-status") == "completed"
        assert page.locator("button#retry").count() == 0
        if screenshots:
            page.screenshot(path=DOCS_IMAGES / "dashboard-run-retried.png", full_page=True)
            page.goto(f"{served.url}/flows")
            page.screenshot(path=DOCS_IMAGES / "dashboard-flows.png", full_page=True)
        page.goto(f"{served.url}/workers")
        alive = page.locator('tr[data-state="alive"]')
        assert alive.count() == 1 and "obs_fixable" in alive.inner_text()
        if screenshots:
            page.screenshot(path=DOCS_IMAGES / "dashboard-workers.png", full_page=True)
    run = app.get_run(failed)
    assert run.status == "completed" and run.output == {"report": {"result": "ok"}}


def test_a_read_only_dashboard_offers_no_buttons_and_refuses_actions(
    shop: tuple[App, str, Path], browser_page: Any
) -> None:
    app, failed, _ = shop
    page = browser_page
    with Served(create_app(app)) as served:
        page.goto(f"{served.url}/runs/{failed}")
        assert page.locator('g[data-step="check"]').get_attribute("data-status") == "failed"
        assert page.locator("button").count() == 0
        answer = page.request.post(f"{served.url}/runs/{failed}/retry", form={"csrf": "x"})
        assert answer.status == 403
    assert app.get_run(failed).status == "failed"


def test_the_event_side_pages_in_the_browser(
    saga_app: App, browser_page: Any, backend: str
) -> None:
    """The order saga example's handlers, process instances and events, as a browser shows
    them; navigating by the header's links."""
    screenshots = os.environ.get("TIDEFLOW_SCREENSHOTS") == "1" and backend == "sqlite"
    page = browser_page
    with Served(create_app(saga_app, allow_actions=True)) as served:
        page.goto(f"{served.url}/runs")
        page.click("header >> text=Processes")
        page.wait_for_url("**/processes")
        assert page.locator("tbody tr, table tr").filter(has_text="order_fulfilment").count() == 3
        assert page.locator("text=ReserveStock").count() >= 3
        if screenshots:
            page.screenshot(path=DOCS_IMAGES / "dashboard-processes.png", full_page=True)
        page.click("header >> text=Handlers")
        lag = page.locator('tr[data-handler="order_fulfilment"] td').nth(4).inner_text()
        assert lag == "0"  # caught up
        assert page.locator("text=audit is down").count() == 1
        if screenshots:
            page.screenshot(path=DOCS_IMAGES / "dashboard-handlers.png", full_page=True)
        page.click("header >> text=Events")
        page.fill("input[name=type]", "OrderPlaced")
        page.click("button[type=submit]")
        page.wait_for_url("**/events?type=OrderPlaced")
        assert page.locator("table.events tr").count() == 4  # the header and three orders
        if screenshots:
            page.screenshot(path=DOCS_IMAGES / "dashboard-events.png", full_page=True)
        page.locator("table.events a").first.click()
        page.wait_for_url("**/streams/**")
        assert page.locator("h1").inner_text().startswith("Stream ")
