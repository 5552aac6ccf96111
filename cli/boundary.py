"""The CLI's one error boundary: every error a command raises becomes a one-line message on
stderr and an exit code derived from its kind (`client.errors.OUTCOMES`), whether the command
ran here or through a server; and the consoles commands print to, made on first use.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import typer
from typer.core import TyperGroup

from client.errors import EXIT_FAILED, EXIT_INVALID, EXIT_OK, EXIT_UNAVAILABLE

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "EXIT_FAILED",
    "EXIT_INVALID",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EnvctlGroup",
    "err",
    "escape",
    "exit_code",
    "out",
    "report",
]


def exit_code(exc: BaseException) -> int:
    """The exit code of an error, from its kind; a bug is re-raised."""
    kind = _kind_of(exc)
    if kind is None:
        raise exc
    from client.errors import OUTCOMES

    return OUTCOMES[kind].exit_code


def _kind_of(exc: BaseException) -> Any:
    """The error's kind: envctl's own say it; the database's and the disk's outages are the
    service's to classify (absent from a client-only install: then a bug)."""
    from hashing.errors import EnvctlError

    if isinstance(exc, EnvctlError):
        return exc.kind
    try:
        from service.errors import kind_of
    except ImportError:  # a client without the server's parts: nothing else is ours
        return None
    return kind_of(exc)


def _message(exc: BaseException) -> str:
    from hashing.errors import EnvctlError

    if isinstance(exc, EnvctlError):
        return str(exc)
    from service.errors import public_message  # an outage _kind_of knew

    return public_message(exc)


def report(exc: BaseException) -> int:
    """Say what went wrong on stderr, in one line; its exit code."""
    from rich.markup import escape

    from client.errors import NotFound

    prefix = "not found:" if isinstance(exc, NotFound) else "[red]error:[/red]"
    err().print(f"{prefix} {escape(_message(exc))}")
    return exit_code(exc)


class EnvctlGroup(TyperGroup):
    """The CLI's one error boundary: a command's error becomes its message and exit code."""

    def invoke(self, ctx: Any) -> Any:  # typer's own click Context (vendored, private)
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:
            if _kind_of(exc) is None:  # a bug is a bug: its traceback, not a message
                raise
            raise typer.Exit(report(exc)) from None


@functools.cache
def out() -> Console:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


@functools.cache
def err() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
