"""Reports on the geometric core: the CV-versus-dimension table and the self-checks.

``pentachora geometry cv-table`` and ``pentachora geometry report`` print these; they import only
:mod:`pentachora.geometry` and torch.
"""

from __future__ import annotations

import math

import torch

__all__ = ["DEFAULT_DIMS", "cv_table_rows", "geometry_report"]

#: Dimensions of the default CV table.
DEFAULT_DIMS = (4, 8, 16, 24, 32, 64, 128, 256, 512, 768, 1024)


def cv_table_rows(
    dims: tuple[int, ...] = DEFAULT_DIMS,
    trials: int = 8,
    n_samples: int = 2000,
    n_points: int = 64,
    seed: int = 0,
) -> list[dict[str, float]]:
    """CV of uniformly random unit vectors on S^(D−1) for each D: mean and spread over trials.

    Raises:
        ConfigError: settings whose allocation exceeds ``TARGET_CV_MAX_BYTES`` (checked for every D
            before any is computed).
    """
    from pentachora.errors import ConfigError
    from pentachora.geometry.cv import check_target_cv_budget, target_cv_stats

    for d in dims:  # every D is checked before any is computed
        try:
            check_target_cv_budget(d, n_points, n_samples, trials)
        except ValueError as exc:
            raise ConfigError(f"--dim / --trials / --samples / --points: {exc}") from exc
    rows = []
    for d in dims:
        mean, spread = target_cv_stats(d, n_points=n_points, n_samples=n_samples, trials=trials, seed=seed)
        rows.append({"dim": d, "cv": mean, "spread": spread})
    return rows


def geometry_report() -> dict[str, object]:
    """Run the geometric core's self-checks and return their numbers (used by `geometry report`)."""
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
