"""Simplex volumes through the Cayley–Menger determinant (fp64), and random pentachora.

A k-simplex has k+1 vertices. Its squared k-volume from the pairwise squared distances d²ᵢⱼ is

    V² = (−1)^(k+1) / (2^k (k!)²) · det(CM),   CM = [[0, 1ᵀ], [1, (d²ᵢⱼ)]]   ((k+2)×(k+2)),

which equals det(E Eᵀ) / (k!)² with E the (k, D) matrix of edge vectors from vertex 0. Both are
computed in float64 whatever the input dtype: the bordered determinant mixes terms of very
different size and fp32 loses the small volumes first.
"""

from __future__ import annotations

import math

import torch

__all__ = ["cayley_menger_vol2", "gram_vol2", "pentachoron_volumes", "random_subsets", "safe_sqrt"]


def _check_points(points: torch.Tensor, min_vertices: int = 2) -> None:
    if not isinstance(points, torch.Tensor):
        raise TypeError(f"points must be a torch.Tensor, got {type(points).__name__}")
    if points.dim() < 2:
        raise ValueError(f"points must have shape (..., n, D); got {tuple(points.shape)}")
    if points.shape[-2] < min_vertices:
        raise ValueError(f"need at least {min_vertices} points along dim -2, got shape {tuple(points.shape)}")
    if not points.is_floating_point():
        raise TypeError(f"points must be a floating-point tensor, got {points.dtype}")


def cayley_menger_vol2(points: torch.Tensor) -> torch.Tensor:
    """Squared volumes of simplices from the bordered Cayley–Menger determinant.

    Args:
        points: ``(..., k+1, D)`` vertices of a batch of k-simplices, any k ≥ 1 and any D
            (volumes are zero when D < k). Any floating dtype; differentiable.

    Returns:
        ``(...)`` float64 squared k-volumes. Round-off can make degenerate simplices come out
        slightly negative; the raw value is returned (clamp before a square root, or use
        :func:`safe_sqrt`).
    """
    _check_points(points)
    x = points.to(torch.float64)
    n = x.shape[-2]
    k = n - 1
    # Squared distances from the Gram matrix of edge vectors at vertex 0: relative to the local
    # scale of the simplex (no cancellation against |x|²) and without a (…, n, n, D) tensor.
    edges = x[..., 1:, :] - x[..., :1, :]
    g = edges @ edges.transpose(-1, -2)  # (..., k, k)
    sq = torch.diagonal(g, dim1=-2, dim2=-1)  # (..., k) = d²(0, j)
    d2 = x.new_zeros(*x.shape[:-2], n, n)
    d2[..., 0, 1:] = sq
    d2[..., 1:, 0] = sq
    d2[..., 1:, 1:] = (sq.unsqueeze(-1) + sq.unsqueeze(-2) - 2 * g).clamp_min(0.0)
    batch = x.shape[:-2]
    cm = x.new_ones(*batch, n + 1, n + 1)
    cm[..., 0, 0] = 0.0
    cm[..., 1:, 1:] = d2
    det = torch.linalg.det(cm)
    coef = (-1.0) ** (k + 1) / (2.0**k * math.factorial(k) ** 2)
    return coef * det


def gram_vol2(points: torch.Tensor) -> torch.Tensor:
    """Squared volumes through the edge Gram determinant: det(E Eᵀ) / (k!)², float64.

    Args:
        points: ``(..., k+1, D)`` vertices, any floating dtype.

    Returns:
        ``(...)`` float64 squared k-volumes (non-negative up to round-off).
    """
    _check_points(points)
    x = points.to(torch.float64)
    k = x.shape[-2] - 1
    edges = x[..., 1:, :] - x[..., :1, :]
    gram = edges @ edges.transpose(-1, -2)
    return torch.linalg.det(gram) / math.factorial(k) ** 2


def safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(max(x, 0))`` whose gradient is 0 (not inf/NaN) where ``x ≤ 0``."""
    positive = x > 0
    return torch.where(
        positive, torch.sqrt(torch.where(positive, x, torch.ones_like(x))), torch.zeros_like(x)
    )


def random_subsets(
    n_points: int, subset_size: int, n_samples: int, generator: torch.Generator | None = None, device=None
) -> torch.Tensor:
    """Indices of ``n_samples`` random subsets of ``subset_size`` distinct rows out of ``n_points``.

    Every row can be drawn (subsets are drawn from **all** rows). Seeded through ``generator``.

    Returns:
        ``(n_samples, subset_size)`` int64 indices, distinct within each row.
    """
    if n_points < subset_size:
        raise ValueError(
            f"need at least {subset_size} points to draw {subset_size}-point subsets, got {n_points}"
        )
    if n_samples < 1:
        raise ValueError(f"n_samples must be ≥ 1, got {n_samples}")
    gen_device = generator.device if generator is not None else "cpu"
    keys = torch.rand(n_samples, n_points, generator=generator, device=gen_device)
    idx = keys.topk(subset_size, dim=1).indices
    return idx.to(device) if device is not None else idx


def pentachoron_volumes(
    points: torch.Tensor, n_samples: int = 200, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Volumes of random pentachora (4-simplices) whose 5 vertices are distinct rows of ``points``.

    Args:
        points: ``(N, D)`` or ``(B, N, D)`` point sets, N ≥ 5, D ≥ 4 for non-zero volumes.
            Differentiable.
        n_samples: number of random 5-point subsets (the same subsets are used for every batch item).
        generator: optional ``torch.Generator`` for reproducible subsets.

    Returns:
        ``(n_samples,)`` or ``(B, n_samples)`` float64 volumes (≥ 0; degenerate subsets give 0 with a
        zero gradient).
    """
    _check_points(points, min_vertices=5)
    idx = random_subsets(points.shape[-2], 5, n_samples, generator=generator, device=points.device)
    simplices = points[..., idx, :]  # (..., n_samples, 5, D)
    return safe_sqrt(cayley_menger_vol2(simplices))
