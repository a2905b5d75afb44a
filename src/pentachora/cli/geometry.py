"""`pentachora geometry ...`: tables and reports from the geometric core (computed in recipes.geometry)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from pentachora.cli.app import app
from pentachora.cli.core import PentachoraTyper
from pentachora.cli.options import MAX_SEED, check_output_file

geometry_app = PentachoraTyper(help="Geometric core: CV tables and geometry reports.", no_args_is_help=True)
app.add_typer(geometry_app, name="geometry")

DEFAULT_DIMS = (
    4,
    8,
    16,
    24,
    32,
    64,
    128,
    256,
    512,
    768,
    1024,
)  # = recipes.geometry.DEFAULT_DIMS (no torch here)


@geometry_app.command("cv-table")
def cv_table(
    dims: list[int] = typer.Option(
        list(DEFAULT_DIMS), "--dim", "-d", help="Dimensions D (repeat the option)."
    ),
    trials: int = typer.Option(
        8, min=1, max=10_000, help="Independent trials per dimension (spread = std over trials)."
    ),
    samples: int = typer.Option(2000, min=1, max=10_000_000, help="Random pentachora per trial."),
    points: int = typer.Option(
        64, min=5, max=100_000, help="Random unit vectors per trial (the CV does not depend on it)."
    ),
    seed: int = typer.Option(0, min=0, max=MAX_SEED, help="Seed."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the table as JSON here."),
) -> None:
    """Print the pentachoron CV of uniformly random unit vectors on S^(D−1) for each D.

    This is `target_cv(D)`: the CV a D-dimensional space should be regularised towards. It falls
    with D (≈0.20 at D=16, ≈0.02 at D=1024), so no single value is universal.
    """
    from pentachora.errors import ConfigError

    if any(d < 4 for d in dims):
        raise ConfigError(f"--dim: pentachoron volumes need D ≥ 4, got {sorted(d for d in dims if d < 4)}")
    if any(d > 65536 for d in dims):
        raise ConfigError("--dim: at most 65536")
    check_output_file(json_out, "json", "--json")
    console = Console()
    t0 = time.perf_counter()
    from pentachora.recipes.geometry import cv_table_rows

    rows = cv_table_rows(tuple(dims), trials=trials, n_samples=samples, n_points=points, seed=seed)
    table = Table(
        title=f"Pentachoron CV of random unit vectors on S^(D−1)  ({trials} trials × {samples} pentachora)"
    )
    table.add_column("D", justify="right")
    table.add_column("CV", justify="right")
    table.add_column("± spread (std over trials)", justify="right")
    for r in rows:
        table.add_row(str(r["dim"]), f"{r['cv']:.4f}", f"{r['spread']:.4f}")
    console.print(table)
    console.print(
        f"[dim]{time.perf_counter() - t0:.1f} s; use pentachora.geometry.target_cv(D) in code.[/dim]"
    )
    if json_out is not None:
        json_out.write_text(json.dumps(rows, indent=2) + "\n")


@geometry_app.command("report")
def report_cmd(
    json_out: Path | None = typer.Option(None, "--json", help="Also write the report as JSON here."),
) -> None:
    """Self-check the geometric core: closed-form volumes, SVD, Procrustes, whitening, CV table."""
    check_output_file(json_out, "json", "--json")
    from pentachora.recipes.geometry import geometry_report

    console = Console()
    rep = geometry_report()
    table = Table(title="pentachora geometry self-check")
    table.add_column("check")
    table.add_column("value", justify="right")
    for k, v in rep.items():
        table.add_row(k, f"{v:.6g}" if isinstance(v, float) else str(v))
    console.print(table)
    cv_table(dims=list(DEFAULT_DIMS), trials=8, samples=2000, points=64, seed=0, json_out=None)
    if json_out is not None:
        json_out.write_text(json.dumps(rep, indent=2) + "\n")
