"""Finding the user's flows (``--app``, ``--flow``) and the database (``--database-url``).

A worker or ``start`` needs the flow *classes*, which live in the user's code, so the CLI imports
them by path. ``--app`` accepts whatever a project naturally has lying around - an ``App``, a
``FlowRegistry`` or a single ``Flow`` class - so that nobody writes an App object only to please
the CLI. A module path without ``:attr`` means "its ``app`` if it has one, else every flow class it
defines", which makes plain example files usable as they are.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from tideflow.app import App
from tideflow.cli.errors import CliUsageError
from tideflow.errors import FlowImportError, NotAFlowError
from tideflow.flows.dsl import Flow, is_flow_class
from tideflow.flows.registry import FlowRegistry
from tideflow.storage import URL_ENV, check_url, redact_url, resolve_url
from tideflow.storage.opening import check_connection

APP_ENV = "TIDEFLOW_APP"
APP_FORMS = "an App, a FlowRegistry or a Flow class"


def import_module(name_or_file: str, path: str | None = None) -> ModuleType:
    """Import a dotted module name, or a ``.py`` file by path.

    The working directory goes on ``sys.path`` first: a console script (unlike ``python -m``)
    does not put it there, yet "my project's module, from my project's directory" is the case
    every user expects to work.
    """
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    name = name_or_file
    if name_or_file.endswith(".py") or os.sep in name_or_file or "/" in name_or_file:
        name = _module_name_for_file(Path(name_or_file), path or name_or_file)
    try:
        return importlib.import_module(name)
    except Exception as exc:
        raise FlowImportError(
            f"cannot load {path or name_or_file!r}: importing {name!r} failed: "
            f"{type(exc).__name__}: {one_line(str(exc))}"
        ) from exc


def _module_name_for_file(path: Path, what: str) -> str:
    """Import a file under its dotted name relative to the working directory when it lies
    inside it (so ``examples/x.py`` is ``examples.x``, the same module other code imports),
    else by its stem from its own directory."""
    if not path.is_file():
        raise FlowImportError(f"cannot load {what!r}: no such file {str(path)!r}")
    resolved = path.resolve()
    try:
        relative = resolved.relative_to(Path.cwd().resolve())
    except ValueError:
        sys.path.insert(0, str(resolved.parent))
        return resolved.stem
    return ".".join(relative.with_suffix("").parts)


def load_object(path: str) -> object:
    """The object a ``module:attr`` path names, or the module itself when there is no colon."""
    module_part, sep, attr = path.partition(":")
    if not module_part or (sep and not attr):
        raise FlowImportError(
            f"cannot load {path!r}: write 'package.module:attr' (attr being {APP_FORMS}) "
            "or 'package.module'"
        )
    module = import_module(module_part, path)
    if not sep:
        return module
    obj: object = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise FlowImportError(
                f"cannot load {path!r}: module {module.__name__!r} has no attribute {attr!r}"
            ) from None
    return obj


def _flows_of_module(module: ModuleType) -> tuple[App | None, list[type[Flow]]]:
    app = getattr(module, "app", None)
    if isinstance(app, App | FlowRegistry):
        return _flows_of(app, module.__name__)
    flows = [
        obj
        for obj in vars(module).values()
        if is_flow_class(obj) and obj.__module__ == module.__name__
    ]
    if not flows:
        raise NotAFlowError(
            f"module {module.__name__!r} has no 'app' and defines no Flow classes; "
            f"name one with '{module.__name__}:attr' ({APP_FORMS})"
        )
    return None, flows


def _flows_of(obj: object, path: str) -> tuple[App | None, list[type[Flow]]]:
    if isinstance(obj, App):
        return obj, obj.registry.list()
    if isinstance(obj, FlowRegistry):
        return None, obj.list()
    if is_flow_class(obj):
        return None, [obj]
    if isinstance(obj, ModuleType):
        return _flows_of_module(obj)
    raise NotAFlowError(f"{path!r} is a {type(obj).__name__}; it must name {APP_FORMS}")


def build_app(
    database_url: str | None,
    app_path: str | None = None,
    flow_paths: Iterable[str] = (),
    *,
    need_flows: bool = False,
    migrate: bool = True,
) -> App:
    """The App a command works with.

    The database URL is the first of: ``--database-url``; the URL of an App named by ``--app``;
    ``$TIDEFLOW_DATABASE_URL``; ``sqlite:///tideflow.db`` - checked (``resolve_url``) before
    anything connects. An App from ``--app`` is used as it is when nothing overrides it, so its
    own settings (clock, migrate) still apply. Building an App creates nothing: read commands
    use its read calls, which never migrate; ``migrate`` only matters to the writing commands.
    """
    base: App | None = None
    flows: list[type[Flow]] = []
    if app_path:
        base, flows = _flows_of(load_object(app_path), app_path)
    extra = list(flow_paths)
    for path in extra:
        _, more = _flows_of(load_object(path), path)
        flows.extend(f for f in more if f not in flows)
    if need_flows and not flows and not (base is not None and base.handlers):
        raise CliUsageError(
            f"no flows given: pass --app module:attr ({APP_FORMS}) or --flow module:Class, "
            f"or set ${APP_ENV}"
        )
    if base is not None and database_url is None and not extra:
        check_reachable(base.database_url)
        return base
    url = resolve_url(database_url or (base.database_url if base is not None else None))
    check_reachable(url)
    if base is not None:  # keep its aggregates, handlers and settings, not just its flows
        return base.on_database(url, flows=flows, migrate=migrate)
    return App(url, flows=flows, migrate=migrate)


def check_reachable(url: str) -> None:
    """Fail in a moment with one clear line when a PostgreSQL server is down or the URL is
    wrong, before anything else is printed (the App itself connects lazily). The URL is checked
    first, so that libpq never fills in a host or database nobody named."""
    check_connection(check_url(url))


def one_line(text: str) -> str:
    """Driver messages span lines (a cause, then a hint); an error line must not."""
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


redact = redact_url


DATABASE_HELP = (
    f"postgresql://USER@HOST/DB or sqlite:///FILE (default: ${URL_ENV}, else sqlite:///tideflow.db)"
)
