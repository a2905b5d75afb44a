"""Battery regimes: what each battery of a bank trains on, as one batch source.

Regimes (:func:`parse_regimes`, :class:`RegimeSource`) are what each battery of a
:class:`~pentachora.autoencoders.BatteryBank` trains on: ``noise-types[:K]`` (battery i ↦ noise type
i mod 16, replica i // 16), ``tiers[:K]`` (battery i ↦ the types of curriculum tier i mod 5),
``patch-clusters:K`` (battery i ↦ cluster i of a k-means on unit-RMS patches of the training
photos; needs scikit-learn, the ``batteries`` extra), and ``A+B`` concatenations.

Patches are in the *unit-RMS* space (:func:`unit_rms`) the battery container's encoder reads, so an
implanted battery sees exactly what it was trained on. The source is a
:class:`~pentachora.data.seeding.BatchSource`: ``batch(step)`` is a pure function of ``(seed, step)``.
This module needs only the data layer and :mod:`pentachora.nn` (no model family).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from typing import Any, Literal

import torch

from pentachora.data.noise import CURRICULUM_TIERS, NOISE_TYPES, NoiseSource
from pentachora.data.seeding import step_generator
from pentachora.nn.patch import patchify

__all__ = [
    "REGIME_FORMS",
    "Regime",
    "RegimeKind",
    "RegimeSource",
    "parse_regimes",
    "unit_rms",
]

logger = logging.getLogger(__name__)


def unit_rms(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Divide every patch by its RMS: ``x / sqrt(mean(x²) + eps²)`` over the last axis.

    The same normalisation as GeoVAE's magnitude split (``magnitude_eps``), so a battery trained on
    these patches sees what the container's encoder sees.

    Args:
        x: ``(..., P)`` patches.
        eps: RMS floor.

    Returns:
        ``(..., P)`` unit-RMS patches (float32).
    """
    x = x.float()
    return x / (x.square().mean(dim=-1, keepdim=True) + eps**2).sqrt()


RegimeKind = Literal["noise-type", "tier", "patch-cluster"]

#: The forms :func:`parse_regimes` accepts.
REGIME_FORMS: tuple[str, ...] = (
    "noise-types[:K]   battery i ↦ noise type i mod 16, replica i // 16 (K defaults to 256)",
    "tiers[:K]         battery i ↦ the noise types of curriculum tier i mod 5 (K defaults to 256)",
    "patch-clusters:K  battery i ↦ cluster i of a k-means (K clusters) on unit-RMS photo patches",
    "A+B               concatenate, e.g. patch-clusters:192+noise-types:64",
)


@dataclasses.dataclass(frozen=True)
class Regime:
    """What one battery trains on.

    Attributes:
        kind: ``"noise-type"``, ``"tier"`` or ``"patch-cluster"``.
        label: a readable name, e.g. ``"noise-type:pink/r3"``, ``"tier:2/r0"``, ``"patch-cluster:17"``.
        noise_types: the noise types mixed (noise regimes).
        cluster: the cluster index (patch-cluster regimes), else −1.
        replica: replica index among batteries of the same noise regime.
    """

    kind: RegimeKind
    label: str
    noise_types: tuple[str, ...] = ()
    cluster: int = -1
    replica: int = 0


def _regime_error(spec: str, why: str) -> ValueError:
    forms = "\n  ".join(REGIME_FORMS)
    return ValueError(f"invalid regimes spec {spec!r}: {why}. Valid forms:\n  {forms}")


