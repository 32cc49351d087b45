"""Options every command shares, where they may be written, and how help shows them.

``--database-url``/``-d`` and ``--app`` are accepted on the root command, on a command group
(``handlers``, ``deadletters``) and on the command itself, in any of those places:

    tideflow -d URL runs        tideflow runs -d URL
    tideflow handlers --app shop:app -d URL reset projector

A value given on the command line wins over one from the environment, and the one nearest the
command wins among those (``group_value``): a command never silently ignores an option its
group was given, which it used to.

Help shows a word per value - ``URL``, ``MODULE:ATTR``, ``N`` - instead of Typer's type names
(``<str>``, ``<list[str]>``, ``<bool>`` for a flag): ``readable_metavars`` fills in every
option a command did not name itself, so a command added later needs nothing to look the same.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape

from tideflow.cli.loading import APP_ENV, APP_FORMS, DATABASE_HELP, load_object
from tideflow.storage import check_url

T = TypeVar("T")

DATABASE_OPTION = ("--database-url", "-d")

DatabaseOpt = Annotated[
    str | None,
    typer.Option(*DATABASE_OPTION, metavar="URL", help=DATABASE_HELP, show_default=False),
]
AppOpt = Annotated[
    str | None,
    typer.Option(
        "--app",
        "-a",
        envvar=APP_ENV,
        metavar="MODULE:ATTR",
        show_default=False,
        help=f"Your flows: module:attr naming {APP_FORMS}, or a module (its 'app', else all "
        f"its flow classes). A file path works too: examples/order_pipeline.py",
    ),
]


def group_value(ctx: typer.Context, name: str, value: T | None) -> T | None:
    """The value of option ``name`` for the command of ``ctx``: ``value`` (the command's own)
    or one its groups were given. Typed on the command line beats taken from the environment;
    among those, the command's own beats its group's, which beats the root's. (Commands take
    ``ctx`` as a parameter: the current-context lookup lives in a module Typer vendors.)"""
    chain: list[Any] = []
    current: Any = ctx
    while current is not None:
        chain.append(current)
        current = current.parent
    for c in chain:
        found = c.params.get(name)
        source = c.get_parameter_source(name)
        if found is not None and getattr(source, "name", None) == "COMMANDLINE":
            return found  # type: ignore[no-any-return]
    if value is not None:
        return value
    for c in chain:
        found = c.params.get(name)
        if found is not None:
            return found  # type: ignore[no-any-return]
    return None


def chosen_database(ctx: typer.Context, value: str | None) -> str | None:
    """The ``--database-url`` of the command of ``ctx``, wherever it was written. An empty one
    is refused (it used to mean the default, silently)."""
    url = group_value(ctx, "database_url", value)
    if url is not None and not url.strip():
        check_url(url, origin="--database-url")
    return url


def chosen_app(ctx: typer.Context, value: str | None) -> str | None:
    """The ``--app`` of the command of ``ctx``, wherever it was written."""
    return group_value(ctx, "app_path", value)


def database_of(ctx: typer.Context, value: str | None) -> str | None:
    """For a command without an ``--app`` of its own (``runs``, ``run``, ``cancel``, ...): its
    ``--database-url``, else the database of the App that ``tideflow --app X`` names - the same
    database ``tideflow --app X worker`` works on - else None (the environment or the default)."""
    url = chosen_database(ctx, value)
    path = chosen_app(ctx, None)
    if url is not None or path is None:
        return url
    found = load_object(path)
    for obj in (found, getattr(found, "app", None)):
        candidate = getattr(obj, "database_url", None)
        if isinstance(candidate, str):
            return candidate
    return None


#: The word help shows for a value of each type, when an option names none itself.
_WORDS: dict[str, str] = {
    "integer": "N",
    "integer range": "N",
    "float": "NUMBER",
    "float range": "NUMBER",
    "text": "TEXT",
    "boolean": "",
}


def readable_metavars(command: Any) -> None:
    """Give every parameter of ``command`` (and of its subcommands) without a metavar a plain
    word for its value, and none for a flag; and escape the square brackets of their help,
    which Rich would otherwise take for markup and drop ("[default: ...]", "tideflow[dashboard]").
    Once per command. (Duck-typed: Typer's classes derive from click's or from its vendored
    copy, depending on its version.)"""
    if getattr(command, "_tideflow_readable", False):
        return
    command._tideflow_readable = True
    if command.help:
        command.help = escape(command.help)
    for param in command.params:
        if getattr(param, "help", None):
            param.help = escape(param.help)
        if getattr(param, "param_type_name", "") == "argument" and hasattr(
            param, "display_type_rich"
        ):
            # Typer >= 0.2x shows an argument's Python type beside its metavar (FLOW <str>):
            # the metavar alone says it.
            param.display_type_rich = _no_type
        if param.metavar is not None:
            continue
        if getattr(param, "is_flag", False) or getattr(param, "count", False):
            param.metavar = ""
        else:
            name = param.type.name if hasattr(param, "type") else _bare(param)
            param.metavar = _WORDS.get(name, name.upper())
    for sub in (getattr(command, "commands", None) or {}).values():
        readable_metavars(sub)


def _quiet_help_options(command: Any, ctx: Any) -> None:
    """No metavar for ``--help`` (click makes that option on demand, per command)."""
    helper = command.get_help_option(ctx)
    if helper is not None:
        helper.metavar = ""
    for sub in (getattr(command, "commands", None) or {}).values():
        _quiet_help_options(sub, ctx)


def _no_type(ctx: Any = None) -> None:
    return None


def _bare(param: Any) -> str:
    """The type name of a Typer parameter that keeps no click type (Typer >= 0.2x)."""
    bare = str(param.bare_type())
    inner = bare.removeprefix("list[").removesuffix("]")
    return {"int": "integer", "float": "float", "str": "text", "bool": "boolean"}.get(inner, inner)


def prepared(command: Any, ctx: Any) -> Any:
    """A command a group hands out, with ``readable_metavars`` applied (``ctx``: the group's,
    for the help options)."""
    if command is not None:
        readable_metavars(command)
        _quiet_help_options(command, ctx)
    return command
