"""Imports go one way, through the whole import graph, and only the backends touch a driver.

The layers, bottom to top (``LAYERS``):

* base - errors, clock, JSON and id helpers, retry timing: imported by everyone, import no one;
* domain - ``flows``, ``events``, ``sagas``: what a flow, an event, a handler and a process
  manager *are*; no storage, no runtime, no driver (flows know nothing of events, events nothing
  of sagas);
* storage contracts - the seam (``storage/database.py``: ``Database``, ``Tx``),
  ``storage/flow_contract.py``, ``event_contract.py``, ``handler_contract.py``,
  ``process_contract.py`` and the driver-free code beside them (``rows``, ``sqlfile``, ``urls``,
  ``unavailable``): they may use the domain, never a backend;
* stores - ``storage/flow_store.py``, ``event_store.py``, ``handler_store.py``,
  ``process_store.py``, ``timer_store.py``: written once over the seam; they use the contracts,
  never a backend;
* backends - ``storage/sqlite/``, ``storage/postgres/``: implement the seam, never each other
  (nor the stores);
* opening - ``storage/opening.py`` (and ``tideflow.storage``, which re-exports it): picks a
  backend for a URL and puts the stores on its Database, the one place that names backends;
* runtime - ``worker/``, ``runtime/`` (command dispatch, process manager reactions),
  ``client.py``: handed stores by the App, they use the contracts and the domain, and neither
  open a store nor import a backend;
* top - ``app.py``, ``cli/``, the ``tideflow`` package itself: may use everything.

The check follows every edge transitively: a module may not reach a forbidden layer through any
chain of imports, and the failure shows the chain. An import counts wherever it is written - at the
top of a module or inside a function (that one runs too, later) - except under ``if
TYPE_CHECKING:``, which exists for annotations only. What Python does implicitly is not counted:
importing ``a.b.c`` runs ``a/__init__.py`` and ``a/b/__init__.py`` first, but that is not a
dependency ``c`` chose (otherwise everything would depend on ``tideflow/__init__.py``, which
re-exports the App); every ``__init__`` is checked as a module of its own instead.

Two imports are allowed against the layers, explicitly (``LAZY_RUNTIME_EXPORTS``): the domain
packages ``tideflow.events`` and ``tideflow.sagas`` still offer ``CommandDispatcher`` and
``ProcessBindings`` where users have always imported them from, through a module ``__getattr__``
that imports the runtime on first use, so that no domain module depends on the runtime; the
exception holds only for an import inside that ``__getattr__``.

Only ``storage/opening.py`` imports a backend by name (the App and the CLI go through it). No
import cycle among tideflow modules (the same graph, the lazy imports included), and
``sqlite3`` / ``psycopg`` / ``psycopg_pool`` are imported only under ``storage/sqlite/`` resp.
``storage/postgres/`` - counting ``TYPE_CHECKING`` imports too. Failures name file:line.

No linter dependency: import-linter would do the layers, but not the driver rule or the named
chains, and this is a hundred lines of ``ast``.
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

#: Module prefix -> layer; the longest matching prefix wins.
LAYERS: dict[str, str] = {
    "tideflow": "top",
    "tideflow.app": "top",
    "tideflow.cli": "top",
    "tideflow.errors": "base",
    "tideflow.clock": "base",
    "tideflow.jsonutil": "base",
    "tideflow.codec": "base",
    "tideflow.typed": "base",
    "tideflow.retrying": "base",
    "tideflow.ids": "base",
    "tideflow.flows": "flows",
    "tideflow.events": "events",
    "tideflow.sagas": "sagas",
    "tideflow.storage": "opening",
    "tideflow.storage.opening": "opening",
    "tideflow.storage.flow_contract": "contracts",
    "tideflow.storage.event_contract": "contracts",
    "tideflow.storage.handler_contract": "contracts",
    "tideflow.storage.process_contract": "contracts",
    "tideflow.storage.timer_contract": "contracts",
    "tideflow.storage.monitor_contract": "contracts",
    "tideflow.storage.monitor_store": "stores",
    "tideflow.storage.database": "contracts",
    "tideflow.storage.flow_store": "stores",
    "tideflow.storage.event_store": "stores",
    "tideflow.storage.handler_store": "stores",
    "tideflow.storage.process_store": "stores",
    "tideflow.storage.timer_store": "stores",
    "tideflow.storage.queue_limits": "stores",
    "tideflow.storage.schedule_contract": "contracts",
    "tideflow.storage.schedule_store": "stores",
    "tideflow.storage.run_watch": "stores",
    "tideflow.storage.rows": "contracts",
    "tideflow.storage.sqlfile": "contracts",
    "tideflow.storage.urls": "contracts",
    "tideflow.storage.unavailable": "contracts",
    "tideflow.storage.wakeups": "contracts",
    "tideflow.storage.sqlite": "sqlite",
    "tideflow.storage.postgres": "postgres",
    "tideflow.runtime": "runtime",
    "tideflow.worker": "runtime",
    "tideflow.client": "runtime",
    "tideflow.telemetry": "runtime",
    "tideflow.dashboard": "top",
}

_DOMAIN = {"base", "flows", "events", "sagas"}
#: Layer -> the layers its modules may reach, directly or through any chain.
MAY_REACH: dict[str, set[str]] = {
    "base": {"base"},
    "flows": {"base", "flows"},
    "events": {"base", "events"},
    "sagas": {"base", "events", "sagas"},
    "contracts": _DOMAIN | {"contracts"},
    "sqlite": _DOMAIN | {"contracts", "sqlite"},
    "postgres": _DOMAIN | {"contracts", "postgres"},
    "stores": _DOMAIN | {"contracts", "stores"},
    "opening": _DOMAIN | {"contracts", "stores", "sqlite", "postgres", "opening"},
    "runtime": _DOMAIN | {"contracts", "runtime"},
    "top": set(),  # anything
}

#: (package, module it may import lazily in its module-level ``__getattr__``), see above.
LAZY_RUNTIME_EXPORTS = {
    ("tideflow.events", "tideflow.runtime.dispatch"),
    ("tideflow.sagas", "tideflow.runtime.sagas"),
}

#: Driver -> the only package that may import it.
DRIVERS = {
    "sqlite3": "tideflow/storage/sqlite/",
    "psycopg": "tideflow/storage/postgres/",
    "psycopg_pool": "tideflow/storage/postgres/",
}


@dataclass(frozen=True)
class Import:
    where: str  # file:line
    target: str  # the imported module (for ``from m import name``: m.name if that is a module)
    type_checking: bool  # under ``if TYPE_CHECKING:``
    in_getattr: bool  # inside a module-level ``def __getattr__``


def _module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(root: Path, path: Path, modules: set[str]) -> list[Import]:
    module = _module_name(root, path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    rel = path.relative_to(root).as_posix()
    found: list[Import] = []

    def visit(node: ast.AST, type_checking: bool, functions: tuple[str, ...]) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.body:
                visit(child, True, functions)
            for child in node.orelse:
                visit(child, type_checking, functions)
            return
        in_getattr = functions == ("__getattr__",)
        if isinstance(node, ast.Import):
            found.extend(
                Import(f"{rel}:{node.lineno}", alias.name, type_checking, in_getattr)
                for alias in node.names
            )
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            for alias in node.names:
                sub = f"{name}.{alias.name}"
                found.append(
                    Import(
                        f"{rel}:{node.lineno}",
                        sub if sub in modules else name,
                        type_checking,
                        in_getattr,
                    )
                )
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            functions = (*functions, node.name)
        for child in ast.iter_child_nodes(node):
            visit(child, type_checking, functions)

    visit(ast.parse(path.read_text(), filename=str(path)), False, ())
    return found


def layer_of(module: str) -> str | None:
    best = max(
        (prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")),
        key=len,
        default=None,
    )
    return LAYERS[best] if best is not None else None


def _graph(root: Path) -> dict[str, list[Import]]:
    """Every tideflow module -> its imports (all of them, ``TYPE_CHECKING`` ones flagged)."""
    paths = {_module_name(root, p): p for p in sorted((root / "tideflow").rglob("*.py"))}
    modules = set(paths)
    return {module: _imports(root, path, modules) for module, path in paths.items()}


def _edges(graph: dict[str, list[Import]]) -> dict[str, list[Import]]:
    """The imports that run: tideflow modules only, ``TYPE_CHECKING`` left out."""
    return {
        module: [i for i in imports if i.target in graph and not i.type_checking]
        for module, imports in graph.items()
    }


def layer_violations(root: Path = SRC) -> list[str]:
    edges = _edges(_graph(root))
    out: list[str] = []
    for start in sorted(edges):
        allowed = MAY_REACH.get(layer_of(start) or "top", set())
        if not allowed:
            continue
        # breadth-first over everything ``start`` reaches, remembering how
        via: dict[str, list[Import]] = {start: []}
        queue = deque([start])
        while queue:
            module = queue.popleft()
            for imp in edges[module]:
                if (module, imp.target) in LAZY_RUNTIME_EXPORTS and imp.in_getattr:
                    continue
                if imp.target in via:
                    continue
                via[imp.target] = [*via[module], imp]
                if layer_of(imp.target) not in allowed:
                    chain = " -> ".join(f"{i.target} ({i.where})" for i in via[imp.target])
                    out.append(
                        f"{start} ({layer_of(start)}) reaches {imp.target} "
                        f"({layer_of(imp.target)}): {chain}"
                    )
                    continue  # one report per forbidden module; do not follow it further
                queue.append(imp.target)
    return out


def import_cycles(root: Path = SRC) -> list[str]:
    """Each cycle once, as ``a -> b -> a`` with the file:line of each import."""
    edges = _edges(_graph(root))
    out: list[str] = []
    seen: set[frozenset[str]] = set()
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[tuple[str, Import | None]] = []

    def visit(module: str, how: Import | None) -> None:
        state[module] = 1
        stack.append((module, how))
        for imp in edges[module]:
            if state.get(imp.target) == 1:
                names = [m for m, _ in stack]
                cycle = [*stack[names.index(imp.target) + 1 :], (imp.target, imp)]
                key = frozenset(m for m, _ in cycle)
                if key not in seen:
                    seen.add(key)
                    out.append(
                        imp.target + "".join(f" -> {m} ({i.where if i else '?'})" for m, i in cycle)
                    )
            elif imp.target not in state:
                visit(imp.target, imp)
        stack.pop()
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, None)
    return out


def backend_imports(root: Path = SRC) -> list[str]:
    """Direct imports of a backend from outside it: only ``storage/opening.py`` may name one (the
    App and the CLI reach the backends through it, never by their modules)."""
    out: list[str] = []
    for module, imports in _edges(_graph(root)).items():
        for imp in imports:
            backend = layer_of(imp.target)
            if (
                backend in ("sqlite", "postgres")
                and layer_of(module) != backend
                and module != "tideflow.storage.opening"
            ):
                out.append(
                    f"{imp.where} imports {imp.target}: only tideflow.storage.opening "
                    "opens a backend"
                )
    return out


def driver_imports(root: Path = SRC) -> list[str]:
    out: list[str] = []
    for imports in _graph(root).values():
        for imp in imports:
            top = imp.target.split(".")[0]
            home = DRIVERS.get(top)
            if home is not None and not imp.where.startswith(home):
                out.append(f"{imp.where} imports {imp.target}: only {home} may import {top}")
    return out


# --- the checks -----------------------------------------------------------------------------------


def test_every_module_has_a_layer() -> None:
    assert [m for m in _graph(SRC) if layer_of(m) is None] == []


def test_no_module_reaches_a_layer_above_it() -> None:
    assert layer_violations() == []


def test_no_import_cycle() -> None:
    assert import_cycles() == []


def test_only_opening_names_a_backend() -> None:
    assert backend_imports() == []


def test_drivers_are_imported_only_by_their_backend() -> None:
    assert driver_imports() == []


@pytest.mark.parametrize("prefix", sorted(LAYERS))
def test_every_layer_names_a_module_that_exists(prefix: str) -> None:
    path = SRC / Path(*prefix.split("."))
    assert path.is_dir() or path.with_suffix(".py").is_file(), prefix


# --- the checks can fail --------------------------------------------------------------------------


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_an_indirect_import_is_reported_with_its_chain(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "tideflow/__init__.py": "",
            "tideflow/events/__init__.py": "",
            "tideflow/events/model.py": (
                "def f():\n    from tideflow.storage.event_contract import X\n"
            ),
            "tideflow/worker/__init__.py": "",
            "tideflow/worker/loop.py": "from tideflow.storage.event_contract import X\n",
            "tideflow/storage/__init__.py": "",
            "tideflow/storage/event_contract.py": "from tideflow.storage.sqlite import backend\n",
            "tideflow/storage/sqlite/__init__.py": "",
            "tideflow/storage/sqlite/backend.py": "import sqlite3\n",
        },
    )
    assert layer_violations(root) == [
        # a function-level import counts
        "tideflow.events.model (events) reaches tideflow.storage.event_contract (contracts): "
        "tideflow.storage.event_contract (tideflow/events/model.py:2)",
        "tideflow.storage.event_contract (contracts) reaches tideflow.storage.sqlite.backend "
        "(sqlite): tideflow.storage.sqlite.backend (tideflow/storage/event_contract.py:1)",
        # the runtime may use a contract, but not what the contract wrongly reaches
        "tideflow.worker.loop (runtime) reaches tideflow.storage.sqlite.backend (sqlite): "
        "tideflow.storage.event_contract (tideflow/worker/loop.py:1) -> "
        "tideflow.storage.sqlite.backend (tideflow/storage/event_contract.py:1)",
    ]
    assert backend_imports(root) == [
        "tideflow/storage/event_contract.py:1 imports tideflow.storage.sqlite.backend: only "
        "tideflow.storage.opening opens a backend"
    ]


def test_a_cycle_and_a_stray_driver_import_are_reported(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "tideflow/__init__.py": "",
            "tideflow/events/__init__.py": "",
            "tideflow/events/a.py": "from tideflow.events import b\nimport sqlite3\n",
            "tideflow/events/b.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                "    import psycopg\n"
                "def g():\n    from tideflow.events.a import x\n"
            ),
        },
    )
    assert import_cycles(root) == [
        "tideflow.events.a -> tideflow.events.b (tideflow/events/a.py:1) -> "
        "tideflow.events.a (tideflow/events/b.py:5)"
    ]
    only = "only tideflow/storage/{}/ may import {}"
    assert driver_imports(root) == [
        "tideflow/events/a.py:2 imports sqlite3: " + only.format("sqlite", "sqlite3"),
        "tideflow/events/b.py:3 imports psycopg: " + only.format("postgres", "psycopg"),
    ]


def test_the_lazy_runtime_export_is_allowed_only_in_getattr(tmp_path: Path) -> None:
    lazy = "def __getattr__(name):\n    from tideflow.runtime import dispatch\n"
    eager = "from tideflow.runtime import dispatch\n"
    files = {
        "tideflow/__init__.py": "",
        "tideflow/runtime/__init__.py": "",
        "tideflow/runtime/dispatch.py": "",
    }
    assert (
        layer_violations(_tree(tmp_path / "lazy", {**files, "tideflow/events/__init__.py": lazy}))
        == []
    )
    assert layer_violations(
        _tree(tmp_path / "eager", {**files, "tideflow/events/__init__.py": eager})
    ) == [
        "tideflow.events (events) reaches tideflow.runtime.dispatch (runtime): "
        "tideflow.runtime.dispatch (tideflow/events/__init__.py:1)"
    ]
