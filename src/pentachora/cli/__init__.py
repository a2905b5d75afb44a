"""The ``pentachora`` console script.

Each command family lives in its own module and registers itself on :data:`app`; this file only
assembles them. Library code never prints; commands here talk to the user.
"""

from __future__ import annotations

import logging

import typer

app = typer.Typer(
    name="pentachora",
    help=(
        "pentachora — geometric autoencoding and geometric memory.\n\n"
        "Start with `pentachora demo` (CPU, a few minutes, no downloads)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

#: ``pentachora train ...``: every model family adds its subcommand here.
train_app = typer.Typer(
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
    # Imported here so that `pentachora --help` stays fast and each family stays in its own file.
    from pentachora.cli import audit as _audit  # noqa: F401
    from pentachora.cli import autoencoders as _autoencoders  # noqa: F401
    from pentachora.cli import batteries as _batteries  # noqa: F401
    from pentachora.cli import demo as _demo  # noqa: F401
    from pentachora.cli import geometry as _geometry  # noqa: F401
    from pentachora.cli import memory as _memory  # noqa: F401
    from pentachora.cli import sample as _sample  # noqa: F401


_register()


def main() -> None:
    """Console-script entry point."""
    app()
