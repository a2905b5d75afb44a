"""Pentachoron CV: the coefficient of variation of random 4-simplex volumes.

``cv = std(vol) / mean(vol)`` over random 5-point subsets of a point set. It is a scale-free
measure of how evenly points fill their space. Its value for *uniformly random unit vectors*
depends strongly on the dimension (≈0.20 at D=16, ≈0.02 at D=1024, see :func:`target_cv`), so a
target must always come from the dimension of the space being regularised — never a universal 0.2.

* :func:`cv_metric` — a float readout, no gradient.
* :func:`cv_loss` — ``(cv − target)²``, differentiable into the points.
* :func:`cv_loss_term` — the training term models add to their loss: ``(loss, readout)``.
* :func:`cv_proximity`, :func:`soft_hand_weights` — the seeds' "soft hand" schedule.

**NaN policy** (two entry points, two policies, each stated once here):

* :func:`cv_metric` and :func:`cv_loss` are for checks and user code: NaN/inf in the points raise
  ``ValueError`` (the CV of such a set is undefined and a silent NaN would hide the bug).
* :func:`cv_loss_term` is the term a model adds to its training loss (GeoVAE's sectors, the battery
  bank, the container's anchors): it never raises and never looks at the data on the host. NaN/inf
  in the points propagate into the loss *and* the readout is NaN, so the trainer's non-finite guard
  skips the step and the log shows why. Collapsed sets (all volumes ≈ 0) contribute a zero loss
  with zero gradient and are left out of the readout, in both entry points.
"""

from __future__ import annotations

import functools
import logging
import math

import torch

from pentachora.geometry.simplex import pentachoron_volumes

__all__ = [
    "cv_from_volumes",
    "cv_loss",
    "cv_loss_term",
    "cv_metric",
    "cv_proximity",
    "soft_hand_weights",
    "target_cv",
    "target_cv_stats",
    "volume_scale",
]

logger = logging.getLogger(__name__)

#: A point set is "collapsed" when its mean pentachoron volume is below this fraction of the
#: volume scale of the set, ``(mean squared distance to the centroid)²`` — scale-free, and well
#: above the ~1e-8 relative round-off volume of a flat simplex in float64.
DEGENERATE_RELATIVE_VOLUME = 1e-6


def _check_finite(points: torch.Tensor, name: str = "points") -> None:
    if not torch.isfinite(points).all():
        bad = int((~torch.isfinite(points)).sum())
        raise ValueError(f"{name} contain {bad} NaN/inf values; the pentachoron CV is undefined")


def volume_scale(points: torch.Tensor) -> torch.Tensor:
    """``(…)`` float64 volume scale of point sets ``(…, N, D)``: (mean squared distance to centroid)²."""
    x = points.detach().to(torch.float64)
    return x.var(dim=-2, unbiased=False).sum(-1) ** 2


