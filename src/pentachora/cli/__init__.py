"""The ``pentachora`` console script.

Each command family lives in its own module and registers itself on :data:`app` (or on
:data:`train_app` for ``pentachora train ...``); this file only assembles them. Library code never
prints; commands here talk to the user. Nothing here imports torch or a model at import time, so
``pentachora --help`` stays fast: command bodies import what they need.

Every command shares one error path (:mod:`pentachora.cli.core`): the library's
:class:`~pentachora.errors.PentachoraError` becomes one red ``error: ...`` line and exit code 2, an
unexpected exception its traceback plus a request to report it, Ctrl-C one line saying where a rerun
resumes (exit code 130).
"""

from __future__ import annotations

import logging

import typer

from pentachora.cli.core import PentachoraTyper

__all__ = ["app", "main", "train_app"]

app = PentachoraTyper(
    name="pentachora",
    help=(
        "pentachora — geometric autoencoding and geometric memory.\n\n"
        "Start with `pentachora demo` (CPU, a few minutes, no downloads)."
    ),
    no_args_is_help=True,
)

#: ``pentachora train ...``: every model family adds its subcommand here.
train_app = PentachoraTyper(
    help="Train a model (writes a run folder with checkpoints, metrics and pictures; rerun to resume).",
    no_args_is_help=True,
)
app.add_typer(train_app, name="train")


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show library log messages (INFO level)."),
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


def _register() -> None:
    # Each family stays in its own file; none of these modules imports torch at import time.
    from pentachora.cli import audit as _audit  # noqa: F401
    from pentachora.cli import autoencoders as _autoencoders  # noqa: F401
    from pentachora.cli import batteries as _batteries  # noqa: F401
    from pentachora.cli import demo as _demo  # noqa: F401
    from pentachora.cli import geometry as _geometry  # noqa: F401
    from pentachora.cli import hub as _hub  # noqa: F401
    from pentachora.cli import memory as _memory  # noqa: F401
    from pentachora.cli import models as _models  # noqa: F401
    from pentachora.cli import sample as _sample  # noqa: F401
    from pentachora.cli import t2i as _t2i  # noqa: F401


_register()


def main() -> None:
    """Console-script entry point."""
    app()
