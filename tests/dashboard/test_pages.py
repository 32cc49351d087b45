"""Every page of the dashboard over a database with runs, events, a process manager's
instances and a dead letter (the order saga example), on both backends; authentication and the
refusal of a public bind without it."""

from __future__ import annotations

import base64
import re
import urllib.error
import urllib.parse
import urllib.request

import pytest
from typer.testing import CliRunner

from tests.dashboard.conftest import Served
from tideflow import App
from tideflow.cli.main import cli
from tideflow.dashboard import DashboardConfigError, create_app


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def post(url: str, form: dict[str, str]) -> tuple[int, str]:
    data = urllib.parse.urlencode(form).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=10) as a:
            return a.status, a.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_every_page_shows_what_is_stored(saga_app: App) -> None:
    app = saga_app
    with Served(create_app(app, allow_actions=True)) as s:
        status, runs = get(f"{s.url}/runs?flow=ship_order&since=1h")
        assert status == 200 and "ship_order" in runs and 'data-status="completed"' in runs
        status, flows = get(f"{s.url}/flows")
        assert status == 200 and 'data-flow="ship_order"' in flows and "<svg" in flows
        status, events = get(f"{s.url}/events?type=OrderPlaced")
        assert status == 200 and "OrderPlaced" in events and "StockReserved" not in events
        stream = re.search(r'href="/streams/([^"]+)"', events)
        assert stream is not None
        status, page = get(f"{s.url}/streams/{stream.group(1)}")
        assert status == 200 and f'Stream <span class="mono">{stream.group(1)}' in page
        status, procs = get(f"{s.url}/processes")
        assert status == 200 and "order_fulfilment" in procs
        assert procs.count('class="badge completed"') == 3
        assert "ReserveStock &rarr; tea" in procs  # a command it sent
        assert "CardDeclined" in procs  # why one was cancelled
        status, procs = get(f"{s.url}/processes?status=running")
        assert 'class="badge completed"' not in procs and "no instances" in procs
        status, handlers = get(f"{s.url}/handlers")
        assert status == 200 and 'data-handler="order_fulfilment"' in handlers
        assert "audit is down" in handlers
        status, workers = get(f"{s.url}/workers")
        assert status == 200 and "no queued tasks" in workers
        assert 'data-state="stopped"' in workers  # the example's worker, stopped at its end
        status, partial = get(f"{s.url}/runs", {"X-Tideflow-Partial": "1"})
        assert status == 200 and "<header>" not in partial and "<table" in partial
        status, _ = get(f"{s.url}/runs/no-such-run")
        assert status == 404
        status, text = get(f"{s.url}/runs/{'x' * 300}")
        assert status == 400 and "run_id" in text  # an id no run can have
        status, _ = get(f"{s.url}/processes?status=bogus")
        assert status == 200


def test_dead_letters_can_be_skipped_and_retry_needs_the_code(saga_app: App) -> None:
    app = saga_app
    [dead] = app.handler_store.list_dead_letters()
    with Served(create_app(app, allow_actions=True)) as s:
        _, page = get(f"{s.url}/handlers")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        assert csrf is not None
        assert f"/deadletters/{dead.id}/retry" not in page  # the audit handler's code is unknown
        status, text = post(f"{s.url}/deadletters/{dead.id}/retry", {"csrf": csrf.group(1)})
        assert status == 409 and "start with --app" in text
        status, _ = post(f"{s.url}/deadletters/{dead.id}/skip", {"csrf": "forged"})
        assert status == 403
        status, _ = post(f"{s.url}/deadletters/{dead.id}/skip", {"csrf": csrf.group(1)})
        assert status == 200  # redirected to the handlers page
    assert app.handler_store.list_dead_letters() == []


def test_authentication_by_token_or_user_and_password(saga_app: App) -> None:
    with Served(create_app(saga_app, auth="s3cret", host="0.0.0.0")) as s:
        assert get(f"{s.url}/runs")[0] == 401
        assert get(f"{s.url}/runs", {"Authorization": "Bearer s3cret"})[0] == 200
        assert get(f"{s.url}/runs", {"Authorization": "Bearer wrong"})[0] == 401
        basic = base64.b64encode(b"anyone:s3cret").decode()
        assert get(f"{s.url}/runs", {"Authorization": f"Basic {basic}"})[0] == 200
        assert get(f"{s.url}/runs?token=s3cret")[0] == 200
        assert get(f"{s.url}/metrics", {"Cookie": "tideflow_dashboard=s3cret"})[0] == 200
    with Served(create_app(saga_app, auth="ops:pw")) as s:
        good = base64.b64encode(b"ops:pw").decode()
        wrong_user = base64.b64encode(b"eve:pw").decode()
        assert get(f"{s.url}/runs", {"Authorization": f"Basic {good}"})[0] == 200
        assert get(f"{s.url}/runs", {"Authorization": f"Basic {wrong_user}"})[0] == 401
        assert get(f"{s.url}/runs?token=pw")[0] == 401


def test_a_public_bind_needs_authentication(saga_app: App) -> None:
    with pytest.raises(DashboardConfigError, match="without authentication"):
        create_app(saga_app, host="0.0.0.0")
    result = CliRunner().invoke(
        cli, ["dashboard", "-d", saga_app.database_url, "--host", "0.0.0.0"]
    )
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "refusing to serve the dashboard on 0.0.0.0" in lines[0]