def parse_regimes(spec: str) -> list[Regime]:
    """Parse ``noise-types|tiers|patch-clusters:K`` (``+``-concatenated) into one regime per battery.

    Raises:
        ValueError: an unknown form, a bad K, or two ``patch-clusters`` parts.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise _regime_error(str(spec), "empty spec")
    regimes: list[Regime] = []
    seen_clusters = False
    for part in spec.split("+"):
        head, sep, arg = part.strip().partition(":")
        head = head.strip().lower()
        if head not in ("noise-types", "tiers", "patch-clusters"):
            raise _regime_error(spec, f"unknown regime family {head!r}")
        if sep:
            try:
                k = int(arg)
            except ValueError:
                raise _regime_error(spec, f"K must be an integer, got {arg!r}") from None
        else:
            k = 256
        if k < 1:
            raise _regime_error(spec, f"K must be ≥ 1, got {k}")
        if head == "noise-types":
            for i in range(k):
                t = NOISE_TYPES[i % len(NOISE_TYPES)]
                r = i // len(NOISE_TYPES)
                regimes.append(Regime("noise-type", f"noise-type:{t}/r{r}", (t,), replica=r))
        elif head == "tiers":
            n_tiers = len(CURRICULUM_TIERS)
            for i in range(k):
                tier, r = i % n_tiers, i // n_tiers
                regimes.append(Regime("tier", f"tier:{tier}/r{r}", CURRICULUM_TIERS[tier], replica=r))
        else:
            if seen_clusters:
                raise _regime_error(spec, "give patch-clusters at most once")
            seen_clusters = True
            regimes.extend(Regime("patch-cluster", f"patch-cluster:{i}", cluster=i) for i in range(k))
    return regimes


class RegimeSource:
    """Per-battery training patches: ``batch(step)`` → ``(K, B, C, p, p)`` unit-RMS patches.

    A pure function of ``(seed, step)`` (negative steps give fixed evaluation batches). Noise
    regimes generate ``noise_image_size``-pixel images of their types (vectorised, one call per
    group of batteries with the same types), cut them into patches and shuffle; patch-cluster
    regimes draw from pools built once by k-means (scikit-learn ``MiniBatchKMeans``) on
    ``cluster_patches`` random unit-RMS patches of the photos (every 10th member of a cluster is
    held out for :meth:`eval_batch`; clusters with fewer than 10 members evaluate on their members).

    Args:
        regimes: one :class:`Regime` per battery (see :func:`parse_regimes`).
        batch_size: patches per battery per step.
        patch_size: patch side p.
        channels: channels (3 for photos).
        seed: base seed.
        noise_image_size: side of the generated noise images (a multiple of p).
        heavy_tails: ``"clamp"`` or ``"raw"`` noise (unit-RMS patches are bounded either way).
        photos: ``(3, H, W)`` images in [0, 1] for patch clusters (default: the embedded training
            photos — never the held-out ones).
        cluster_patches: patches sampled for the k-means.
        magnitude_eps: RMS floor of the unit-RMS normalisation.
    """

    def __init__(
        self,
        regimes: Sequence[Regime],
        batch_size: int,
        patch_size: int = 8,
        channels: int = 3,
        seed: int = 0,
        noise_image_size: int = 32,
        heavy_tails: Literal["clamp", "raw"] = "clamp",
        photos: Sequence[torch.Tensor] | None = None,
        cluster_patches: int = 65536,
        magnitude_eps: float = 1e-3,
    ) -> None:
        self.regimes = list(regimes)
        if not self.regimes:
            raise ValueError("RegimeSource needs at least one regime")
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        if noise_image_size % patch_size:
            raise ValueError(
                f"noise_image_size {noise_image_size} is not a multiple of the patch {patch_size}"
            )
        self.batch_size = batch_size
        self.patch_size = patch_size
        self.channels = channels
        self.seed = seed
        self.noise_image_size = noise_image_size
        self.heavy_tails = heavy_tails
        self.eps = magnitude_eps
        # batteries grouped by their noise types (one generator call per group)
        self._noise_groups: dict[tuple[str, ...], list[int]] = {}
        self._cluster_ids: list[int] = []
        for i, r in enumerate(self.regimes):
            if r.kind == "patch-cluster":
                self._cluster_ids.append(i)
            else:
                self._noise_groups.setdefault(r.noise_types, []).append(i)
        self.cluster_sizes: list[int] = []
        if self._cluster_ids:
            if channels != 3:
                raise ValueError("patch-cluster regimes need 3 channels (RGB photos)")
            self._build_clusters(photos, cluster_patches)

    # ------------------------------------------------------------------ clusters
    def _build_clusters(self, photos: Sequence[torch.Tensor] | None, n_patches: int) -> None:
        try:
            from sklearn.cluster import MiniBatchKMeans
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "patch-cluster regimes run a k-means from scikit-learn: pip install 'pentachora[batteries]'"
            ) from exc

        from pentachora.data.images import load_sample_photos, to_model_space

        photos = list(photos) if photos is not None else load_sample_photos("train")
        k = len(self._cluster_ids)
        p = self.patch_size
        g = step_generator(self.seed, -10_000)
        per = math.ceil(n_patches / len(photos))
        chunks = []
        for im in photos:
            if im.shape[-1] < p or im.shape[-2] < p:
                continue
            win = to_model_space(im.float()).unfold(1, p, 1).unfold(2, p, 1)  # (3, H', W', p, p)
            top = torch.randint(0, win.shape[1], (per,), generator=g)
            left = torch.randint(0, win.shape[2], (per,), generator=g)
            chunks.append(win[:, top, left].permute(1, 0, 2, 3).reshape(per, -1))
        if not chunks:
            raise ValueError(f"no photo is at least {p}×{p} pixels")
        patches = unit_rms(torch.cat(chunks), self.eps)
        if patches.shape[0] < 2 * k:
            raise ValueError(f"{patches.shape[0]} patches are too few for {k} clusters")
        logger.info("k-means: %d clusters on %d unit-RMS %d×%d patches", k, patches.shape[0], p, p)
        km = MiniBatchKMeans(
            n_clusters=k, random_state=self.seed % (2**31), n_init=3, batch_size=4096, max_iter=100
        )
        labels = torch.from_numpy(km.fit_predict(patches.numpy())).long()
        order = torch.argsort(labels, stable=True)
        sorted_labels = labels[order]
        counts = torch.bincount(sorted_labels, minlength=k)
        # rank of every member inside its cluster; every 10th one is held out
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(order.numel()) - starts[sorted_labels]
        held = (rank % 10 == 9) & (counts[sorted_labels] >= 10)
        members = patches[order]
        train_lab, eval_lab = sorted_labels[~held], sorted_labels[held]
        self._pool = members[~held].contiguous()
        self._counts = torch.bincount(train_lab, minlength=k)
        self._offsets = torch.cumsum(self._counts, 0) - self._counts
        eval_counts = torch.bincount(eval_lab, minlength=k)
        # clusters without held-out members evaluate on their training members
        self._eval_pool = torch.cat([members[held], self._pool])
        n_held = int(held.sum())
        eval_offsets = torch.cumsum(eval_counts, 0) - eval_counts
        self._eval_offsets = torch.where(eval_counts > 0, eval_offsets, n_held + self._offsets)
        self._eval_counts = torch.where(eval_counts > 0, eval_counts, self._counts)
        self.cluster_sizes = [int(v) for v in counts]
        self.kmeans_inertia = float(km.inertia_)

    def _cluster_batch(self, n: int, step: int, evaluation: bool) -> torch.Tensor:
        g = step_generator(self.seed + 1, step)
        k = len(self._cluster_ids)
        pool, offsets, counts = (
            (self._eval_pool, self._eval_offsets, self._eval_counts)
            if evaluation
            else (self._pool, self._offsets, self._counts)
        )
        u = torch.rand(k, n, generator=g, dtype=torch.float64)
        idx = offsets.unsqueeze(1) + (u * counts.unsqueeze(1)).long().clamp_max(counts.unsqueeze(1) - 1)
        return pool[idx]  # (k, n, P)

    # ------------------------------------------------------------------ noise
    def _noise_batch(
        self, types: tuple[str, ...], n_batteries: int, n: int, step: int, group: int
    ) -> torch.Tensor:
        s, p = self.noise_image_size, self.patch_size
        per_image = (s // p) ** 2
        need = n_batteries * n
        n_images = math.ceil(need / per_image)
        src = NoiseSource(
            types=types,
            batch_size=n_images,
            image_size=s,
            channels=self.channels,
            seed=self.seed + 7919 * (group + 1),
            heavy_tails=self.heavy_tails,
        )
        patches = patchify(src.batch(step), p).reshape(-1, self.channels * p * p)
        perm = torch.randperm(patches.shape[0], generator=step_generator(self.seed + 2, step))[:need]
        return unit_rms(patches[perm], self.eps).reshape(n_batteries, n, -1)

    # ------------------------------------------------------------------ public
    def _assemble(self, n: int, step: int, evaluation: bool) -> torch.Tensor:
        k, c, p = len(self.regimes), self.channels, self.patch_size
        out = torch.empty(k, n, c * p * p)
        for gi, (types, ids) in enumerate(self._noise_groups.items()):
            out[ids] = self._noise_batch(types, len(ids), n, step, gi)
        if self._cluster_ids:
            out[self._cluster_ids] = self._cluster_batch(n, step, evaluation)
        return out.reshape(k, n, c, p, p)

    def batch(self, step: int) -> torch.Tensor:
        """``(K, B, C, p, p)`` unit-RMS training patches for ``step`` (battery k's in row k)."""
        return self._assemble(self.batch_size, step, evaluation=False)

    def eval_batch(self, n: int = 64) -> torch.Tensor:
        """``(K, n, C, p, p)`` fixed evaluation patches (held-out cluster members; fresh noise draws)."""
        return self._assemble(n, -1, evaluation=True)

    def describe(self, k: int) -> dict[str, Any]:
        """Metadata of battery k's regime (for :meth:`~pentachora.autoencoders.BatteryBank.summarize`)."""
        r = self.regimes[k]
        out: dict[str, Any] = {"label": r.label, "kind": r.kind}
        if r.kind == "patch-cluster":
            out["cluster"] = r.cluster
            out["cluster_size"] = self.cluster_sizes[self._cluster_ids.index(k)]
        else:
            out["noise_types"] = list(r.noise_types)
            out["replica"] = r.replica
            out["heavy_tails"] = self.heavy_tails
        return out

    def __repr__(self) -> str:
        kinds: dict[str, int] = {}
        for r in self.regimes:
            kinds[r.kind] = kinds.get(r.kind, 0) + 1
        return f"RegimeSource(K={len(self.regimes)}, {kinds}, batch_size={self.batch_size}, seed={self.seed})"
