"""The systems people use instead of a hub, for cross-expert retrieval on pooled features.

* :func:`procrustes_pair` — frozen whitened (shrunk) Procrustes of one pair, no training.
* :func:`cca_pair` — regularised CCA: shrunk whitening of both sides, the top-k canonical directions.
* :func:`relative_representation` — training-free relative representations / ASIF: each item becomes
  its cosine similarities to K paired anchor items in its *own* expert space (optionally sparsified
  to the top-k anchors and sharpened), so two experts become comparable without any fitting.
* :class:`LinearPairHeads` — CLIP-style: one linear projection head per expert of a pair, trained with
  symmetric InfoNCE and a learned temperature (a :class:`~pentachora.modeling.PentachoraModel`, so the
  same Trainer trains it on the same budget as the hub).

Each returns (or embeds into) a space where cosine similarity ranks the other expert's items.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from pentachora.geometry import inv_sqrt_psd
from pentachora.geometry.whiten import shrink_covariance
from pentachora.hub.aligner import ProcrustesAligner
from pentachora.hub.loss import symmetric_infonce
from pentachora.modeling import ModelOutput, PentachoraModel, register_model

__all__ = [
    "LinearPairHeads",
    "PairHeadsConfig",
    "cca_pair",
    "procrustes_pair",
    "relative_representation",
]


def procrustes_pair(
    a_train: torch.Tensor, b_train: torch.Tensor, d_hub: int, shrinkage: float = 0.2, rank: int = 0
) -> tuple[ProcrustesAligner, ProcrustesAligner]:
    """Aligners of a pair: B is the reference (reduced + whitened into ``d_hub``), A is rotated onto it."""
    ref = ProcrustesAligner.fit_new(b_train, None, d_hub=d_hub, shrinkage=shrinkage, rank=rank)
    src = ProcrustesAligner.fit_new(a_train, ref(b_train), d_hub=d_hub, shrinkage=shrinkage, rank=rank)
    return src, ref


@torch.no_grad()
def cca_pair(
    a_train: torch.Tensor, b_train: torch.Tensor, k: int, shrinkage: float = 0.2, power: float = 1.0
):
    """Regularised CCA of a pair; returns ``(embed_a, embed_b)`` maps to the top-``k`` canonical space.

    Canonical variates are scaled by ``ρ_i ** power`` (``power=0``: plain whitened canonical space).
    """
    a = a_train.to(torch.float64)
    b = b_train.to(torch.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    a, b = a - mu_a, b - mu_b
    n = a.shape[0]
    w_a = inv_sqrt_psd(shrink_covariance(a.T @ a / (n - 1), shrinkage))
    w_b = inv_sqrt_psd(shrink_covariance(b.T @ b / (n - 1), shrinkage))
    m = w_a @ (a.T @ b / (n - 1)) @ w_b
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    k = min(k, s.numel())
    scale = s[:k].clamp_min(0) ** power
    p_a = w_a @ u[:, :k] * scale
    p_b = w_b @ vh[:k].T * scale

    def embed_a(x: torch.Tensor) -> torch.Tensor:
        return ((x.to(torch.float64) - mu_a) @ p_a).float()

    def embed_b(x: torch.Tensor) -> torch.Tensor:
        return ((x.to(torch.float64) - mu_b) @ p_b).float()

    embed_a.correlations = s[:k].float()  # type: ignore[attr-defined]
    return embed_a, embed_b


@torch.no_grad()
def relative_representation(
    x: torch.Tensor, anchors: torch.Tensor, mean: torch.Tensor, top_k: int = 0, power: float = 1.0
) -> torch.Tensor:
    """Cosine similarities of ``x (N, d)`` to ``anchors (K, d)`` after centring by ``mean``.

    Args:
        top_k: Keep only each row's ``top_k`` largest similarities (ASIF's sparsification; 0 = all).
        power: Raise kept (non-negative) similarities to this power (ASIF's sharpening).

    Returns:
        ``(N, K)`` relative representation (compare two experts' with cosine).
    """
    sims = F.normalize(x.float() - mean, dim=-1) @ F.normalize(anchors.float() - mean, dim=-1).T
    if top_k and top_k < sims.shape[1]:
        vals, idx = sims.topk(top_k, dim=1)
        vals = vals.clamp_min(0) ** power if power != 1.0 else vals
        sims = torch.zeros_like(sims).scatter_(1, idx, vals)
    return sims


@dataclass
class PairHeadsConfig:
    """Two linear heads ``d_a → d_out`` and ``d_b → d_out`` (with feature standardisation buffers)."""

    d_a: int = 384
    d_b: int = 256
    d_out: int = 256
    tau_init: float = 0.07
    a_name: str = "a"
    b_name: str = "b"


@dataclass
class PairHeadsOutput(ModelOutput):
    nce: torch.Tensor | None = None
    temperature: torch.Tensor | None = None


@register_model
class LinearPairHeads(PentachoraModel):
    """CLIP-style linear contrastive heads for one expert pair (the per-pair baseline (d)).

    Batches: the hub's batch dicts; each head reads the masked mean of its expert's token features.
    """

    model_type: ClassVar[str] = "linear_pair_heads"
    config_class: ClassVar[type] = PairHeadsConfig

    def __init__(self, config: PairHeadsConfig) -> None:
        super().__init__(config)
        c = config
        self.head_a = nn.Linear(c.d_a, c.d_out)
        self.head_b = nn.Linear(c.d_b, c.d_out)
        self.register_buffer("mean_a", torch.zeros(c.d_a))
        self.register_buffer("std_a", torch.ones(c.d_a))
        self.register_buffer("mean_b", torch.zeros(c.d_b))
        self.register_buffer("std_b", torch.ones(c.d_b))
        self.logit_scale = nn.Parameter(torch.tensor(-math.log(c.tau_init)))

    @torch.no_grad()
    def standardise_from(self, a_train: torch.Tensor, b_train: torch.Tensor) -> None:
        """Per-feature standardisation from the pooled training features (what a careful user does)."""
        self.mean_a.copy_(a_train.mean(0))
        self.std_a.copy_(a_train.std(0).clamp_min(1e-6))
        self.mean_b.copy_(b_train.mean(0))
        self.std_b.copy_(b_train.std(0).clamp_min(1e-6))

    def embed_a(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head_a((pooled - self.mean_a) / self.std_a), dim=-1)

    def embed_b(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head_b((pooled - self.mean_b) / self.std_b), dim=-1)

    @staticmethod
    def _mean(entry: dict) -> torch.Tensor:
        f, m = entry["features"], entry["mask"].to(entry["features"].dtype)
        return (f * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp_min(1)

    def forward(self, batch: dict) -> PairHeadsOutput:
        c = self.config
        za = self.embed_a(self._mean(batch[c.a_name]))
        zb = self.embed_b(self._mean(batch[c.b_name]))
        s = self.logit_scale.clamp(0.0, math.log(100.0))
        nce = symmetric_infonce(za, zb, s)
        return PairHeadsOutput(loss=nce, nce=nce, temperature=torch.exp(-s).detach())
