"""`pentachora geometry ...`: tables and reports from the geometric core."""

from __future__ import annotations

import typer

from pentachora.cli import app

geometry_app = typer.Typer(help="Geometric core: CV tables and geometry reports.", no_args_is_help=True)
app.add_typer(geometry_app, name="geometry")
