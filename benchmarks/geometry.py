"""Geometry benchmark: batched CV vs a naive per-subset loop; Procrustes N<D fast path vs the full path.

Every contender runs in this one process on the same inputs; timings are reported as ratios
against the peer measured in the same run (the machines are shared and noisy), with the median of
several repeats. Also regenerates the Newton–Schulz iterations table of ``geometry/whiten.py``.

Usage::

    python benchmarks/geometry.py            # writes benchmarks/results/geometry.{json,md}
    python benchmarks/geometry.py --quick    # fewer repeats
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from pentachora.geometry import (
    cayley_menger_vol2,
    cv_loss,
    cv_metric,
    newton_schulz_inv_sqrt,
    orthogonal_procrustes,
    random_subsets,
)

RESULTS = Path(__file__).parent / "results"


def timeit(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def naive_cv(points: torch.Tensor, n_samples: int, generator: torch.Generator) -> torch.Tensor:
    """The reference style: one Cayley–Menger determinant per subset in a Python loop."""
    idx = random_subsets(points.shape[0], 5, n_samples, generator=generator)
    vols = []
    for row in idx:
        vols.append(torch.sqrt(cayley_menger_vol2(points[row]).clamp_min(0)))
    v = torch.stack(vols)
    return v.std() / v.mean()


def bench_cv(repeats: int) -> list[dict[str, object]]:
    rows = []
    for n_points, dim, n_samples in [(256, 16, 200), (256, 64, 200), (1024, 768, 200)]:
        g = torch.Generator().manual_seed(0)
        pts = torch.randn(n_points, dim, generator=g)

        def batched_metric(pts=pts, n_samples=n_samples):
            return cv_metric(pts, n_samples=n_samples, generator=torch.Generator().manual_seed(1))

        def naive_metric(pts=pts, n_samples=n_samples):
            with torch.no_grad():
                return float(naive_cv(pts, n_samples, torch.Generator().manual_seed(1)))

        # Same subsets → same value: the comparison is like for like.
        assert math.isclose(batched_metric(), naive_metric(), rel_tol=1e-6)
        t_batched = timeit(batched_metric, repeats)
        t_naive = timeit(naive_metric, max(1, repeats // 3), warmup=0)

        p = pts.clone().requires_grad_()

        def batched_loss(p=p, n_samples=n_samples, dim=dim):
            p.grad = None
            cv_loss(p, 0.1, n_samples=n_samples, generator=torch.Generator().manual_seed(1)).backward()

        def naive_loss(p=p, n_samples=n_samples):
            p.grad = None
            ((naive_cv(p, n_samples, torch.Generator().manual_seed(1)) - 0.1) ** 2).backward()

        t_bl = timeit(batched_loss, repeats)
        t_nl = timeit(naive_loss, max(1, repeats // 3), warmup=0)
        rows.append(
            {
                "N": n_points,
                "D": dim,
                "pentachora": n_samples,
                "cv_metric_batched_ms": 1e3 * t_batched,
                "cv_metric_naive_ms": 1e3 * t_naive,
                "cv_metric_speedup": t_naive / t_batched,
                "cv_loss_fwd_bwd_batched_ms": 1e3 * t_bl,
                "cv_loss_fwd_bwd_naive_ms": 1e3 * t_nl,
                "cv_loss_speedup": t_nl / t_bl,
            }
        )
    return rows


def bench_procrustes(repeats: int) -> dict[str, object]:
    n, d, k = 64, 1280, 32
    g = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))
    x = torch.randn(n, k, generator=g, dtype=torch.float64) @ basis.T
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    y = x @ q + 1e-3 * torch.randn(n, d, generator=g, dtype=torch.float64)
    fast = orthogonal_procrustes(x, y, method="small_n")
    full = orthogonal_procrustes(x, y, method="full")
    xt = torch.randn(256, k, generator=g, dtype=torch.float64) @ basis.T
    cos_fast = torch.nn.functional.cosine_similarity(fast.apply(xt), xt @ q, dim=-1).mean().item()
    cos_full = torch.nn.functional.cosine_similarity(full.apply(xt), xt @ q, dim=-1).mean().item()
    t_fast = timeit(lambda: orthogonal_procrustes(x, y, method="small_n"), repeats)
    t_full = timeit(lambda: orthogonal_procrustes(x, y, method="full"), max(1, repeats // 3), warmup=0)
    return {
        "N": n,
        "D": d,
        "data_rank": k,
        "fast_ms": 1e3 * t_fast,
        "full_ms": 1e3 * t_full,
        "speedup": t_full / t_fast,
        "heldout_cos_fast": cos_fast,
        "heldout_cos_full": cos_full,
        "max_abs_diff_on_data": float((fast.apply(x) - full.apply(x)).abs().max()),
    }


def bench_newton_schulz() -> list[dict[str, object]]:
    rows = []
    for dim in (16, 64, 256, 1024):
        g = torch.Generator().manual_seed(dim)
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
        c = (q * torch.logspace(0, math.log10(400.0), dim, dtype=torch.float64)) @ q.T
        for normalize in ("trace", "fro"):
            needed = None
            res = {}
            for iters in range(1, 31):
                _, r = newton_schulz_inv_sqrt(c, iters=iters, normalize=normalize, return_residual=True)
                res[iters] = float(r)
                if needed is None and r < 1e-6:
                    needed = iters
            rows.append(
                {
                    "D": dim,
                    "kappa": 400,
                    "normalize": normalize,
                    "iters_to_1e-6": needed,
                    "residual_10": res[10],
                    "residual_20": res[20],
                }
            )
    return rows


def to_markdown(result: dict[str, object]) -> str:
    lines = [
        "# Geometry benchmark",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}; torch {result['torch']}; {result['threads']} threads; CPU.",
        "Timings are medians of repeats; ratios compare contenders measured in this same run.",
        "",
        "## Pentachoron CV: batched vs a naive per-subset loop (same subsets, same value)",
        "",
        "| N | D | pentachora | cv_metric batched ms | naive ms | speed-up | cv_loss fwd+bwd batched ms | naive ms | speed-up |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["cv"]:
        lines.append(
            f"| {r['N']} | {r['D']} | {r['pentachora']} | {r['cv_metric_batched_ms']:.2f} | {r['cv_metric_naive_ms']:.1f}"
            f" | **{r['cv_metric_speedup']:.0f}×** | {r['cv_loss_fwd_bwd_batched_ms']:.2f} | {r['cv_loss_fwd_bwd_naive_ms']:.1f}"
            f" | **{r['cv_loss_speedup']:.0f}×** |"
        )
    p = result["procrustes"]
    lines += [
        "",
        "## Procrustes at N < D: the N×N fast path vs the full D×D path",
        "",
        "| N | D | data rank | fast ms | full ms | speed-up | held-out cos (fast) | held-out cos (full) | max |diff| on data |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {p['N']} | {p['D']} | {p['data_rank']} | {p['fast_ms']:.1f} | {p['full_ms']:.1f} | **{p['speedup']:.0f}×**"
        f" | {p['heldout_cos_fast']:.6f} | {p['heldout_cos_full']:.6f} | {p['max_abs_diff_on_data']:.1e} |",
        "",
        "## Coupled Newton–Schulz inverse square root, condition number 400 (float64)",
        "",
        "| D | normalise | iterations to residual < 1e-6 | residual after 10 | residual after 20 |",
        "|---:|---|---:|---:|---:|",
    ]
    for r in result["newton_schulz"]:
        lines.append(
            f"| {r['D']} | {r['normalize']} | {r['iters_to_1e-6']} | {r['residual_10']:.1e} | {r['residual_20']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer repeats (noisier)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else 7
    result: dict[str, object] = {
        "command": "python benchmarks/geometry.py" + (" --quick" if args.quick else ""),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cv": bench_cv(repeats),
        "procrustes": bench_procrustes(repeats),
        "newton_schulz": bench_newton_schulz(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "geometry.json").write_text(json.dumps(result, indent=2) + "\n")
    md = to_markdown(result)
    (args.out / "geometry.md").write_text(md)
    sys.stdout.write(md)
    return result


if __name__ == "__main__":
    main()
