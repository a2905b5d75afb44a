"""`pentachora train svae|geovae ...`, `pentachora eval`, `pentachora reconstruct`, `pentachora sample`."""

from __future__ import annotations

import typer

from pentachora.cli import app

train_app = typer.Typer(help="Train a model (writes a run folder with checkpoints, metrics and pictures).", no_args_is_help=True)
app.add_typer(train_app, name="train")