def cv_from_volumes(
    volumes: torch.Tensor, scale: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """CV along the last axis of a volume tensor, guarded against collapse.

    Args:
        volumes: ``(..., S)`` non-negative volumes (float64 recommended), S ≥ 2.
        scale: optional ``(...)`` volume scale of each set (:func:`volume_scale`); a set counts as
            collapsed when its mean volume is below ``DEGENERATE_RELATIVE_VOLUME · scale``. Without
            it only exactly-zero mean volumes count as collapsed.

    Returns:
        ``(cv, valid)``: ``(...)`` CVs (0 where invalid) and a bool mask of the non-collapsed sets.
        Gradients are finite everywhere and zero on invalid sets.
    """
    mean = volumes.mean(dim=-1)
    threshold = torch.zeros_like(mean) if scale is None else DEGENERATE_RELATIVE_VOLUME * scale.to(mean)
    valid = mean > threshold
    std = volumes.std(dim=-1)
    safe_mean = torch.where(valid, mean, torch.ones_like(mean))
    cv = torch.where(valid, std / safe_mean, torch.zeros_like(mean))
    return cv, valid


@torch.no_grad()
def cv_metric(points: torch.Tensor, n_samples: int = 200, generator: torch.Generator | None = None) -> float:
    """Pentachoron CV of a point set as a Python float (no gradient).

    Args:
        points: ``(N, D)`` points, or ``(B, N, D)`` — then the mean CV over the B sets is returned.
            N ≥ 5; D ≥ 4. Any floating dtype (volumes are computed in float64).
        n_samples: random 5-point subsets per set.
        generator: optional generator for reproducible subsets.

    Returns:
        The CV, or ``nan`` when every set is collapsed (all volumes ≈ 0).

    Raises:
        ValueError: fewer than 5 points, or NaN/inf in ``points``.
    """
    _check_finite(points)
    vols = pentachoron_volumes(points, n_samples=n_samples, generator=generator)
    cv, valid = cv_from_volumes(vols, volume_scale(points))
    if not bool(valid.any()):
        return float("nan")
    return float(cv[valid].mean())


def cv_loss(
    points: torch.Tensor,
    target: float,
    n_samples: int = 64,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Differentiable CV loss ``(cv − target)²`` (mean over sets when batched).

    The gradient flows through the Cayley–Menger volumes into ``points`` — it is never a Python
    float. Volumes are computed in float64; the loss is returned in ``points.dtype``.

    Degenerate input: a set whose volumes are all ≈ 0 (collapsed to fewer than 4 dimensions)
    contributes a **documented zero** with zero gradient, and a warning is logged, because the CV
    of a collapsed set is undefined.

    Args:
        points: ``(N, D)`` or ``(B, N, D)``, N ≥ 5.
        target: the CV to aim at — take it from :func:`target_cv` of the space's dimension.
        n_samples: random 5-point subsets per set.
        generator: optional generator for reproducible subsets.

    Returns:
        0-d tensor.

    Raises:
        ValueError: fewer than 5 points or NaN/inf in ``points``.
    """
    _check_finite(points)
    vols = pentachoron_volumes(points, n_samples=n_samples, generator=generator)
    cv, valid = cv_from_volumes(vols, volume_scale(points))
    if not bool(valid.all()):
        logger.warning(
            "cv_loss: %d of %d point sets are collapsed; they contribute 0",
            int((~valid).sum()),
            valid.numel(),
        )
    per_set = torch.where(valid, (cv - target) ** 2, torch.zeros_like(cv))
    return per_set.mean().to(points.dtype)


def cv_loss_term(
    points: torch.Tensor,
    target: float,
    n_samples: int = 64,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The CV training term of a model: differentiable ``mean((cv − target)²)`` and the mean CV.

    NaN policy (see the module docstring): never raises; NaN/inf points give a non-finite loss and
    a NaN readout, so the trainer's non-finite guard skips the step. Collapsed sets contribute 0
    to the loss (zero gradient) and are left out of the readout.

    Args:
        points: ``(S, n, k)`` point sets (or one ``(n, k)`` set), n ≥ 5, k ≥ 4.
        target: CV target — :func:`target_cv` of ``k``.
        n_samples: random pentachora per set.
        generator: optional generator of the subsets (default: torch's global RNG).

    Returns:
        ``(loss, cv)``: the 0-d loss in ``points.dtype`` (mean over all S sets, collapsed ones
        counting 0) and the 0-d detached float32 mean CV of the valid sets.
    """
    vols = pentachoron_volumes(points, n_samples=n_samples, generator=generator)
    cv, valid = cv_from_volumes(vols, volume_scale(points))
    per_set = torch.where(valid, (cv - target) ** 2, torch.zeros_like(cv))
    n_valid = valid.sum().clamp_min(1)
    readout = (cv.detach() * valid).sum() / n_valid
    if not bool(torch.isfinite(points.detach()).all()):
        readout = readout.new_tensor(float("nan"))
    return per_set.mean().to(points.dtype), readout.float()


#: Peak memory :func:`target_cv_stats` may ask for; larger settings are refused before allocating.
TARGET_CV_MAX_BYTES: int = 4 * 2**30


def target_cv_bytes(dim: int, n_points: int = 64, n_samples: int = 2000, trials: int = 8) -> int:
    """Peak bytes :func:`target_cv_stats` allocates: the points ``(trials, N, D)`` fp64, the subset
    keys ``(n_samples, N)`` fp32, and the gathered simplices ``(trials, n_samples, 5, D)`` fp64 twice
    (the gather and the Cayley–Menger differences)."""
    return 8 * trials * n_points * dim + 4 * n_samples * n_points + 2 * 8 * trials * n_samples * 5 * dim


def check_target_cv_budget(dim: int, n_points: int = 64, n_samples: int = 2000, trials: int = 8) -> None:
    """Refuse :func:`target_cv_stats` settings that would allocate more than :data:`TARGET_CV_MAX_BYTES`.

    Raises:
        ValueError: naming the estimate and what to lower.
    """
    need = target_cv_bytes(dim, n_points, n_samples, trials)
    if need > TARGET_CV_MAX_BYTES:
        raise ValueError(
            f"D={dim} with {trials} trials × {n_samples:,} samples of {n_points:,} points would allocate "
            f"≈{need / 2**30:.1f} GiB (the bound is {TARGET_CV_MAX_BYTES / 2**30:.0f} GiB); use fewer samples, "
            "trials or points"
        )


def target_cv_stats(
    dim: int, n_points: int = 64, n_samples: int = 2000, trials: int = 8, seed: int = 0
) -> tuple[float, float]:
    """Mean and spread (std over trials) of the CV of uniformly random unit vectors on S^(dim−1).

    Args:
        dim: ambient dimension D ≥ 4.
        n_points: points per trial (the CV does not depend on it).
        n_samples: random pentachora per trial.
        trials: independent trials.
        seed: seed of the generator.

    Raises:
        ValueError: D < 4, fewer than 5 points, no trial, or settings that would allocate more than
            :data:`TARGET_CV_MAX_BYTES` (refused before allocating).
    """
    check_target_cv_budget(dim, n_points, n_samples, trials)
    return _target_cv_stats_cached(int(dim), int(n_points), int(n_samples), int(trials), int(seed))


@functools.lru_cache(maxsize=256)
def _target_cv_stats_cached(
    dim: int, n_points: int, n_samples: int, trials: int, seed: int
) -> tuple[float, float]:
    if dim < 4:
        raise ValueError(f"pentachoron volumes need dimension ≥ 4 (a 4-simplex spans 4 dims); got D={dim}")
    if n_points < 5 or trials < 1:
        raise ValueError("need n_points ≥ 5 and trials ≥ 1")
    gen = torch.Generator().manual_seed(seed)
    # on the CPU whatever the default device (e.g. a model built under ``torch.device("meta")``)
    pts = torch.randn(trials, n_points, dim, generator=gen, dtype=torch.float64, device="cpu")
    pts = pts / pts.norm(dim=-1, keepdim=True)
    vols = pentachoron_volumes(pts, n_samples=n_samples, generator=gen)
    cvs, _ = cv_from_volumes(vols)
    mean = float(cvs.mean())
    spread = float(cvs.std()) if trials > 1 else 0.0
    return mean, spread


def target_cv(dim: int, n_points: int = 64, n_samples: int = 2000, trials: int = 8, seed: int = 0) -> float:
    """The CV of uniformly random unit vectors on S^(dim−1): the natural target for a D-dim space.

    Seeded and cached (the first call for a dimension costs milliseconds). Measured values:
    ≈0.20 at D=16, 0.15 at D=24, 0.126 at D=32, 0.086 at D=64, 0.040 at D=256, 0.020 at D=1024.

    Args:
        dim: dimension D ≥ 4 of the space being regularised.
        n_points, n_samples, trials, seed: Monte-Carlo settings (see :func:`target_cv_stats`).
    """
    return target_cv_stats(dim, n_points=n_points, n_samples=n_samples, trials=trials, seed=seed)[0]


def cv_proximity(cv: float | torch.Tensor, target: float, sigma: float = 0.15) -> float | torch.Tensor:
    """Gaussian proximity ``exp(−(cv − target)² / (2σ²))`` in [0, 1]; 1 when on target."""
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    delta = cv - target
    if isinstance(delta, torch.Tensor):
        return torch.exp(-(delta**2) / (2 * sigma**2))
    return math.exp(-(delta**2) / (2 * sigma**2))


def soft_hand_weights(
    cv: float, target: float, sigma: float = 0.15, boost: float = 0.5, penalty: float = 0.3
) -> tuple[float, float]:
    """The seeds' soft-hand schedule: near the CV target, lean on reconstruction; far from it, on CV.

    Returns:
        ``(recon_weight, cv_weight)`` = ``(1 + boost·p, penalty·(1 − p))`` with
        ``p = cv_proximity(cv, target, sigma)``. A NaN ``cv`` (not yet measured) gives ``p = 0``.
    """
    p = 0.0 if (cv is None or math.isnan(float(cv))) else float(cv_proximity(float(cv), target, sigma))
    return 1.0 + boost * p, penalty * (1.0 - p)
