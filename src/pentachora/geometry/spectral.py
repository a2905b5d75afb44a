"""Spectral tools: thin SVD through the fp64 Gram eigendecomposition, effective rank, RankMe.

:func:`gram_eigh_svd` is the SVD PatchSVAE relies on. For ``A`` of shape (B, M, N) with M ≥ N it
forms the N×N Gram matrix ``AᵀA`` in float64, eigendecomposes it, and reads ``S = √λ``, ``V`` and
``U = A V / S``. N is small (16 for the reference model) so this is far cheaper than a batched
``torch.linalg.svd`` of the tall matrix.

Gradients: the textbook eigh backward has terms ``1/(λⱼ − λᵢ)``, which explode when singular values
nearly coincide — exactly the regime of sphere-normalised rows, which spread evenly over the
sphere. We use a custom backward that replaces ``1/Δ`` with ``Δ / (Δ² + ε)`` (ε relative to the
largest eigenvalue), which equals the exact gradient whenever the gap is resolvable and stays
finite when it is not.
"""

from __future__ import annotations

import torch

__all__ = ["effective_rank", "gram_eigh_svd", "rankme"]

#: Relative regulariser of the eigen-gap denominators in the backward pass.
GAP_EPS = 1e-12
#: Relative floor of singular values when dividing to form U.
S_FLOOR = 1e-10
#: Smallest eigenvalue scale used for the floors (keeps a zero matrix's gradients finite).
MIN_SCALE = 1e-30


class _StableEigh(torch.autograd.Function):
    """``torch.linalg.eigh`` with a gap-regularised backward (finite for repeated eigenvalues)."""

    @staticmethod
    def forward(ctx, sym: torch.Tensor):  # type: ignore[override]
        evals, evecs = torch.linalg.eigh(sym)
        ctx.save_for_backward(evals, evecs)
        return evals, evecs

    @staticmethod
    def backward(ctx, grad_evals, grad_evecs):  # type: ignore[override]
        evals, evecs = ctx.saved_tensors
        vt = evecs.transpose(-1, -2)
        inner = torch.zeros_like(evecs)
        if grad_evecs is not None:
            gap = evals.unsqueeze(-2) - evals.unsqueeze(-1)  # gap[i, j] = λj − λi
            # the scale is floored so that eps never underflows to 0 (a zero matrix: 0/0 otherwise)
            scale = evals.abs().amax(dim=-1, keepdim=True).unsqueeze(-1).clamp_min(MIN_SCALE)
            eps = GAP_EPS * scale**2
            f = gap / (gap**2 + eps)
            inner = f * (vt @ grad_evecs)
        if grad_evals is not None:
            inner = inner + torch.diag_embed(grad_evals)
        grad = evecs @ inner @ vt
        # The input is symmetric: return the symmetric part of the gradient.
        return 0.5 * (grad + grad.transpose(-1, -2))


def gram_eigh_svd(
    a: torch.Tensor, compute_dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD ``A = U diag(S) Vh`` via the eigendecomposition of ``AᵀA`` in float64.

    Args:
        a: ``(..., M, N)`` with M ≥ N, any floating dtype.
        compute_dtype: precision of the Gram matrix and its eigendecomposition (float64 by default;
            float32 is faster and loses the small singular values first).

    Returns:
        ``U`` ``(..., M, N)``, ``S`` ``(..., N)`` descending and non-negative, ``Vh`` ``(..., N, N)``,
        all in ``a.dtype``. Singular vectors are unique only up to sign (and rotation within
        repeated singular values), as for any SVD.

    Raises:
        ValueError: if M < N or the input is not at least 2-D.
    """
    if a.dim() < 2:
        raise ValueError(f"gram_eigh_svd expects (..., M, N); got shape {tuple(a.shape)}")
    m, n = a.shape[-2], a.shape[-1]
    if m < n:
        raise ValueError(f"gram_eigh_svd needs M ≥ N (tall matrices); got M={m}, N={n}. Transpose the input.")
    x = a.to(compute_dtype)
    gram = x.transpose(-1, -2) @ x
    evals, evecs = _StableEigh.apply(gram)
    # eigh is ascending; the SVD convention is descending.
    evals = evals.flip(-1)
    v = evecs.flip(-1)
    # Floor the eigenvalues at (1e-10·s_max)² so U = A V / S and the sqrt gradient stay finite for
    # rank-deficient input; singular values above the floor are exact.
    # (an all-zero matrix is floored at S_FLOOR·√MIN_SCALE, so U = 0 and every gradient stays finite,
    # also after the cast back to float32)
    floor = (S_FLOOR**2) * evals.amax(dim=-1, keepdim=True).clamp_min(MIN_SCALE)
    s = torch.sqrt(evals.clamp_min(0.0).clamp_min(floor))
    u = (x @ v) / s.unsqueeze(-2)
    dtype = a.dtype
    return u.to(dtype), s.to(dtype), v.transpose(-1, -2).to(dtype)


def effective_rank(s: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Effective rank ``exp(H(p))`` with ``p = s / Σs`` (Roy & Vetterli), per row.

    Args:
        s: ``(..., K)`` non-negative singular values.
        eps: an all-zero spectrum (sum ≤ eps) has effective rank 0 by convention.

    Returns:
        ``(...)`` effective ranks in [1, K] (0 for an all-zero spectrum), in ``s.dtype``.
    """
    s = s.clamp_min(0)
    total = s.sum(dim=-1, keepdim=True)
    p = s / total.clamp_min(eps)
    ent = -(p * torch.log(p.clamp_min(1e-30))).sum(dim=-1)
    erank = torch.exp(ent)
    return torch.where(total.squeeze(-1) > eps, erank, torch.zeros_like(erank))


def rankme(z: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """RankMe (Garrido et al., 2023): effective rank of an embedding matrix's singular values.

    Args:
        z: ``(N, D)`` embeddings (or ``(..., N, D)``).
        eps: added to the normalised singular values as in the paper.

    Returns:
        ``(...)`` RankMe scores in [1, min(N, D)].
    """
    s = torch.linalg.svdvals(z.to(torch.float64))
    p = s / s.sum(dim=-1, keepdim=True).clamp_min(1e-300) + eps
    return torch.exp(-(p * torch.log(p)).sum(dim=-1)).to(z.dtype if z.is_floating_point() else torch.float32)
