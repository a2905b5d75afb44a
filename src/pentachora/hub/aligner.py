"""The frozen dimensional bridge of the Conduit hub: centring, PCA/padding, shrunk whitening, rotation.

A :class:`ProcrustesAligner` maps an expert's features ``(..., d_in)`` into the hub space
``(..., d_hub)``::

    z = ((x − μ) · P · W) · R

* ``μ`` — the training mean of the expert's (pooled) features;
* ``P`` — ``(d_in, r)`` with ``r = min(d_in, d_hub)`` (or ``rank`` when truncating): the seed's three
  cases — ``d_in == d_hub`` *direct* (identity), ``d_in > d_hub`` *PCA down* (the top-r principal
  directions), ``d_in < d_hub`` *zero-pad up* (identity; the rotation below is a partial isometry into
  an r-dimensional subspace of the hub, i.e. padding followed by a rotation);
* ``W`` — ``(r, r)`` the inverse square root of the shrunk covariance ``(1−λ)C + λ(tr C/r)I`` of the
  reduced features (identity when ``whiten=False``). Whitened Procrustes is CCA and overfits when N is
  not ≫ D (DESIGN.md §4): shrinkage λ or rank truncation keeps it honest;
* ``R`` — ``(r, d_hub)`` the orthogonal Procrustes map (:func:`pentachora.geometry.orthogonal_procrustes`,
  N < D path included) onto paired *target* rows already in the hub space (typically the reference
  expert's own aligner output); the reference itself gets ``R = [I 0]``.

Every tensor is a buffer, so ``save_pretrained`` writes them to ``model.safetensors`` and a hub is
exactly reproducible. :meth:`ProcrustesAligner.report` measures held-out alignment as *lift over a
shuffled-pair floor* — never raw cosine on the fit set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from pentachora.errors import DataError
from pentachora.geometry import inv_sqrt_psd, orthogonal_procrustes
from pentachora.geometry.whiten import shrink_covariance
from pentachora.modeling import PentachoraModel, register_model

__all__ = [
    "ALIGNER_MODES",
    "AlignerConfig",
    "AlignmentReport",
    "ProcrustesAligner",
    "check_features",
    "retrieval_metrics",
]

ALIGNER_MODES = ("direct", "pca", "pad")


def check_features(x: torch.Tensor, name: str = "features", dim: int | None = None) -> None:
    """Raise :class:`DataError` unless ``x`` is a finite ``(N, D)`` tensor (with ``D == dim`` if given)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise DataError(f"{name} must be a 2-D (N, D) tensor, got {shape}")
    if dim is not None and x.shape[1] != dim:
        raise DataError(
            f"{name} have dimension {x.shape[1]} but the aligner was fitted on {dim}-d features; "
            "use features from the same expert or fit a new aligner"
        )
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise DataError(f"{name} contain {bad} NaN/inf values; clean or drop those rows first")


@dataclass
class AlignerConfig:
    """Shape and fitting options of a :class:`ProcrustesAligner`.

    Attributes:
        d_in: Expert feature dimension.
        d_hub: Hub dimension.
        whiten: Whiten the reduced features with their shrunk covariance.
        shrinkage: λ ∈ [0, 1] of the covariance shrinkage (0 = plain whitening = CCA, overfits).
        rank: Keep only the top ``rank`` principal directions (0 = ``min(d_in, d_hub)``).
    """

    d_in: int = 384
    d_hub: int = 256
    whiten: bool = True
    shrinkage: float = 0.2
    rank: int = 0

    def __post_init__(self) -> None:
        from pentachora.errors import ConfigError

        if self.d_in < 1 or self.d_hub < 1:
            raise ConfigError(f"d_in and d_hub must be >= 1, got {self.d_in}, {self.d_hub}")
        if not 0.0 <= self.shrinkage <= 1.0:
            raise ConfigError(f"shrinkage must be in [0, 1], got {self.shrinkage}")
        if not 0 <= self.rank <= min(self.d_in, self.d_hub):
            raise ConfigError(
                f"rank must be in [0, min(d_in, d_hub)] = [0, {min(self.d_in, self.d_hub)}], got {self.rank}"
            )

    @property
    def mode(self) -> str:
        """``"direct"``, ``"pca"`` (d_in > d_hub) or ``"pad"`` (d_in < d_hub)."""
        if self.d_in == self.d_hub:
            return "direct"
        return "pca" if self.d_in > self.d_hub else "pad"

    @property
    def r(self) -> int:
        """Width of the reduced space: ``rank`` or ``min(d_in, d_hub)``."""
        return self.rank or min(self.d_in, self.d_hub)


