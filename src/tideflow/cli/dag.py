"""Drawing a flow's DAG as text, top to bottom, one row per topological level.

    ✓ validate
  ┌─────┴──────┐
  ▼            ▼
✓ reserve   ✓ price
  └─────┬──────┘
        ▼
    ✓ ship

A layered drawing is what people sketch on a whiteboard, and it survives a terminal: levels are
longest-path depths from the roots, an edge that skips levels is threaded through the levels in
between as a plain vertical line (so no line ever passes through a label), and within a level
nodes are ordered by where their parents sit, which keeps crossings rare for the handful of steps
a flow usually has. Between two levels each source gets a horizontal "lane" row; lanes are shared
when their spans do not overlap, so simple forks and joins take a single row. Cells record which
directions a line leaves them in, and the box-drawing character is chosen from that, which is
what makes junctions join up. A drawing wider than the terminal falls back to an indented list,
since a wrapped drawing is worse than none.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import groupby

from rich.text import Text

from tideflow.cli.render import glyph, status_style
from tideflow.flows.definition import FlowDefinition
from tideflow.storage.flow_contract import RunRecord

GAP = 3
UP, DOWN, LEFT, RIGHT = 1, 2, 4, 8
_LINES = {
    UP: "│",
    DOWN: "│",
    UP | DOWN: "│",
    LEFT: "─",
    RIGHT: "─",
    LEFT | RIGHT: "─",
    DOWN | RIGHT: "┌",
    DOWN | LEFT: "┐",
    UP | RIGHT: "└",
    UP | LEFT: "┘",
    UP | DOWN | RIGHT: "├",
    UP | DOWN | LEFT: "┤",
    DOWN | LEFT | RIGHT: "┬",
    UP | LEFT | RIGHT: "┴",
    UP | DOWN | LEFT | RIGHT: "┼",
}
LINE_STYLE = "dim"
TIMES = "\u00d7"  # multiplication sign, before a map step's task count


@dataclass(frozen=True)
class Node:
    slug: str
    depends_on: tuple[str, ...]
    kind: str = "single"
    status: str | None = None
    tasks: int | None = None

    @property
    def label(self) -> str:
        suffix = ""
        if self.kind == "map":
            suffix = f" {TIMES}{self.tasks}" if self.tasks is not None else " (map)"
        return f"{glyph(self.status)} {self.slug}{suffix}"


def nodes_from_run(run: RunRecord) -> list[Node]:
    return [
        Node(s.step_slug, tuple(s.depends_on), s.kind, s.status, s.initial_tasks) for s in run.steps
    ]


def nodes_from_definition(definition: FlowDefinition) -> list[Node]:
    return [Node(s.slug, s.depends_on, s.kind) for s in definition.steps]


# A layer item is a real node (its slug) or a pass-through point of a long edge.
@dataclass(frozen=True)
class _Via:
    source: str
    target: str
    level: int


_Item = str | _Via


def levels_of(nodes: Sequence[Node]) -> dict[str, int]:
    """Longest-path depth of every node from the roots (dependencies on unknown slugs are
    ignored, so a drawing never fails for want of a step)."""
    by_slug = {n.slug: n for n in nodes}
    level: dict[str, int] = {}

    def depth(slug: str, seen: frozenset[str]) -> int:
        if slug in level:
            return level[slug]
        deps = [d for d in by_slug[slug].depends_on if d in by_slug and d not in seen]
        value = 1 + max((depth(d, seen | {slug}) for d in deps), default=-1)
        level[slug] = value
        return value

    for n in nodes:
        depth(n.slug, frozenset())
    return level


class _Layout:
    def __init__(self, nodes: Sequence[Node]) -> None:
        self.nodes = {n.slug: n for n in nodes}
        level = levels_of(nodes)
        depth = max(level.values(), default=-1) + 1
        self.layers: list[list[_Item]] = [[] for _ in range(depth)]
        # edges[i]: (upper item in layer i, lower item in layer i + 1)
        self.edges: list[list[tuple[_Item, _Item]]] = [[] for _ in range(max(depth - 1, 0))]
        for n in nodes:
            self.layers[level[n.slug]].append(n.slug)
        for n in nodes:
            for dep in n.depends_on:
                if dep not in self.nodes:
                    continue
                previous: _Item = dep
                for k in range(level[dep] + 1, level[n.slug]):
                    via = _Via(dep, n.slug, k)
                    self.layers[k].append(via)
                    self.edges[k - 1].append((previous, via))
                    previous = via
                self.edges[level[n.slug] - 1].append((previous, n.slug))
        self._order()
        self.left: dict[_Item, int] = {}
        self.center: dict[_Item, int] = {}
        self._place()

    def width_of(self, item: _Item) -> int:
        return len(self.nodes[item].label) if isinstance(item, str) else 1

    def anchor_of(self, item: _Item) -> int:
        """Where lines attach: the middle of the name, not of glyph and name together, so a
        line meets the word it points at."""
        if not isinstance(item, str):
            return 0
        return 2 + (len(self.nodes[item].slug) - 1) // 2

    def parents(self, layer: int, item: _Item) -> list[_Item]:
        return [u for u, v in self.edges[layer - 1] if v == item] if layer > 0 else []

    def children(self, layer: int, item: _Item) -> list[_Item]:
        return [v for u, v in self.edges[layer] if u == item] if layer < len(self.edges) else []

    def _order(self) -> None:
        """Sort each layer by the mean position of its items' parents (stable, so declaration
        order breaks ties)."""
        for i in range(1, len(self.layers)):
            index = {item: k for k, item in enumerate(self.layers[i - 1])}

            def barycenter(item: _Item, i: int = i, index: dict[_Item, int] = index) -> float:
                ps = self.parents(i, item)
                return sum(index[p] for p in ps) / len(ps) if ps else float(len(index))

            self.layers[i].sort(key=barycenter)

    def _pack(self, layer: list[_Item], desired: dict[_Item, float]) -> None:
        right = None
        for item in layer:
            w = self.width_of(item)
            left = round(desired[item]) - self.anchor_of(item) if item in desired else None
            floor = right + GAP if right is not None else None
            if left is None:
                left = floor if floor is not None else 0
            elif floor is not None:
                left = max(left, floor)
            self.left[item] = left
            self.center[item] = left + self.anchor_of(item)
            right = left + w

    def _place(self) -> None:
        """Top down, each item goes under the mean of its parents; then the roots move over
        the mean of their children, so a fork hangs symmetrically under its source."""
        for i, layer in enumerate(self.layers):
            desired: dict[_Item, float] = {}
            for item in layer:
                ps = self.parents(i, item)
                if ps:
                    desired[item] = sum(self.center[p] for p in ps) / len(ps)
            self._pack(layer, desired)
        if len(self.layers) > 1:
            desired = {}
            for item in self.layers[0]:
                cs = self.children(0, item)
                if cs:
                    desired[item] = sum(self.center[c] for c in cs) / len(cs)
            self._pack(self.layers[0], desired)
        shift = -min(self.left.values(), default=0)
        for item in self.left:
            self.left[item] += shift
            self.center[item] += shift

    @property
    def width(self) -> int:
        return max((self.left[i] + self.width_of(i) for i in self.left), default=0)


class _Canvas:
    def __init__(self, width: int) -> None:
        self.width = width
        self.rows: list[list[tuple[str, str]]] = []
        self.masks: list[list[int]] = []

    def add_row(self) -> int:
        self.rows.append([(" ", "")] * self.width)
        self.masks.append([0] * self.width)
        return len(self.rows) - 1

    def text(self, y: int, x: int, text: str, style: str) -> None:
        for k, ch in enumerate(text):
            self.rows[y][x + k] = (ch, style)

    def link(self, y: int, x: int, directions: int) -> None:
        self.masks[y][x] |= directions

    def vline(self, x: int, y0: int, y1: int) -> None:
        for y in range(y0, y1):
            self.link(y, x, DOWN)
            self.link(y + 1, x, UP)

    def hline(self, y: int, x0: int, x1: int) -> None:
        for x in range(x0, x1):
            self.link(y, x, RIGHT)
            self.link(y, x + 1, LEFT)

    def render(self) -> Text:
        out = Text(no_wrap=True, overflow="crop")
        for y, row in enumerate(self.rows):
            cells = [
                (_LINES[m], LINE_STYLE) if m and ch == " " else (ch, st)
                for (ch, st), m in zip(row, self.masks[y], strict=True)
            ]
            while cells and cells[-1][0] == " ":
                cells.pop()
            for style, run in groupby(cells, key=lambda cell: cell[1]):
                out.append("".join(ch for ch, _ in run), style=style or None)
            if y < len(self.rows) - 1:
                out.append("\n")
        return out


def _assign_lanes(spans: list[tuple[_Item, int, int, frozenset[int]]]) -> dict[_Item, int]:
    """Give each source a lane row; two sources share a row when their spans are disjoint or
    meet only at a target they both feed (that is a join, drawn as one ┬)."""
    rows: list[list[tuple[int, int, frozenset[int]]]] = []
    lane: dict[_Item, int] = {}
    for source, lo, hi, targets in sorted(spans, key=lambda s: (s[1], s[2])):
        for k, row in enumerate(rows):
            if all(_compatible((lo, hi, targets), other) for other in row):
                row.append((lo, hi, targets))
                lane[source] = k
                break
        else:
            rows.append([(lo, hi, targets)])
            lane[source] = len(rows) - 1
    return lane


def _compatible(a: tuple[int, int, frozenset[int]], b: tuple[int, int, frozenset[int]]) -> bool:
    lo, hi = max(a[0], b[0]), min(a[1], b[1])
    if lo > hi:
        return True
    return lo == hi and lo in a[2] and lo in b[2]


def render_dag(nodes: Sequence[Node], max_width: int | None = None) -> Text:
    if not nodes:
        return Text("(no steps)", style="dim")
    layout = _Layout(nodes)
    if max_width is not None and layout.width > max_width:
        return render_list(nodes)
    canvas = _Canvas(layout.width)
    for i, layer in enumerate(layout.layers):
        y = canvas.add_row()
        for item in layer:
            if isinstance(item, str):
                node = layout.nodes[item]
                canvas.text(y, layout.left[item], node.label, status_style(node.status))
            else:
                canvas.link(y, layout.center[item], UP | DOWN)
        if i < len(layout.edges):
            _draw_channel(canvas, layout, i, y)
    return canvas.render()


def _draw_channel(canvas: _Canvas, layout: _Layout, i: int, node_row: int) -> None:
    targets: dict[_Item, list[_Item]] = {}
    for u, v in layout.edges[i]:
        targets.setdefault(u, []).append(v)
    spans = []
    for source, ts in targets.items():
        xs = [layout.center[t] for t in ts]
        x = layout.center[source]
        if any(tx != x for tx in xs):
            spans.append((source, min(x, *xs), max(x, *xs), frozenset(xs)))
    lane = _assign_lanes(spans)
    lanes = max(lane.values(), default=0) + 1
    first = node_row + 1
    for _ in range(lanes + 1):
        canvas.add_row()
    arrow_row = first + lanes
    for source, ts in targets.items():
        x = layout.center[source]
        canvas.link(first, x, UP)
        row = first + lane.get(source, lanes - 1)
        canvas.vline(x, first, row)
        if source in lane:
            lo = min(x, *(layout.center[t] for t in ts))
            hi = max(x, *(layout.center[t] for t in ts))
            canvas.hline(row, lo, hi)
        for t in ts:
            tx = layout.center[t]
            canvas.vline(tx, row, arrow_row - 1)
            canvas.link(arrow_row - 1, tx, DOWN)
            if isinstance(t, str):
                canvas.text(arrow_row, tx, "▼", LINE_STYLE)
            else:
                canvas.link(arrow_row, tx, UP | DOWN)


def render_list(nodes: Iterable[Node]) -> Text:
    """The fallback: one line per step, indented by level, naming what it waits for."""
    nodes = list(nodes)
    level = levels_of(nodes)
    out = Text(no_wrap=True, overflow="ellipsis")
    ordered = sorted(nodes, key=lambda n: level[n.slug])
    for k, n in enumerate(ordered):
        out.append("  " * level[n.slug])
        out.append(n.label, style=status_style(n.status) or None)
        if n.depends_on:
            out.append(f"  ◀ {', '.join(n.depends_on)}", style=LINE_STYLE)
        if k < len(ordered) - 1:
            out.append("\n")
    return out
