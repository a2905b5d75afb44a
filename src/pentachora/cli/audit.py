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

    from pentachora.cli.options import check_run_folder
    from pentachora.recipes.diagnostics import audit_run

    check_run_folder(out, "--out")  # before the report is made; errors take the shared path (stderr)
    console = Console()
    paths = audit_run(run, out)
    console.print(f"report: {paths['markdown']}")
    for key, path in paths.items():
        if key != "markdown":
            console.print(f"  {key}: {path}")
