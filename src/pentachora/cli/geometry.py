"""`pentachora geometry ...`: tables and reports from the geometric core."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from pentachora.cli import app
from pentachora.cli.core import PentachoraTyper
from pentachora.cli.options import MAX_SEED, check_output_file

geometry_app = PentachoraTyper(help="Geometric core: CV tables and geometry reports.", no_args_is_help=True)
app.add_typer(geometry_app, name="geometry")

DEFAULT_DIMS = (4, 8, 16, 24, 32, 64, 128, 256, 512, 768, 1024)


def cv_table_rows(
    dims: tuple[int, ...] = DEFAULT_DIMS,
    trials: int = 8,
    n_samples: int = 2000,
    n_points: int = 64,
    seed: int = 0,
) -> list[dict[str, float]]:
    """CV of uniformly random unit vectors on S^(D−1) for each D: mean and spread over trials."""
    from pentachora.geometry import target_cv_stats

    rows = []
    for d in dims:
        mean, spread = target_cv_stats(d, n_points=n_points, n_samples=n_samples, trials=trials, seed=seed)
        rows.append({"dim": d, "cv": mean, "spread": spread})
    return rows


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


def geometry_report() -> dict[str, object]:
    """Run the geometric core's self-checks and return their numbers (used by `geometry report`)."""
    import torch

    from pentachora.geometry import (
        cayley_menger_vol2,
        gram_eigh_svd,
        gram_vol2,
        inv_sqrt_psd,
        newton_schulz_inv_sqrt,
        orthogonal_procrustes,
    )

    g = torch.Generator().manual_seed(0)
    f64 = torch.float64
    report: dict[str, object] = {}
    # Regular pentachoron with unit edges: V = √5 / 96.
    reg = torch.eye(5, dtype=f64) / math.sqrt(2.0)
    report["regular_pentachoron_volume"] = math.sqrt(cayley_menger_vol2(reg).item())
    report["regular_pentachoron_expected"] = math.sqrt(5) / 96
    pts = torch.randn(1000, 5, 12, generator=g, dtype=f64)
    report["cm_vs_gram_max_rel_err"] = float(
        ((cayley_menger_vol2(pts) - gram_vol2(pts)).abs() / gram_vol2(pts).abs().clamp_min(1e-300)).max()
    )
    a = torch.nn.functional.normalize(torch.randn(64, 256, 16, generator=g), dim=-1)
    _, s, _ = gram_eigh_svd(a)
    report["gram_eigh_svd_max_abs_err"] = float((s.double() - torch.linalg.svdvals(a.double())).abs().max())
    d = 512
    x = torch.randn(4 * d, d, generator=g, dtype=f64)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=f64))
    y = x @ q + 0.01 * torch.randn(4 * d, d, generator=g, dtype=f64)
    fitted = orthogonal_procrustes(x, y)
    xt = torch.randn(256, d, generator=g, dtype=f64)
    report["procrustes_d512_heldout_cos"] = float(
        torch.nn.functional.cosine_similarity(fitted.apply(xt), xt @ q, dim=-1).mean()
    )
    qq, _ = torch.linalg.qr(torch.randn(64, 64, generator=g, dtype=f64))
    c = (qq * torch.logspace(0, math.log10(400), 64, dtype=f64)) @ qq.T
    for iters in (10, 20):
        _, r = newton_schulz_inv_sqrt(c, iters=iters, return_residual=True)
        report[f"newton_schulz_residual_k400_d64_iters{iters}"] = float(r)
    w = inv_sqrt_psd(c, eps=0.0)
    report["eigh_inv_sqrt_residual_k400_d64"] = float((w @ c @ w - torch.eye(64, dtype=f64)).abs().max())
    return report


@geometry_app.command("report")
def report_cmd(
    json_out: Path | None = typer.Option(None, "--json", help="Also write the report as JSON here."),
) -> None:
    """Self-check the geometric core: closed-form volumes, SVD, Procrustes, whitening, CV table."""
    check_output_file(json_out, "json", "--json")
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
