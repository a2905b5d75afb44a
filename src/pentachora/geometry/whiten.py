"""Inverse square roots of symmetric PSD matrices (covariance whitening).

* :func:`inv_sqrt_psd` — exact, through a float64 eigendecomposition, with an eigenvalue floor.
* :func:`newton_schulz_inv_sqrt` — the coupled Newton–Schulz iteration: matmuls only (GPU-friendly,
  no eigh), with a residual you can check.

How many Newton–Schulz iterations? The coupled iteration converges quadratically once an
eigenvalue of the normalised matrix is near 1, but an eigenvalue λ ≪ 1 first grows only by a
factor ≈ 1.5² per step. After normalising by the trace (the default, which always converges) the
smallest eigenvalue is about ``1 / (D · κ)`` for condition number κ, so the iterations needed grow
like ``log(D·κ) / log(2.25)`` plus a few quadratic steps. Measured in float64 for a spectrum
spread log-uniformly over condition number κ=400 (``benchmarks/geometry.py`` regenerates the
table), iterations to reach ``max|Z C Z − I| < 1e-6``:

==========  =====  =====  =====  ======
normalise   D=16   D=64   D=256  D=1024
==========  =====  =====  =====  ======
trace       ≤ 15   ≤ 15   ≤ 17   ≤ 20
Frobenius   ≤ 15   ≤ 15   ≤ 15   ≤ 15
==========  =====  =====  =====  ======

After 10 iterations the residual is still 0.002–0.5 (small directions under-whitened,
docs/findings.md); 20 reach machine precision in every case above. Always check ``residual`` when it matters.
"""

from __future__ import annotations

import torch

__all__ = ["inv_sqrt_psd", "newton_schulz_inv_sqrt", "shrink_covariance"]


def _check_square(c: torch.Tensor) -> None:
    if c.dim() < 2 or c.shape[-1] != c.shape[-2]:
        raise ValueError(f"expected (..., D, D) square matrices, got shape {tuple(c.shape)}")
    if not torch.isfinite(c).all():
        raise ValueError("matrix contains NaN/inf")


def shrink_covariance(c: torch.Tensor, shrinkage: float) -> torch.Tensor:
    """Ledoit–Wolf-style shrinkage ``(1 − λ)·C + λ·(tr C / D)·I``, λ in [0, 1]."""
    if not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"shrinkage must be in [0, 1], got {shrinkage}")
    d = c.shape[-1]
    mu = torch.diagonal(c, dim1=-2, dim2=-1).sum(-1) / d
    eye = torch.eye(d, dtype=c.dtype, device=c.device)
    return (1.0 - shrinkage) * c + shrinkage * mu[..., None, None] * eye


def inv_sqrt_psd(c: torch.Tensor, eps: float = 1e-6, relative: bool = True) -> torch.Tensor:
    """``C^{-1/2}`` of a symmetric PSD matrix through a float64 eigendecomposition.

    Args:
        c: ``(..., D, D)`` symmetric positive semi-definite.
        eps: eigenvalue floor: eigenvalues are clamped to at least ``eps`` (times ``tr C / D`` when
            ``relative``), so rank-deficient covariances give a finite (regularised) result.
        relative: interpret ``eps`` relative to the mean eigenvalue.

    Returns:
        ``(..., D, D)`` symmetric ``C^{-1/2}`` in ``c.dtype``.
    """
    _check_square(c)
    x = c.to(torch.float64)
    x = 0.5 * (x + x.transpose(-1, -2))
    evals, evecs = torch.linalg.eigh(x)
    floor = torch.full_like(evals[..., :1], eps)
    if relative:
        floor = floor * evals.clamp_min(0).mean(dim=-1, keepdim=True).clamp_min(1e-300)
    inv = evals.clamp_min(0).maximum(floor).rsqrt()
    out = (evecs * inv.unsqueeze(-2)) @ evecs.transpose(-1, -2)
    return out.to(c.dtype)


def newton_schulz_inv_sqrt(
    c: torch.Tensor,
    iters: int = 20,
    normalize: str = "trace",
    return_residual: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``C^{-1/2}`` by the coupled Newton–Schulz iteration (matmuls only).

    With ``A = C / n`` (n = trace or Frobenius norm), iterate ``T = (3I − Z Y)/2``, ``Y ← Y T``,
    ``Z ← T Z`` from ``Y = A, Z = I``; then ``Y → A^{1/2}``, ``Z → A^{−1/2}`` and
    ``C^{−1/2} = Z / √n``. See the module docstring for how many iterations a condition number needs.

    Args:
        c: ``(..., D, D)`` symmetric positive definite.
        iters: number of iterations (20 whitens κ≈400 at D up to ~1024 to 1e-6; 10 does not).
        normalize: ``"trace"`` (always convergent) or ``"fro"`` (Frobenius norm; a bit faster).
        return_residual: also return ``max |Z C Z − I|`` per matrix — check it.

    Returns:
        ``(..., D, D)`` approximate ``C^{-1/2}`` (in ``c.dtype``), and optionally the ``(...)`` residual.
    """
    _check_square(c)
    if iters < 1:
        raise ValueError(f"iters must be ≥ 1, got {iters}")
    d = c.shape[-1]
    x = c.to(torch.float64) if c.dtype not in (torch.float32, torch.float64) else c
    if normalize == "trace":
        norm = torch.diagonal(x, dim1=-2, dim2=-1).sum(-1)
    elif normalize == "fro":
        norm = torch.linalg.matrix_norm(x, ord="fro")
    else:
        raise ValueError(f"normalize must be 'trace' or 'fro', got {normalize!r}")
    norm = norm.clamp_min(torch.finfo(x.dtype).tiny)[..., None, None]
    eye = torch.eye(d, dtype=x.dtype, device=x.device).expand_as(x)
    y = x / norm
    z = eye.clone()
    for _ in range(iters):
        t = 0.5 * (3.0 * eye - z @ y)
        y = y @ t
        z = t @ z
    out = z / norm.sqrt()
    if not return_residual:
        return out.to(c.dtype)
    residual = (out @ x @ out - eye).abs().amax(dim=(-2, -1))
    return out.to(c.dtype), residual
