"""Generalised (multi-view) CCA in float64: one shared space for several whitened views.

MAXVAR generalised CCA (Kettenring 1971; Carroll 1968): for ``m`` views ``Y_j`` of the same ``N`` items,
each centred and whitened (``Y_jᵀY_j / N ≈ I``), the shared directions are the top left singular
vectors of the concatenation ``[Y_1 … Y_m] / √N = U S Vᵀ``, and view ``j`` maps into the shared space
through its block ``V_j`` of the right singular vectors: ``y_j ↦ y_j V_j``. The squared singular values
``λ_i = S_i²`` say how much the views agree along direction ``i``: ``λ = 1`` is a direction only one view
has, ``λ = m`` one that all views share perfectly. With two views ``λ_i − 1`` are exactly the canonical
correlations (``Y'Y/N = [[I, C], [Cᵀ, I]]`` has eigenvalues ``1 ± ρ_i``), so this is CCA extended to
more than two views without choosing a reference.

Weighting the shared directions by ``(λ − 1)^power`` keeps what the views agree on and silences what
one view has alone — the step that makes CCA better than whitened Procrustes for retrieval (whitening
gives every direction, noise included, the same weight).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["GeneralizedCCA", "generalized_cca"]


@dataclass
class GeneralizedCCA:
    """The result of :func:`generalized_cca`.

    Attributes:
        maps: One ``(d_j, k)`` float64 map per view; view ``j``'s shared coordinates are ``Y_j @ maps[j]``
            (already multiplied by ``weights``).
        values: ``(k,)`` the squared singular values ``λ`` (1 = one view only, m = all views agree).
        weights: ``(k,)`` the direction weights ``(λ − 1)^power``, normalised to mean 1.
    """

    maps: list[torch.Tensor]
    values: torch.Tensor
    weights: torch.Tensor

    @property
    def agreement(self) -> torch.Tensor:
        """``λ − 1`` per direction: the canonical correlations when there are two views."""
        return self.values - 1.0


def generalized_cca(
    views: Sequence[torch.Tensor], k: int | None = None, power: float = 1.0, eps: float = 1e-6
) -> GeneralizedCCA:
    """Shared space of several centred, whitened views of the same items (float64 inside).

    Args:
        views: ``[(N, d_j)]`` paired rows; each view should be centred and (approximately) whitened,
            e.g. by a :class:`~pentachora.hub.aligner.ProcrustesAligner`.
        k: Shared directions to keep (default: ``min(N, Σ d_j)``).
        power: Exponent of the direction weights ``(λ − 1)^power`` (0 = unweighted MAXVAR).
        eps: Floor of ``λ − 1`` before the power (directions no two views share get ≈ 0 weight).

    Returns:
        :class:`GeneralizedCCA`.

    Raises:
        ValueError: Fewer than two views, unequal row counts, non-finite values or a bad ``k``.
    """
    if len(views) < 2:
        raise ValueError(f"generalised CCA needs at least two views, got {len(views)}")
    n = int(views[0].shape[0])
    if any(v.dim() != 2 or v.shape[0] != n for v in views):
        raise ValueError(
            f"views must be 2-D with the same number of rows, got {[tuple(v.shape) for v in views]}"
        )
    if n < 2:
        raise ValueError("generalised CCA needs at least two items")
    if not all(bool(torch.isfinite(v).all()) for v in views):
        raise ValueError("views contain NaN/inf")
    y = torch.cat([v.to(torch.float64) for v in views], dim=1) / n**0.5
    k_max = min(n, y.shape[1])
    k = k_max if k is None else int(k)
    if not 1 <= k <= k_max:
        raise ValueError(f"k must be in [1, {k_max}], got {k}")
    _, s, vh = torch.linalg.svd(y, full_matrices=False)
    values = s[:k] ** 2
    weights = (values - 1.0).clamp_min(eps) ** power
    weights = weights / weights.mean()
    v = vh[:k].T * weights  # (Σ d_j, k)
    maps, start = [], 0
    for view in views:
        d = int(view.shape[1])
        maps.append(v[start : start + d])
        start += d
    return GeneralizedCCA(maps=maps, values=values, weights=weights)
