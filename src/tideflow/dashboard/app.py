"""The dashboard: a small Starlette application over an ``App``'s stores.

Every page is rendered on the server (Jinja2 templates, SVG pictures from ``svg.py``); one
small script (``static/dashboard.js``) refreshes a page's live part every two seconds by asking
for the same URL with the header ``X-Tideflow-Partial``. Reads go through the stores - the
monitor store for aggregates - and create nothing; actions (cancel, retry, dead letters) are
offered only when the dashboard was started with them allowed, and each POST carries a token
of this process (no cross-site form can act for a logged-in browser).
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from tideflow.app import App
from tideflow.cli.dag import Node, nodes_from_run
from tideflow.cli.render import fmt_duration
from tideflow.client import RUN_STATUSES
from tideflow.dashboard.auth import Authentication, check_bind
from tideflow.dashboard.svg import dag_svg, timeline_svg
from tideflow.errors import RunNotFoundError, TideflowError
from tideflow.storage.process_contract import PROCESS_STATUSES
from tideflow.worker.handlers.admin import retry_dead_letter

PARTIAL = "x-tideflow-partial"
SINCE = {"15m": 15 * 60, "1h": 3600, "24h": 86400, "7d": 7 * 86400}


def _fmt_time(moment: datetime | None) -> str:
    return "" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


class Dashboard:
    """The pages, over ``app`` (its database; its flows and handlers, if any, for retrying
    dead letters)."""

    def __init__(self, app: App, *, allow_actions: bool = False) -> None:
        self.app = app
        self.allow_actions = allow_actions
        self.csrf = secrets.token_urlsafe(24)
        self.env = Environment(
            loader=PackageLoader("tideflow.dashboard", "templates"),
            autoescape=select_autoescape(["html"]),
        )
        self.env.filters["time"] = _fmt_time
        self.env.filters["seconds"] = fmt_duration
        self.env.filters["pretty"] = _pretty

    # --- rendering --------------------------------------------------------------------------------
    def render(self, request: Request, name: str, **context: Any) -> HTMLResponse:
        template = self.env.get_template(name)
        context.update(
            request=request,
            actions=self.allow_actions,
            csrf=self.csrf,
            now=self.now(),
            path=request.url.path,
        )
        if request.headers.get(PARTIAL) and "live" in template.blocks:
            body = "".join(template.blocks["live"](template.new_context(context)))
            return HTMLResponse(body)
        return HTMLResponse(template.render(context))

    def now(self) -> datetime:
        return self.app.read_store().clock.now()

    async def _action(self, request: Request) -> None:
        if not self.allow_actions:
            raise HTTPException(403, "read-only dashboard: start it with --allow-actions")
        form = await request.form()
        if not secrets.compare_digest(str(form.get("csrf", "")), self.csrf):
            raise HTTPException(403, "stale or missing form token: reload the page")

    # --- runs ---------------------------------------------------------------------------------
    def runs(self, request: Request) -> HTMLResponse:
        q = request.query_params
        flow = q.get("flow") or None
        status = q.get("status") or None
        since_key = q.get("since") or ""
        since = None
        if since_key in SINCE:
            since = self.now() - timedelta(seconds=SINCE[since_key])
        monitor = self.app.monitor_store
        runs = monitor.find_runs(flow_slug=flow, status=status, since=since, limit=100)
        flows = sorted({c.flow_slug for c in monitor.run_counts()})
        return self.render(
            request,
            "runs.html",
            runs=runs,
            flows=flows,
            statuses=RUN_STATUSES,
            flow=flow,
            status=status,
            since=since_key,
            since_options=list(SINCE),
        )

    def run(self, request: Request) -> HTMLResponse:
        run_id = request.path_params["run_id"]
        try:
            run = self.app.get_run(run_id)
        except RunNotFoundError as exc:
            raise HTTPException(404, str(exc)) from exc
        now = self.now()
        return self.render(
            request,
            "run.html",
            run=run,
            dag=dag_svg(nodes_from_run(run)),
            timeline=timeline_svg(run, now),
            failures=list(reversed(run.failures)),
        )

    async def cancel(self, request: Request) -> Response:
        await self._action(request)
        run_id = request.path_params["run_id"]
        await _in_thread(self.app.cancel_run, run_id)
        return RedirectResponse(f"/runs/{run_id}", status_code=303)

    async def retry(self, request: Request) -> Response:
        await self._action(request)
        run_id = request.path_params["run_id"]
        try:
            await _in_thread(self.app.retry_run, run_id)
        except TideflowError as exc:
            raise HTTPException(409, str(exc)) from exc
        return RedirectResponse(f"/runs/{run_id}", status_code=303)

    # --- flows ----------------------------------------------------------------------------------
    def flows(self, request: Request) -> HTMLResponse:
        stored = self.app.read_store().list_flows()
        counts = {(c.flow_slug, c.version): c.runs for c in self.app.monitor_store.version_counts()}
        versions = [
            {
                "record": f,
                "runs": counts.get((f.flow_slug, f.version), 0),
                "dag": dag_svg(
                    [
                        Node(s["slug"], tuple(s["depends_on"]), s.get("kind", "single"))
                        for s in f.shape.get("steps", [])
                    ]
                ),
            }
            for f in sorted(stored, key=lambda f: (f.flow_slug, f.created_at), reverse=True)
        ]
        return self.render(request, "flows.html", versions=versions)

    # --- events ---------------------------------------------------------------------------------
    def events(self, request: Request) -> HTMLResponse:
        q = request.query_params
        types = [t.strip() for t in (q.get("type") or "").split(",") if t.strip()] or None
        store = self._events()
        events = list(store.read_all(None, types, 100, backwards=True))
        return self.render(
            request,
            "events.html",
            events=events,
            type=q.get("type") or "",
            head=store.head_position(),
            stream=None,
        )

    def stream(self, request: Request) -> HTMLResponse:
        stream_id = request.path_params["stream_id"]
        store = self._events()
        events = list(store.read_stream(stream_id))
        return self.render(
            request, "events.html", events=events, type="", head=None, stream=stream_id
        )

    def _events(self) -> Any:
        self.app.read_store()  # checks the schema; creates nothing
        return self.app.event_store

    # --- handlers and dead letters -----------------------------------------------------------
    def handlers(self, request: Request) -> HTMLResponse:
        events = self._events()
        head = events.head_position()
        handler_store = self.app.handler_store
        handlers = handler_store.list_handlers()
        dead = handler_store.list_dead_letters(limit=200)
        known = {h.name for h in self._bound_handlers()}
        return self.render(
            request,
            "handlers.html",
            handlers=handlers,
            head=head,
            dead_letters=dead,
            known=known,
        )

    def _bound_handlers(self) -> list[Any]:
        return self.app.bound_handlers() if self.app.handlers else []

    async def dead_letter(self, request: Request) -> Response:
        await self._action(request)
        dead_id = int(request.path_params["dead_id"])
        what = request.path_params["what"]
        handler_store = self.app.handler_store
        dead = await _in_thread(handler_store.get_dead_letter, dead_id)
        if what == "retry":
            handler = next((h for h in self._bound_handlers() if h.name == dead.handler), None)
            if handler is None:
                raise HTTPException(
                    409, f"retrying needs handler {dead.handler!r}'s code: start with --app"
                )
            try:
                await _in_thread(
                    retry_dead_letter, self.app.event_store, handler_store, handler, dead_id
                )
            except TideflowError as exc:
                raise HTTPException(409, str(exc)) from exc
        elif what == "skip":

            def skip() -> None:
                with self.app.event_store.transaction() as tx:
                    handler_store.mark_dead_letter_retried(tx, dead_id)

            await _in_thread(skip)
        else:
            raise HTTPException(404)
        return RedirectResponse("/handlers", status_code=303)

    # --- process managers ----------------------------------------------------------------------
    def processes(self, request: Request) -> HTMLResponse:
        self.app.read_store()
        q = request.query_params
        status = next((s for s in PROCESS_STATUSES if s == q.get("status")), None)
        instances = self.app.process_store.list_instances(status=status, limit=200)
        timers: dict[tuple[str, str], list[Any]] = {}
        for t in self.app.timer_store.pending(limit=1000):
            timers.setdefault((t.manager, t.process_id), []).append(t)
        return self.render(
            request,
            "processes.html",
            instances=instances,
            timers=timers,
            status=status,
            statuses=PROCESS_STATUSES,
        )

    # --- workers and queues ----------------------------------------------------------------------
    def workers(self, request: Request) -> HTMLResponse:
        monitor = self.app.monitor_store
        now = self.now()
        leases = {w.worker_id: w for w in monitor.workers()}
        workers = [
            {
                "record": w,
                "state": "stopped" if w.stopped_at else "alive" if w.alive(now) else "silent",
                "lease": leases.pop(w.worker_id, None),
            }
            for w in monitor.list_workers()
        ]
        return self.render(
            request,
            "workers.html",
            workers=workers,
            others=list(leases.values()),  # handler runners, workers of older releases
            queues=monitor.queue_stats(),
        )

    # --- metrics ----------------------------------------------------------------------------------
    def metrics(self, request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        from tideflow.telemetry.collector import metrics_registry

        if not hasattr(self, "_registry"):
            self._registry = metrics_registry(self.app.metrics_collector())
        return Response(generate_latest(self._registry), media_type=CONTENT_TYPE_LATEST)


async def _in_thread(fn: Any, *args: Any) -> Any:
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args)


def create_app(
    app: App,
    *,
    allow_actions: bool = False,
    auth: str | None = None,
    host: str = "127.0.0.1",
) -> Any:
    """The dashboard as an ASGI application. ``auth`` (a token or ``user:password``) is
    required when ``host`` is not a loopback address (``DashboardConfigError``)."""
    check_bind(host, auth)
    d = Dashboard(app, allow_actions=allow_actions)
    static = StaticFiles(packages=[("tideflow.dashboard", "static")])
    routes = [
        Route("/", lambda request: RedirectResponse("/runs")),
        Route("/runs", d.runs),
        Route("/runs/{run_id:path}/cancel", d.cancel, methods=["POST"]),
        Route("/runs/{run_id:path}/retry", d.retry, methods=["POST"]),
        Route("/runs/{run_id:path}", d.run),
        Route("/flows", d.flows),
        Route("/events", d.events),
        Route("/streams/{stream_id:path}", d.stream),
        Route("/handlers", d.handlers),
        Route("/deadletters/{dead_id:int}/{what}", d.dead_letter, methods=["POST"]),
        Route("/processes", d.processes),
        Route("/workers", d.workers),
        Route("/metrics", d.metrics),
        Mount("/static", static, name="static"),
    ]
    return Authentication(
        Starlette(routes=routes, exception_handlers={TideflowError: _refused}), auth
    )


async def _refused(request: Request, exc: Exception) -> Response:
    """Bad input (an event type that is no name, an id no run can have): its message, 400."""
    return PlainTextResponse(str(exc), status_code=400)