@dataclass
class AlignmentReport:
    """Held-out alignment of two paired feature sets in the hub space.

    Attributes:
        n: Paired held-out rows.
        cos_paired: Mean cosine of true pairs.
        cos_shuffled: Mean cosine of shuffled pairs (the floor).
        lift: ``cos_paired − cos_shuffled``.
        r1, r5: Recall@1/@5 source → target among all ``n`` candidates.
        r1_shuffled: Recall@1 of the same retrieval with the pairing shuffled (≈ 1/n).
        chance_r1: ``1 / n``.
    """

    n: int
    cos_paired: float
    cos_shuffled: float
    lift: float
    r1: float
    r5: float
    r1_shuffled: float
    chance_r1: float
    extra: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float]:
        return {
            "n": self.n,
            "cos_paired": self.cos_paired,
            "cos_shuffled": self.cos_shuffled,
            "lift": self.lift,
            "r1": self.r1,
            "r5": self.r5,
            "r1_shuffled": self.r1_shuffled,
            "chance_r1": self.chance_r1,
            **self.extra,
        }


def _unit(x: torch.Tensor) -> torch.Tensor:
    return nn.functional.normalize(x.to(torch.float64), dim=-1)


def retrieval_metrics(
    queries: torch.Tensor, keys: torch.Tensor, ks: tuple[int, ...] = (1, 5), chunk: int = 2048
) -> dict[str, float]:
    """Recall@k of paired rows by cosine similarity among all N candidates (query i → key i).

    Args:
        queries: ``(N, D)``.
        keys: ``(N, D')`` paired with ``queries`` (D' == D).
        ks: The k of each recall.

    Returns:
        ``{"r1": ..., "r5": ...}`` in [0, 1].
    """
    if queries.shape != keys.shape:
        raise DataError(f"queries {tuple(queries.shape)} and keys {tuple(keys.shape)} must match")
    q, k = _unit(queries), _unit(keys)
    n = q.shape[0]
    hits = dict.fromkeys(ks, 0)
    for start in range(0, n, chunk):
        sims = q[start : start + chunk] @ k.T  # (c, N)
        own = sims[torch.arange(sims.shape[0]), torch.arange(start, start + sims.shape[0])]
        rank = (sims > own[:, None]).sum(1)  # 0 = best; ties count in the query's favour
        for kk in ks:
            hits[kk] += int((rank < kk).sum())
    return {f"r{kk}": hits[kk] / n for kk in ks}


def shuffled_floor(
    queries: torch.Tensor, keys: torch.Tensor, seed: int = 0
) -> tuple[float, float, torch.Tensor]:
    """Mean cosine and R@1 with the pairing replaced by a seeded derangement (the floor)."""
    n = queries.shape[0]
    base = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    derange = torch.empty_like(base)
    derange[base] = base.roll(-1)  # a cycle through a random order: no row keeps its own partner
    cos = float((_unit(queries) * _unit(keys[derange])).sum(-1).mean())
    r1 = retrieval_metrics(queries, keys[derange], ks=(1,))["r1"]
    return cos, r1, derange


