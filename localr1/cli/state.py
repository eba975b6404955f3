"""What every command shares: the --debug state and the error boundary (one line and a hint, or the
traceback with --debug). Commands import this, never ``cli/app.py`` (which imports the commands)."""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from localr1.errors import LocalR1Error, from_os_error

F = TypeVar("F", bound=Callable[..., Any])


class State:
    debug: bool = bool(os.environ.get("LOCALR1_DEBUG"))


state = State()


# Commands are top-level functions marked with @command(...): cli/app.py registers them with Typer, in one
# place, and nothing imports cli/app.py back.
COMMANDS: dict[str, list[tuple[Callable[..., Any], tuple, dict]]] = {}


def command(*args: Any, **kwargs: Any) -> Callable[[F], F]:
    """Mark a function as a ``localr1`` command; ``args``/``kwargs`` go to Typer's ``app.command``."""

    def mark(func: F) -> F:
        COMMANDS.setdefault(func.__module__, []).append((func, args, kwargs))
        return func

    return mark


def print_error(exc: LocalR1Error) -> None:
    color = sys.stderr.isatty() and not os.environ.get("NO_COLOR")
    red, dim, reset = ("\x1b[31m", "\x1b[2m", "\x1b[0m") if color else ("", "", "")
    sys.stderr.write(f"{red}Error:{reset} {exc.message}\n")
    if exc.hint:
        sys.stderr.write(f"{dim}Hint: {exc.hint}{reset}\n")
    sys.stderr.flush()


def handle_errors(func: F) -> F:
    """Known errors become one line (and a hint), Ctrl-C exits 130; --debug shows the traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except LocalR1Error as exc:
            if state.debug:
                traceback.print_exc()
            print_error(exc)
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:  # a full disk, a read-only folder, a file where a folder belongs, ...
            known = from_os_error(exc)
            if known is None:
                raise
            if state.debug:
                traceback.print_exc()
            print_error(known)
            raise typer.Exit(known.exit_code) from None
        except KeyboardInterrupt:
            if state.debug:
                traceback.print_exc()
            sys.stderr.write("\nInterrupted.\n")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]
