"""The run page's pictures, drawn on the server as SVG (no front-end build): the DAG with each
step coloured by its status, and a timeline of tasks and their attempts."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from html import escape

from tideflow.cli.dag import Node
from tideflow.storage.flow_contract import RunRecord

NODE_W, NODE_H, GAP_X, GAP_Y, PAD = 150, 38, 60, 18, 10


def dag_svg(nodes: Sequence[Node]) -> str:
    """Steps in columns by depth (longest path from a root), edges from each dependency."""
    by_slug = {n.slug: n for n in nodes}
    depth: dict[str, int] = {}

    def depth_of(slug: str) -> int:
        if slug not in depth:
            deps = [d for d in by_slug[slug].depends_on if d in by_slug]
            depth[slug] = 1 + max((depth_of(d) for d in deps), default=-1)
        return depth[slug]

    columns: dict[int, list[Node]] = {}
    for n in nodes:
        columns.setdefault(depth_of(n.slug), []).append(n)
    pos: dict[str, tuple[int, int]] = {}
    for col, members in columns.items():
        for row, n in enumerate(members):
            pos[n.slug] = (PAD + col * (NODE_W + GAP_X), PAD + row * (NODE_H + GAP_Y))
    width = PAD * 2 + len(columns) * (NODE_W + GAP_X) - GAP_X
    height = PAD * 2 + max((len(m) for m in columns.values()), default=1) * (NODE_H + GAP_Y) - GAP_Y
    parts = [
        f'<svg class="dag" xmlns="http://www.w3.org/2000/svg" width="{max(width, 0)}" '
        f'height="{max(height, 0)}" viewBox="0 0 {max(width, 0)} {max(height, 0)}" role="img">'
    ]
    for n in nodes:
        x2, y2 = pos[n.slug]
        for d in n.depends_on:
            if d not in pos:
                continue
            x1, y1 = pos[d]
            sx, sy, ex, ey = x1 + NODE_W, y1 + NODE_H / 2, x2, y2 + NODE_H / 2
            mid = (sx + ex) / 2
            parts.append(f'<path class="edge" d="M{sx},{sy} C{mid},{sy} {mid},{ey} {ex},{ey}"/>')
    for n in nodes:
        x, y = pos[n.slug]
        status = n.status or "none"
        title = f"{n.slug} ({n.kind}): {n.status or 'not started'}"
        label = n.slug
        parts.append(
            f'<g class="node status-{escape(status)}" data-step="{escape(n.slug)}" '
            f'data-status="{escape(status)}"><title>{escape(title)}</title>'
            f'<rect x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}" rx="6"/>'
            f'<text x="{x + NODE_W / 2}" y="{y + NODE_H / 2 + 4}">'
            f"{escape(label[:22])}{'*' if n.kind == 'map' else ''}</text></g>"
        )
    parts.append("</svg>")
    return "".join(parts)


ROW_H, LABEL_W, BAR_W = 22, 170, 640


def timeline_svg(run: RunRecord, now: datetime) -> str:
    """One row per task: its failed attempts (from the failures table) and its current or last
    attempt, on a common time axis from the run's start."""
    start = run.started_at
    end = run.finished_at or now
    span = max((end - start).total_seconds(), 0.001)

    def x(moment: datetime | None) -> float:
        if moment is None:
            return LABEL_W
        return LABEL_W + BAR_W * max(0.0, min(1.0, (moment - start).total_seconds() / span))

    rows: list[str] = []
    failures: dict[tuple[str, int], list[tuple[datetime | None, datetime, int]]] = {}
    for f in run.failures:
        failures.setdefault((f.step_slug, f.task_index), []).append(
            (f.started_at, f.failed_at, f.attempt)
        )
    i = 0
    for step in run.steps:
        for t in step.tasks:
            y = i * ROW_H
            label = step.step_slug if step.kind != "map" else f"{step.step_slug}[{t.task_index}]"
            rows.append(f'<text class="label" x="4" y="{y + 15}">{escape(label[:24])}</text>')
            for began, failed_at, attempt in failures.get((step.step_slug, t.task_index), []):
                x1, x2 = x(began), x(failed_at)
                rows.append(
                    f'<rect class="bar status-failed attempt" x="{x1}" y="{y + 4}" '
                    f'width="{max(x2 - x1, 2)}" height="{ROW_H - 8}">'
                    f"<title>attempt {attempt} failed</title></rect>"
                )
            if t.started_at is not None and t.status != "failed":
                x1 = x(t.started_at)
                x2 = x(t.finished_at or (now if t.status == "started" else t.started_at))
                rows.append(
                    f'<rect class="bar status-{escape(t.status)}" x="{x1}" y="{y + 4}" '
                    f'width="{max(x2 - x1, 2)}" height="{ROW_H - 8}">'
                    f"<title>attempt {t.attempts}: {escape(t.status)}</title></rect>"
                )
            i += 1
    height = max(i, 1) * ROW_H + 18
    axis = (
        f'<line class="axis" x1="{LABEL_W}" y1="{height - 16}" x2="{LABEL_W + BAR_W}" '
        f'y2="{height - 16}"/><text class="label" x="{LABEL_W}" y="{height - 3}">0s</text>'
        f'<text class="label" x="{LABEL_W + BAR_W - 50}" y="{height - 3}">{span:.2f}s</text>'
    )
    width = LABEL_W + BAR_W + 10
    return (
        f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}">' + "".join(rows) + axis + "</svg>"
    )
