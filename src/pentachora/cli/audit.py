"""``pentachora audit RUN``: the diagnostics report of a run folder (markdown + PNG curves)."""

from __future__ import annotations

from pathlib import Path

import typer

from pentachora.cli.app import app


@app.command("audit")
def audit(
    run: Path = typer.Argument(
        ..., help="Run folder (with metrics.jsonl) written by `pentachora train ...`."
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Report folder (default RUN/audit)."),
) -> None:
    """Write RUN's diagnostics report: CV per audited module, precision deviation, the convergence
    events and warnings, gradient-loudness ratios (audit.md + PNGs)."""
    from rich.console import Console

    from pentachora.errors import PentachoraError
    from pentachora.recipes.diagnostics import audit_run

    console = Console()
    try:
        paths = audit_run(run, out)
    except PentachoraError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(code=2) from exc
    console.print(f"report: {paths['markdown']}")
    for key, path in paths.items():
        if key != "markdown":
            console.print(f"  {key}: {path}")
