"""Turning exceptions into one red line and an exit code.

A command line user who mistypes a run id needs the sentence that says so, not forty lines of
stack; a developer chasing a bug needs the stack. So every command runs under ``reporting``:
errors become ``error: <message>`` on stderr, and ``--debug`` lets them propagate untouched.

Exit codes are part of the interface, for scripts: 0 success, 1 the thing failed (a run failed,
the database is unreachable, a run id is unknown), 2 the command line itself is wrong (bad JSON,
an unknown flow slug, an --app path that does not load) - retrying a 2 without editing the command
cannot help.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.text import Text

from tideflow.client import InvalidArgumentError
from tideflow.errors import (
    FlowImportError,
    FlowNotFoundError,
    InputNotSerializableError,
    MapInputError,
    NotAFlowError,
    SlugConflictError,
    TideflowError,
    UnsupportedDatabaseURLError,
)
from tideflow.storage.opening import is_driver_error

EXIT_FAILED = 1
EXIT_USAGE = 2


class CliUsageError(TideflowError):
    """The command line is incomplete or contradictory (no flows given, a bad option value)."""


class CommandFailed(TideflowError):
    """A command ran but did not achieve what was asked (nothing to cancel, a run failed)."""


_USAGE_ERRORS: tuple[type[BaseException], ...] = (
    CliUsageError,
    FlowImportError,
    FlowNotFoundError,
    InvalidArgumentError,
    InputNotSerializableError,
    MapInputError,
    NotAFlowError,
    SlugConflictError,
    UnsupportedDatabaseURLError,
    json.JSONDecodeError,
)


def exit_code_for(exc: BaseException) -> int:
    return EXIT_USAGE if isinstance(exc, _USAGE_ERRORS) else EXIT_FAILED


def describe(exc: BaseException) -> str:
    """The sentence to show. Our own errors already read as sentences; anything else is a
    surprise, so it is named by type and points at ``--debug``."""
    if isinstance(exc, json.JSONDecodeError):
        return f"--input is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
    if isinstance(exc, TideflowError):
        return str(exc) or type(exc).__name__
    text = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    if isinstance(exc, OSError) or is_driver_error(exc):
        return f"{type(exc).__name__}: {text}"
    return f"unexpected {type(exc).__name__}: {text} (run with --debug for the traceback)"


def print_error(message: str, console: Console | None = None) -> None:
    console = console or Console(
        stderr=True, soft_wrap=True, highlight=False, markup=False, emoji=False
    )
    console.print(Text(f"error: {message}", style="bold red"), soft_wrap=True)


@contextmanager
def reporting(debug: bool) -> Iterator[None]:
    """Run a command body; report any error as one line and exit, unless debugging."""
    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except KeyboardInterrupt:
        if debug:
            raise
        raise typer.Exit(130) from None
    except Exception as exc:
        if debug or _is_click_exception(exc):
            raise
        print_error(describe(exc))
        raise typer.Exit(exit_code_for(exc)) from None


def _is_click_exception(exc: BaseException) -> bool:
    """Usage errors raised by the argument parser keep the parser's own formatting and exit
    code; they are recognised by shape because their class lives in click or in Typer's
    vendored copy of it, depending on the Typer version."""
    return hasattr(exc, "exit_code") and hasattr(exc, "format_message")
