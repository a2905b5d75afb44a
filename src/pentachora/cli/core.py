"""The CLI's machinery: one user-error path for every command, and the Typer class that applies it.

Every command registered on :data:`pentachora.cli.app` or :data:`pentachora.cli.train_app` (or on any
:class:`PentachoraTyper`) runs inside :func:`user_errors`:

* :class:`pentachora.errors.PentachoraError` (a flag, file, data set or run folder the user gave is
  wrong) and ``typer.BadParameter`` raised by a command body → one red line ``error: ...`` on stderr
  and exit code 2;
* ``KeyboardInterrupt`` → one line saying where a rerun resumes (see :func:`set_resume_dir`), exit 130;
* an allocation the machine cannot hold (the CPU allocator's or CUDA's out-of-memory error,
  ``MemoryError``) → one ``error: out of memory ...`` line naming the size asked for, exit code 2;
* a closed output pipe (``pentachora ... | head``) → click's quiet exit;
* anything else is a bug: its traceback, one line asking to report it, exit code 1.

Usage errors that typer finds while parsing (unknown flag, a value out of range, a missing argument)
keep typer's usage message and exit code 2. This module imports neither torch nor a model.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from pentachora.errors import PentachoraError

__all__ = [
    "BUG_HINT",
    "PentachoraCommand",
    "PentachoraGroup",
    "PentachoraTyper",
    "print_error",
    "set_resume_dir",
    "user_errors",
]

#: The line printed under the traceback of an unexpected exception.
BUG_HINT = "this is a bug in pentachora — please report it with the command you ran"

#: The run folder of the training the current command runs (for the interrupt message).
_RESUME_DIR: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "pentachora_resume_dir", default=None
)

#: Exit codes: a user error, an interrupt (128 + SIGINT), a bug.
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_BUG = 1


def print_error(message: str) -> None:
    """Print ``error: <message>`` as one red line on stderr (no markup, no wrapping)."""
    from rich.console import Console

    line = " ".join(str(message).split())  # one line, whatever the exception's text held
    Console(stderr=True).print(f"error: {line}", style="red", markup=False, highlight=False, soft_wrap=True)


_ALLOCATION = re.compile(r"tried to allocate (\d+(?:\.\d+)?) ?(bytes|[KMGT]i?B)", re.IGNORECASE)
_CAPACITY = re.compile(r"total capacity of (\d+(?:\.\d+)?) ?([KMGT]i?B)", re.IGNORECASE)
_UNITS = {"BYTES": 1, "KB": 2**10, "KIB": 2**10, "MB": 2**20, "MIB": 2**20, "GB": 2**30, "GIB": 2**30,
          "TB": 2**40, "TIB": 2**40}  # fmt: skip


def _gib(match: re.Match[str]) -> float:
    return float(match.group(1)) * _UNITS[match.group(2).upper()] / 2**30


def out_of_memory_message(exc: BaseException) -> str | None:
    """One line for an allocation that failed (CPU allocator, CUDA out of memory, ``MemoryError``):
    the sizes asked for are the user's to lower, not a bug. ``None`` for any other error."""
    text = str(exc)
    gpu = "CUDA out of memory" in text or (type(exc).__name__ == "OutOfMemoryError" and "CPU" not in text)
    if not (gpu or isinstance(exc, MemoryError) or "can't allocate memory" in text):
        return None
    asked = _ALLOCATION.search(text)
    size = f" of ≈{_gib(asked):,.1f} GiB" if asked else ""
    if gpu:
        capacity = _CAPACITY.search(text)
        machine = f" on the GPU ({_gib(capacity):.0f} GiB)" if capacity else " on the GPU"
    else:
        from pentachora.resources import physical_memory_bytes

        total = physical_memory_bytes()
        machine = f" (this machine has {total / 2**30:.0f} GiB)" if total else ""
    where = _RESUME_DIR.get()
    resume = f"; a rerun resumes from {where}'s last checkpoint" if where else ""
    return (
        f"out of memory: an allocation{size} failed{machine}; lower the sizes of this run (batch size, image "
        f"size, model width, pool or sample counts){resume}"
    )


def set_resume_dir(path: str | Path | None) -> None:
    """Record the run folder of the training about to start, for the interrupt message."""
    _RESUME_DIR.set(None if path is None else str(path))


@contextlib.contextmanager
def user_errors(*, body: bool) -> Iterator[None]:
    """Turn what a command raises into the CLI's one error path (see the module docstring).

    Args:
        body: True around a command body, where ``BadParameter`` becomes one line too; False around
            a group, where the usage errors typer raises while parsing must keep their format.
    """
    token = _RESUME_DIR.set(None) if body else None
    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except typer.BadParameter as exc:
        if not body:
            raise
        print_error(exc.format_message())
        raise typer.Exit(EXIT_USER_ERROR) from exc
    except typer.TyperException:  # usage errors found while parsing: typer prints them (exit code 2)
        raise
    except PentachoraError as exc:
        print_error(str(exc) or type(exc).__name__)
        raise typer.Exit(EXIT_USER_ERROR) from exc
    except KeyboardInterrupt as exc:
        where = _RESUME_DIR.get()
        hint = f" — rerun the same command to resume from {where}" if where else ""
        print(f"interrupted{hint}", file=sys.stderr)
        raise typer.Exit(EXIT_INTERRUPTED) from exc
    except BrokenPipeError:  # `pentachora ... | head`: the reader left. Not a bug: click exits quietly
        raise
    except Exception as exc:
        message = out_of_memory_message(exc)  # sizes the machine cannot hold are the user's to lower
        if message is not None:
            print_error(message)
            raise typer.Exit(EXIT_USER_ERROR) from exc
        traceback.print_exc(file=sys.stderr)
        print(BUG_HINT, file=sys.stderr)
        raise typer.Exit(EXIT_BUG) from exc
    finally:
        if token is not None:
            _RESUME_DIR.reset(token)


class PentachoraCommand(TyperCommand):
    """A Typer command whose body runs inside :func:`user_errors`."""

    def invoke(self, ctx: Any) -> Any:
        with user_errors(body=True):
            return super().invoke(ctx)


class PentachoraGroup(TyperGroup):
    """A Typer group that catches what a command registered elsewhere (a plain ``typer.Typer``) raises."""

    def invoke(self, ctx: Any) -> Any:
        with user_errors(body=False):
            return super().invoke(ctx)


class PentachoraTyper(typer.Typer):
    """``typer.Typer`` whose commands use :class:`PentachoraCommand` and groups :class:`PentachoraGroup`."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("cls", PentachoraGroup)
        kwargs.setdefault("add_completion", False)
        kwargs.setdefault("pretty_exceptions_show_locals", False)
        super().__init__(**kwargs)

    def command(self, name: str | None = None, *, cls: type[TyperCommand] | None = None, **kwargs: Any):  # type: ignore[override]
        return super().command(name, cls=cls or PentachoraCommand, **kwargs)
