"""The two Typer applications every command module registers on: :data:`app` (``pentachora ...``)
and :data:`train_app` (``pentachora train ...``).

They live here, not in the package's ``__init__``, so that the command modules import this module
and the package root imports the command modules: registration runs one way, with no import ring.
"""

from __future__ import annotations

import logging

import typer

from pentachora.cli.core import PentachoraTyper

__all__ = ["app", "train_app"]

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
