"""GeometricHubLoss: per expert pair, symmetric InfoNCE + midpoint pentachoron variance + running Procrustes.

For every trained pair (a, b) with unit read-outs ``z_a, z_b`` of a batch (B, d):

* **symmetric InfoNCE** with a learned temperature τ = exp(−s) clamped to ``[tau_min, tau_max]``:
  ``½·[CE(z_a z_bᵀ/τ, I) + CE(z_b z_aᵀ/τ, I)]`` — both directions (the reference computed one only,
  DESIGN.md §4);
* **midpoint pentachoron variance** — the seed's "variance minimisation on the pair's meeting point":
  the midpoints ``m = normalise(z_a + z_b)`` of the batch, random 5-point subsets, Cayley–Menger
  volumes (float64) and the variance of the volumes divided by their mean squared (= CV², scale-free,
  so it cannot be met by shrinking every volume to 0). It is *not* a CV target loss; the midpoint CV is
  reported next to ``target_cv(d_hub)``;
* **running Procrustes** — the orthogonal-Procrustes residual of the batch pair
  ``1 − ‖Z_aᵀZ_b‖_* / (‖Z_a‖‖Z_b‖)`` on centred rows, differentiable, measured on every batch (the
  N < D path through thin QRs when B < d; :func:`pentachora.geometry.procrustes_alignment_loss`).

``loss = Σ_pairs (w_nce·nce + w_midpoint·midpoint + w_procrustes·procrustes) / n_pairs``; every term is
returned (averaged over pairs, and per pair in ``parts``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from pentachora.errors import ConfigError
from pentachora.geometry import cv_from_volumes, pentachoron_volumes, procrustes_alignment_loss

__all__ = ["GeometricHubLoss", "HubLossOutput", "midpoint_variance", "symmetric_infonce"]


def symmetric_infonce(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of paired unit rows ``(B, d)`` at ``exp(logit_scale)`` (both directions)."""
    logits = logit_scale.exp() * (a @ b.T)
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def midpoint_variance(
    a: torch.Tensor, b: torch.Tensor, n_samples: int = 64, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Variance of the normalised pentachoron volumes of the pair's midpoints, and their CV (detached).

    Returns:
        ``(variance of vol / mean vol, cv)`` as 0-d tensors (zero, with zero gradient, when collapsed).
    """
    m = F.normalize(a + b, dim=-1)
    vols = pentachoron_volumes(m, n_samples=n_samples, generator=generator)
    cv, valid = cv_from_volumes(vols)
    mean = vols.mean()
    var = ((vols / mean.clamp_min(1e-300) - 1.0) ** 2).mean()
    var = torch.where(valid, var, torch.zeros_like(var))
    return var.to(a.dtype), cv.detach().to(a.dtype)


@dataclass
class HubLossOutput:
    """Terms of the hub loss (0-d tensors, averaged over pairs) and per-pair parts."""

    loss: torch.Tensor
    nce: torch.Tensor
    midpoint: torch.Tensor
    procrustes: torch.Tensor
    midpoint_cv: torch.Tensor
    temperature: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)


def parse_pairs(pairs: Sequence[str], names: Sequence[str]) -> list[tuple[str, str]]:
    """``["a|b", ...]`` → ``[("a", "b"), ...]``; empty → every pair of ``names``.

    Raises:
        ConfigError: A malformed pair or an unknown expert name.
    """
    if not pairs:
        return list(itertools.combinations(names, 2))
    out = []
    for p in pairs:
        parts = p.split("|")
        if len(parts) != 2 or parts[0] == parts[1]:
            raise ConfigError(f"pair {p!r} must be 'A|B' with two different expert names")
        for n in parts:
            if n not in names:
                raise ConfigError(f"pair {p!r} names unknown expert {n!r}; experts are {list(names)}")
        out.append((parts[0], parts[1]))
    return out


class GeometricHubLoss(nn.Module):
    """The three-signal hub loss with a learned temperature (one ``logit_scale`` parameter).

    Args:
        w_nce, w_midpoint, w_procrustes: Term weights.
        tau_init: Initial temperature.
        tau_min, tau_max: Clamp of the temperature.
        midpoint_samples: Random 5-point subsets per batch for the midpoint term.
    """

    def __init__(
        self,
        w_nce: float = 1.0,
        w_midpoint: float = 0.1,
        w_procrustes: float = 0.1,
        tau_init: float = 0.07,
        tau_min: float = 0.01,
        tau_max: float = 1.0,
        midpoint_samples: int = 64,
    ) -> None:
        super().__init__()
        for name, v in (("w_nce", w_nce), ("w_midpoint", w_midpoint), ("w_procrustes", w_procrustes)):
            if not (v >= 0 and math.isfinite(v)):
                raise ConfigError(f"{name} must be a finite number >= 0, got {v}")
        if not 0 < tau_min <= tau_init <= tau_max:
            raise ConfigError(
                f"need 0 < tau_min <= tau_init <= tau_max, got {tau_min}, {tau_init}, {tau_max}"
            )
        self.w_nce, self.w_midpoint, self.w_procrustes = float(w_nce), float(w_midpoint), float(w_procrustes)
        self.log_scale_min, self.log_scale_max = -math.log(tau_max), -math.log(tau_min)
        self.midpoint_samples = int(midpoint_samples)
        self.logit_scale = nn.Parameter(torch.tensor(-math.log(tau_init)))

    def scale(self) -> torch.Tensor:
        """The clamped logit scale (gradient flows inside the clamp range)."""
        return self.logit_scale.clamp(self.log_scale_min, self.log_scale_max)

    @property
    def temperature(self) -> float:
        return float(torch.exp(-self.scale()).detach())

    def forward(
        self,
        embeddings: Mapping[str, torch.Tensor],
        pairs: Sequence[tuple[str, str]],
        generator: torch.Generator | None = None,
    ) -> HubLossOutput:
        """Loss over ``pairs`` of unit embeddings ``{name: (B, d)}``."""
        if not pairs:
            raise ConfigError("the hub loss needs at least one expert pair")
        s = self.scale()
        parts: dict[str, torch.Tensor] = {}
        nces, mids, procs, cvs = [], [], [], []
        for a_name, b_name in pairs:
            a, b = embeddings[a_name], embeddings[b_name]
            nce = symmetric_infonce(a, b, s)
            if self.w_midpoint > 0 and a.shape[0] >= 5:
                mid, cv = midpoint_variance(a, b, self.midpoint_samples, generator)
            else:
                mid = cv = torch.zeros((), dtype=a.dtype, device=a.device)
            proc = procrustes_alignment_loss(a, b) if a.shape[0] >= 2 else torch.zeros_like(nce)
            key = f"{a_name}|{b_name}"
            parts[f"nce[{key}]"], parts[f"midpoint[{key}]"], parts[f"procrustes[{key}]"] = nce, mid, proc
            nces.append(nce)
            mids.append(mid)
            procs.append(proc)
            cvs.append(cv)
        nce_m, mid_m, proc_m = torch.stack(nces).mean(), torch.stack(mids).mean(), torch.stack(procs).mean()
        loss = self.w_nce * nce_m + self.w_midpoint * mid_m + self.w_procrustes * proc_m
        return HubLossOutput(
            loss=loss,
            nce=nce_m,
            midpoint=mid_m,
            procrustes=proc_m,
            midpoint_cv=torch.stack(cvs).mean(),
            temperature=torch.exp(-s).detach(),
            parts=parts,
        )
