"""Imports go one way: domain -> storage contracts -> backends -> runtime -> the App and the CLI.

The tree says it (flows/, events/, sagas/, storage/, worker/, cli/); this test keeps it true
without a linter dependency. Every import counts - at the top of a module or inside a function -
except those under ``if TYPE_CHECKING:``, which exist for annotations only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

# module prefix -> prefixes it must not import
RULES: dict[str, tuple[str, ...]] = {
    # the domain: what flows, events and process managers are - no I/O, no runtime
    "tideflow.flows": ("tideflow.storage", "tideflow.worker", "tideflow.cli", "tideflow.app",
                       "tideflow.client", "tideflow.events", "tideflow.sagas"),
    "tideflow.events": ("tideflow.storage", "tideflow.worker", "tideflow.cli", "tideflow.app",
                        "tideflow.client", "tideflow.sagas"),
    "tideflow.sagas.manager": ("tideflow.storage", "tideflow.worker", "tideflow.cli",
                               "tideflow.app", "tideflow.client"),
    # storage: the contracts and the backends, below every runtime
    "tideflow.storage": ("tideflow.worker", "tideflow.cli", "tideflow.app", "tideflow.client",
                         "tideflow.sagas"),
    # the runtime never reaches up to the App or the CLI, nor into a backend
    "tideflow.worker": ("tideflow.cli", "tideflow.app", "tideflow.storage.sqlite",
                        "tideflow.storage.postgres"),
    "tideflow.sagas.runtime": ("tideflow.cli", "tideflow.app", "tideflow.storage.sqlite",
                               "tideflow.storage.postgres"),
    "tideflow.client": ("tideflow.cli", "tideflow.app", "tideflow.worker"),
    "tideflow.app": ("tideflow.cli",),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, package: str) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for other in node.orelse:
                visit(other)
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            found.append((node.lineno, name))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _violations() -> list[str]:
    out: list[str] = []
    for path in sorted((SRC / "tideflow").rglob("*.py")):
        module = _module_name(path)
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        forbidden = [bad for prefix, bads in RULES.items()
                     if module == prefix or module.startswith(prefix + ".") for bad in bads]
        if not forbidden:
            continue
        for line, name in _imports(ast.parse(path.read_text()), package):
            for bad in forbidden:
                if name == bad or name.startswith(bad + "."):
                    out.append(f"{path.relative_to(SRC)}:{line} imports {name} ({module} must "
                               f"not depend on {bad})")
    return out


def test_imports_go_one_way() -> None:
    assert _violations() == []


@pytest.mark.parametrize("module", sorted(RULES))
def test_every_rule_names_a_module_that_exists(module: str) -> None:
    path = SRC / Path(*module.split("."))
    assert path.is_dir() or path.with_suffix(".py").is_file(), module