@register_model
class ProcrustesAligner(PentachoraModel):
    """Frozen map from one expert's features into the hub space (see the module docstring).

    Build with a config, then :meth:`fit` on paired training features; or use :meth:`fit_new`.
    ``forward`` applies the map to ``(..., d_in)`` features (token states or pooled vectors).
    All tensors are buffers; there are no parameters.
    """

    model_type: ClassVar[str] = "procrustes_aligner"
    config_class: ClassVar[type] = AlignerConfig

    def __init__(self, config: AlignerConfig) -> None:
        super().__init__(config)
        d, h, r = config.d_in, config.d_hub, config.r
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("basis", torch.eye(d, r))
        self.register_buffer("whitener", torch.eye(r))
        self.register_buffer("rotation", torch.eye(r, h))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.int64))

    # ------------------------------------------------------------------ properties
    @property
    def is_fitted(self) -> bool:
        return bool(self.fitted.item())

    @property
    def mode(self) -> str:
        return self.config.mode

    # ------------------------------------------------------------------ fitting
    @torch.no_grad()
    def reduce(self, x: torch.Tensor) -> torch.Tensor:
        """``(x − μ) P W``: centred, reduced (PCA/identity) and whitened features ``(..., r)``."""
        return ((x.to(self.mean.dtype) - self.mean) @ self.basis) @ self.whitener

    @torch.no_grad()
    def fit(self, source: torch.Tensor, target: torch.Tensor | None = None) -> ProcrustesAligner:
        """Fit the map on paired training rows.

        Args:
            source: ``(N, d_in)`` expert features (pooled per item), finite, N ≥ 2.
            target: ``(N, d_hub)`` paired rows already in the hub space (e.g. the reference expert's
                aligner output), or ``None`` for the reference expert itself (``R = [I 0]``).

        Returns:
            ``self`` (fitted; buffers in float32, computed in float64).

        Raises:
            DataError: not 2-D, NaN/inf, a wrong dimension, fewer than 2 rows, unequal row counts, or
                features that are the same for every row (nothing to align; the whitener would divide
                by zero variance).
        """
        cfg = self.config
        check_features(source, "source features", cfg.d_in)
        n = source.shape[0]
        if n < 2:
            raise DataError(f"need at least 2 paired rows to fit an aligner, got {n}")
        if target is not None:
            check_features(target, "target features", cfg.d_hub)
            if target.shape[0] != n:
                raise DataError(
                    f"source has {n} rows but target has {target.shape[0]}: the aligner needs the same "
                    "items on both sides (paired row by row)"
                )
        x = source.to(torch.float64)
        mu = x.mean(0)
        xc = x - mu
        if float(xc.abs().max()) <= 1e-12 * max(1.0, float(x.abs().max())):
            raise DataError(
                f"the source features are the same for all {n} rows (constant features): they carry nothing "
                "to align; check the expert that produced them"
            )
        r = cfg.r
        if cfg.mode == "pca" or cfg.rank:
            # top-r principal directions (the N < D case is fine: SVD of the centred data)
            _, _, vh = torch.linalg.svd(xc, full_matrices=False)
            basis = vh[:r].T  # (d_in, ≤ r)
            if basis.shape[1] < r:  # fewer rows than r: pad with zero columns
                basis = torch.cat([basis, torch.zeros(cfg.d_in, r - basis.shape[1], dtype=basis.dtype)], 1)
            # a deterministic sign: the largest-magnitude entry of every direction is positive
            top = basis.abs().argmax(0)
            signs = torch.sign(basis[top, torch.arange(r)])
            basis = basis * torch.where(signs == 0, torch.ones_like(signs), signs)
        else:
            basis = torch.eye(cfg.d_in, r, dtype=torch.float64)
        z = xc @ basis
        if cfg.whiten:
            cov = shrink_covariance(z.T @ z / max(n - 1, 1), cfg.shrinkage)
            whitener = inv_sqrt_psd(cov)
        else:
            whitener = torch.eye(r, dtype=torch.float64)
        z = z @ whitener
        if target is None:
            rotation = torch.eye(r, cfg.d_hub, dtype=torch.float64)
        else:
            pmap = orthogonal_procrustes(z, target.to(torch.float64), center=False, whiten=False)
            rotation = pmap.rotation
        self.mean.copy_(mu.to(self.mean.dtype))
        self.basis.copy_(basis.to(self.basis.dtype))
        self.whitener.copy_(whitener.to(self.whitener.dtype))
        self.rotation.copy_(rotation.to(self.rotation.dtype))
        self.fitted.fill_(1)
        return self

    @classmethod
    def fit_new(
        cls,
        source: torch.Tensor,
        target: torch.Tensor | None = None,
        d_hub: int | None = None,
        whiten: bool = True,
        shrinkage: float = 0.2,
        rank: int = 0,
    ) -> ProcrustesAligner:
        """Build and fit in one call (``d_hub`` defaults to the target's width, else the source's)."""
        check_features(source, "source features")
        if d_hub is None:
            d_hub = int(target.shape[1]) if isinstance(target, torch.Tensor) and target.dim() == 2 else None
            d_hub = d_hub or int(source.shape[1])
        cfg = AlignerConfig(
            d_in=int(source.shape[1]), d_hub=int(d_hub), whiten=whiten, shrinkage=shrinkage, rank=rank
        )
        return cls(cfg).fit(source, target)

    # ------------------------------------------------------------------ applying
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(..., d_in)`` features to ``(..., d_hub)`` (float32; no gradient flows into buffers)."""
        if not self.is_fitted:
            raise DataError("this ProcrustesAligner is not fitted yet; call fit(source, target) first")
        if x.shape[-1] != self.config.d_in:
            raise DataError(
                f"features have dimension {x.shape[-1]} but the aligner was fitted on {self.config.d_in}-d "
                "features; use features from the same expert or fit a new aligner"
            )
        y = (x.to(self.mean.dtype) - self.mean) @ (self.basis @ self.whitener @ self.rotation)
        return y

    @torch.no_grad()
    def report(self, source: torch.Tensor, target: torch.Tensor, seed: int = 0) -> AlignmentReport:
        """Held-out alignment of ``self(source)`` with ``target`` rows (already in the hub space).

        Lift over the shuffled-pair floor: the same cosine with the pairing replaced by a derangement.
        """
        check_features(source, "held-out source features", self.config.d_in)
        check_features(target, "held-out target features", self.config.d_hub)
        if source.shape[0] != target.shape[0]:
            raise DataError(
                f"held-out source has {source.shape[0]} rows but target has {target.shape[0]}; pairs must match"
            )
        return alignment_report(self(source), target, seed=seed)


def alignment_report(a: torch.Tensor, b: torch.Tensor, seed: int = 0) -> AlignmentReport:
    """:class:`AlignmentReport` of paired rows ``a`` and ``b`` in one space."""
    n = a.shape[0]
    if n < 2:
        raise DataError(f"need at least 2 held-out pairs to report alignment, got {n}")
    cos = float((_unit(a) * _unit(b)).sum(-1).mean())
    cos_s, r1_s, _ = shuffled_floor(a, b, seed)
    rec = retrieval_metrics(a, b)
    return AlignmentReport(
        n=n,
        cos_paired=cos,
        cos_shuffled=cos_s,
        lift=cos - cos_s,
        r1=rec["r1"],
        r5=rec["r5"],
        r1_shuffled=r1_s,
        chance_r1=1.0 / n,
        extra={} if math.isfinite(cos) else {"nonfinite": 1.0},
    )
