"""PatchSVAE — the canonical patch spectral autoencoder (the SVD peer) and its NoSVD ablation.

Pipeline of the canonical model (``readout="svd"``), faithful to the reference ``geolip-svae``::

    x (B, C, H, W)
      → patchify                               (B, N, C·p·p)
      → ResidualMLP encoder                    (B, N, V·D)   out-projection orthogonally initialised
      → reshape + row sphere-normalisation     M (B, N, V, D), every row on S^(D−1)
      → thin SVD via fp64 Gram-eigh            U (B, N, V, D), S (B, N, D), Vᵀ (B, N, D, D)
      → n_cross × SpectralCrossAttention on S across the N patches of each image   → S′
      → M̂ = U · diag(S′) · Vᵀ                  (B, N, V, D)
      → ResidualMLP decoder                    (B, N, C·p·p)
      → unpatchify (stitch) → BoundarySmooth   (B, C, H, W)

There is **no bottleneck**: the decoder needs U, S and Vᵀ, i.e. ``V·D + D + D²`` floats per patch
(4,368 for V=256, D=16 against 768 pixel floats). :attr:`PatchSVAE.latent_floats_per_patch`
reports exactly that; the "48:1" of the seeds counts S alone.

The **NoSVD ablation** (``readout="linear"``, the seed's ``geolip-svae-nosvd-ablation``) keeps
everything but the readout: ``ω = Linear(V·D → D)(flatten(M))``, cross-attention on ω across the
patches, ``M̂ = Linear(D → V·D)(ω′)``. Options for the seed's debug rounds 2–3:
``omega_layernorm`` (LayerNorm on ω, and orthogonal init with gain 0.5 of both readout linears) and
``mhat_sphere_norm`` (row sphere-normalisation of M̂). Its decoder consumes ``D`` floats per patch.

Loss: ``recon_weight · MSE(recon, x) + cv_weight · cv_term`` where, by ``cv_mode``,

* ``"readout"`` (faithful): the CV of the rows of M is measured without gradient and
  ``(cv − target)²`` is added as a constant — the reference took it from ``.item()``, so it never
  shaped the model (it only moved the loss value);
* ``"loss"``: the differentiable :func:`~pentachora.geometry.cv_loss` on the rows of M
  (a random subset of patches per batch) — gradient reaches the encoder.

The target is ``cv_target`` or, by default, :func:`~pentachora.geometry.target_cv` of D (the CV of
uniformly random unit vectors on S^(D−1)) — never a hard-coded universal band. Pentachoron
volumes need D ≥ 4 and V ≥ 5; below that the CV readout is skipped (``cv = None``).

Numerics: the SVD path (sphere-normalisation, Gram-eigh, M̂) runs with autocast disabled, in fp32
around an fp64 eigendecomposition, so bf16 autocast only touches the MLPs and attention.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from pentachora.autoencoders.base import AutoencoderOutput, PatchAutoencoder
from pentachora.autoencoders.distributions import DiagonalGaussian
from pentachora.errors import ConfigError
from pentachora.geometry import cv_loss, cv_metric, effective_rank, gram_eigh_svd, target_cv
from pentachora.modeling import Presets, register_model
from pentachora.nn import BoundarySmooth, ResidualMLP, SpectralCrossAttention, patchify, unpatchify

__all__ = ["PRESETS", "PatchSVAE", "PatchSVAEConfig", "SpectralLatent"]

logger = logging.getLogger(__name__)

#: Architecture presets. ``fresnel`` and ``freckles`` are the reference sizes (16,942,419 and
#: 2,557,539 parameters, identical to the reference's structure); ``tiny`` trains on 2 CPU cores.
PRESETS: dict[str, dict[str, Any]] = {
    "fresnel": dict(patch_size=16, V=256, D=16, hidden=768, depth=4, n_cross=2),
    "freckles": dict(patch_size=4, V=48, D=4, hidden=384, depth=4, n_cross=2),
    "tiny": dict(patch_size=8, V=32, D=8, hidden=128, depth=2, n_cross=2),
}

_SVD_DTYPES = {"float64": torch.float64, "float32": torch.float32}

#: Upper bounds of the size-like config fields (far above every preset; see ``__post_init__``).
_SIZE_LIMITS = {
    "patch_size": 256, "channels": 64, "V": 4096, "D": 1024, "hidden": 16_384, "depth": 64, "n_cross": 64,
    "cv_loss_samples": 65_536, "cv_readout_patches": 65_536, "cv_readout_samples": 100_000,
    "cv_loss_max_patches": 1_000_000,
}  # fmt: skip


@dataclasses.dataclass
class PatchSVAEConfig(Presets):
    """Configuration of :class:`PatchSVAE` (architecture, readout variant and loss).

    Attributes:
        patch_size: square patch side p in pixels.
        channels: image channels C.
        V: rows of the per-patch matrix M (points on the sphere).
        D: columns of M — the frame dimension; rows live on S^(D−1) and S has D modes.
        hidden: width of the encoder/decoder residual stream.
        depth: residual blocks in the encoder and in the decoder.
        dropout: dropout inside the residual blocks (reference: 0).
        n_cross: spectral cross-attention layers (reference: 2).
        n_heads: attention heads; ``None`` → the reference's 2 for D ≤ 8, else 4 (reduced to a
            divisor of D when needed).
        max_alpha: bound of the cross-attention gates α (reference: 0.2).
        alpha_init: initial gate logit (reference: −2 → α ≈ 0.024).
        smooth_mid: BoundarySmooth hidden channels; ``None`` → 16 for p ≥ 16, else 8 (reference).
        smooth_kernel: BoundarySmooth kernel size (reference: 3).
        readout: ``"svd"`` (canonical) or ``"linear"`` (the NoSVD ablation).
        omega_layernorm: NoSVD round 2 — LayerNorm on ω plus orthogonal init (gain 0.5) of the
            readout and inverse readout.
        mhat_sphere_norm: NoSVD round 3 — row sphere-normalisation of M̂ after the inverse readout.
        svd_dtype: precision of the Gram eigendecomposition, ``"float64"`` (reference) or
            ``"float32"``.
        recon_weight: default weight of the reconstruction MSE.
        cv_weight: default weight of the CV term (the reference's penalty 0.3).
        cv_mode: ``"readout"`` (no gradient, faithful) or ``"loss"`` (differentiable).
        cv_target: CV target; ``None`` → ``target_cv(D)``.
        cv_loss_samples: random pentachora per patch for the differentiable CV loss.
        cv_loss_max_patches: patches per batch the CV loss is applied to (random subset; 0 → all).
        cv_readout_patches: patches (evenly spaced over the batch) the CV readout measures.
        cv_readout_samples: pentachora per patch for the CV readout (reference: 200).
    """

    presets = PRESETS  # fresnel, freckles, tiny — `PatchSVAEConfig.preset("tiny", readout="linear")`
    preset_family = "PatchSVAE"

    patch_size: int = 16
    channels: int = 3
    V: int = 256
    D: int = 16
    hidden: int = 768
    depth: int = 4
    dropout: float = 0.0
    n_cross: int = 2
    n_heads: int | None = None
    max_alpha: float = 0.2
    alpha_init: float = -2.0
    smooth_mid: int | None = None
    smooth_kernel: int = 3
    readout: Literal["svd", "linear"] = "svd"
    omega_layernorm: bool = False
    mhat_sphere_norm: bool = False
    svd_dtype: Literal["float64", "float32"] = "float64"
    recon_weight: float = 1.0
    cv_weight: float = 0.3
    cv_mode: Literal["readout", "loss"] = "readout"
    cv_target: float | None = None
    cv_loss_samples: int = 64
    cv_loss_max_patches: int = 256
    cv_readout_patches: int = 4
    cv_readout_samples: int = 200

    def __post_init__(self) -> None:
        for name in ("patch_size", "channels", "V", "D", "hidden"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.depth < 0 or self.n_cross < 0:
            raise ValueError(f"depth and n_cross must be ≥ 0, got {self.depth}, {self.n_cross}")
        if self.readout not in ("svd", "linear"):
            raise ValueError(f"readout must be 'svd' or 'linear', got {self.readout!r}")
        if self.cv_mode not in ("readout", "loss"):
            raise ValueError(f"cv_mode must be 'readout' or 'loss', got {self.cv_mode!r}")
        if self.svd_dtype not in _SVD_DTYPES:
            raise ValueError(f"svd_dtype must be one of {sorted(_SVD_DTYPES)}, got {self.svd_dtype!r}")
        if self.readout == "svd" and self.V < self.D:
            raise ValueError(f"the SVD readout needs V ≥ D (tall V×D matrices); got V={self.V}, D={self.D}")
        if self.readout == "svd" and (self.omega_layernorm or self.mhat_sphere_norm):
            raise ValueError("omega_layernorm / mhat_sphere_norm are NoSVD options; set readout='linear'")
        if self.n_heads is not None and (self.n_heads < 1 or self.D % self.n_heads):
            raise ValueError(f"n_heads={self.n_heads} must divide D={self.D}")
        if self.cv_mode == "loss" and not self.supports_cv:
            raise ValueError(
                f"cv_mode='loss' needs D ≥ 4 and V ≥ 5 (pentachora span 4 dimensions); got V={self.V}, D={self.D}"
            )
        if self.cv_target is not None and not (math.isfinite(self.cv_target) and self.cv_target >= 0):
            raise ValueError(f"cv_target must be a finite number ≥ 0, got {self.cv_target}")
        for name in ("cv_loss_samples", "cv_readout_patches", "cv_readout_samples"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        # size-like fields are bounded by what they allocate (a hostile config.json must not drive
        # construction or evaluation into tens of GB), the gate bound by what keeps a mode's sign
        for name, top in _SIZE_LIMITS.items():
            if int(getattr(self, name)) > top:
                raise ConfigError(f"{name} must be ≤ {top:,}, got {int(getattr(self, name)):,}")
        if not (math.isfinite(self.max_alpha) and 0.0 <= self.max_alpha <= 1.0):
            raise ConfigError(f"max_alpha must be in [0, 1] (reference 0.2), got {self.max_alpha}")
        if not math.isfinite(self.alpha_init) or abs(self.alpha_init) > 50:
            raise ConfigError(f"alpha_init must be a finite logit in [-50, 50], got {self.alpha_init}")
        if self.cv_loss_max_patches < 0:
            raise ValueError(f"cv_loss_max_patches must be ≥ 0, got {self.cv_loss_max_patches}")

    # ------------------------------------------------------------------ derived values
    @property
    def supports_cv(self) -> bool:
        """Whether pentachoron CV is defined on the rows of M (D ≥ 4 and V ≥ 5)."""
        return self.D >= 4 and self.V >= 5

    @property
    def resolved_n_heads(self) -> int:
        """Heads actually used: ``n_heads`` or the reference default (2 for D ≤ 8, else 4)."""
        if self.n_heads is not None:
            return int(self.n_heads)
        heads = 2 if self.D <= 8 else min(4, self.D)
        while self.D % heads:
            heads -= 1
        return heads

    @property
    def resolved_smooth_mid(self) -> int:
        """BoundarySmooth hidden channels actually used."""
        if self.smooth_mid is not None:
            return int(self.smooth_mid)
        return 16 if self.patch_size >= 16 else 8


@dataclasses.dataclass
class SpectralLatent:
    """What :meth:`PatchSVAE.encode` returns (deterministic; not a posterior).

    Canonical (``readout="svd"``): ``U``, ``S`` (after cross-attention) and ``Vh`` — the decoder
    rebuilds ``M̂ = U·diag(S)·Vh``. NoSVD (``readout="linear"``): ``omega`` (after
    cross-attention). ``raw`` is the spectrum / ω before cross-attention and ``M`` the
    sphere-normalised encoder matrices (for geometry readouts); the decoder uses neither.

    Attributes:
        grid: ``(gh, gw)`` patch grid of the images (image size = grid · patch_size).
        S: ``(B, N, D)`` coordinated singular values (canonical).
        U: ``(B, N, V, D)`` left singular vectors (canonical).
        Vh: ``(B, N, D, D)`` right singular vectors, transposed (canonical).
        omega: ``(B, N, D)`` coordinated ω coordinates (NoSVD).
        raw: ``(B, N, D)`` S or ω before cross-attention.
        M: ``(B, N, V, D)`` row-sphere-normalised encoder matrices.
    """

    grid: tuple[int, int]
    S: torch.Tensor | None = None
    U: torch.Tensor | None = None
    Vh: torch.Tensor | None = None
    omega: torch.Tensor | None = None
    raw: torch.Tensor | None = None
    M: torch.Tensor | None = None

    @property
    def coords(self) -> torch.Tensor:
        """``(B, N, D)`` the per-patch vector cross-attention acted on (S or ω)."""
        out = self.S if self.S is not None else self.omega
        if out is None:
            raise ValueError("SpectralLatent has neither S nor omega")
        return out


def _autocast_off(device: torch.device) -> contextlib.AbstractContextManager:
    """A context that disables autocast on ``device`` (no-op for device types without autocast)."""
    if device.type in ("cpu", "cuda", "xpu", "mps"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


@register_model
class PatchSVAE(PatchAutoencoder):
    """Patch spectral autoencoder (canonical SVD readout) and its NoSVD ablation.

    See the module docstring for the pipeline and the loss. Submodules (parameter groups):
    ``encoder``, ``cross_attn``, ``decoder``, ``smooth`` and, for ``readout="linear"``,
    ``readout``, ``inverse_readout`` (+ ``omega_norm``).

    Args:
        config: a :class:`PatchSVAEConfig` (e.g. ``PatchSVAEConfig.preset("tiny")``).

    Example:
        >>> model = PatchSVAE(PatchSVAEConfig.preset("tiny"))
        >>> out = model(torch.randn(2, 3, 32, 32))
        >>> out.recon.shape, out.loss.shape
        (torch.Size([2, 3, 32, 32]), torch.Size([]))
    """

    model_type: ClassVar[str] = "patch_svae"
    config_class: ClassVar[type] = PatchSVAEConfig
    config: PatchSVAEConfig

    #: Seed of the private generator the CV readout draws its pentachora from (no global RNG use).
    READOUT_SEED: ClassVar[int] = 0

    def __init__(self, config: PatchSVAEConfig) -> None:
        super().__init__(config)
        c = config
        mat_dim = c.V * c.D
        self.encoder = ResidualMLP(self.pixel_floats_per_patch, c.hidden, mat_dim, c.depth, c.dropout)
        # The reference orthogonally initialises the encoder's output projection (load-bearing).
        nn.init.orthogonal_(self.encoder.out_proj.weight)
        self.readout: nn.Linear | None = None
        self.inverse_readout: nn.Linear | None = None
        self.omega_norm: nn.LayerNorm | None = None
        if c.readout == "linear":
            self.readout = nn.Linear(mat_dim, c.D)
            self.inverse_readout = nn.Linear(c.D, mat_dim)
            if c.omega_layernorm:
                self.omega_norm = nn.LayerNorm(c.D)
                nn.init.orthogonal_(self.readout.weight, gain=0.5)
                nn.init.orthogonal_(self.inverse_readout.weight, gain=0.5)
        self.cross_attn = nn.ModuleList(
            [
                SpectralCrossAttention(
                    c.D, n_heads=c.resolved_n_heads, max_alpha=c.max_alpha, alpha_init=c.alpha_init
                )
                for _ in range(c.n_cross)
            ]
        )
        self.decoder = ResidualMLP(mat_dim, c.hidden, self.pixel_floats_per_patch, c.depth, c.dropout)
        self.smooth = BoundarySmooth(c.channels, kernel=c.smooth_kernel, mid=c.resolved_smooth_mid)
        self._cv_target: float | None = None

    # ------------------------------------------------------------------ accounting
    @property
    def latent_floats_per_patch(self) -> int:
        """Floats per patch the decoder consumes: ``V·D + D + D²`` (U, S, Vᵀ) or ``D`` (ω, NoSVD)."""
        c = self.config
        if c.readout == "linear":
            return c.D
        return c.V * c.D + c.D + c.D * c.D

    @property
    def cv_target(self) -> float | None:
        """The CV target of the rows of M (``None`` when CV is undefined, D < 4 or V < 5)."""
        if not self.config.supports_cv:
            return None
        if self._cv_target is None:
            c = self.config
            self._cv_target = float(c.cv_target) if c.cv_target is not None else target_cv(c.D)
        return self._cv_target

    # ------------------------------------------------------------------ encode / decode
    def encode(self, x: torch.Tensor) -> SpectralLatent:
        """Images → spectral latent.

        Args:
            x: ``(B, C, H, W)`` with H, W multiples of ``patch_size``, finite.

        Returns:
            :class:`SpectralLatent` with ``U`` ``(B, N, V, D)``, ``S`` ``(B, N, D)``, ``Vh``
            ``(B, N, D, D)`` (canonical) or ``omega`` ``(B, N, D)`` (NoSVD), plus ``raw`` and ``M``.
        """
        self.check_input(x)
        c = self.config
        grid = (x.shape[-2] // c.patch_size, x.shape[-1] // c.patch_size)
        h = self.encoder(patchify(x, c.patch_size))  # (B, N, V·D)
        with _autocast_off(h.device):
            m = F.normalize(rearrange(h.float(), "b n (v d) -> b n v d", v=c.V), dim=-1)
            if c.readout == "svd":
                u, s, vh = gram_eigh_svd(m, compute_dtype=_SVD_DTYPES[c.svd_dtype])
        if c.readout == "linear":
            assert self.readout is not None
            s = self.readout(rearrange(m, "b n v d -> b n (v d)"))
            if self.omega_norm is not None:
                s = self.omega_norm(s)
            u = vh = None
        raw = s
        for layer in self.cross_attn:
            s = layer(s)
        if c.readout == "svd":
            return SpectralLatent(grid=grid, S=s.float(), U=u, Vh=vh, raw=raw, M=m)
        return SpectralLatent(grid=grid, omega=s, raw=raw, M=m)

    def image_posterior(self, x: torch.Tensor) -> DiagonalGaussian:
        """NoSVD: the coordinated ω as a deterministic image-like latent ``(B, D, H/p, W/p)`` (a point
        mass). The canonical model's (U, S, Vh) is not an image-like latent and is refused.

        Raises:
            NotImplementedError: ``readout="svd"``.
        """
        if self.config.readout != "linear":
            raise NotImplementedError(
                "the canonical PatchSVAE's latent (U, S, Vh per patch) is not an image-like latent; "
                "use readout='linear' (NoSVD) as a latent-diffusion first stage"
            )
        latent = self.encode(x)
        gh, gw = latent.grid
        return DiagonalGaussian.point_mass(rearrange(latent.omega, "b (gh gw) d -> b d gh gw", gh=gh, gw=gw))

    def decode_image_latent(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, D, gh, gw)`` ω grid (NoSVD) → ``(B, C, gh·p, gw·p)`` images."""
        if self.config.readout != "linear":
            raise NotImplementedError(
                "the canonical PatchSVAE has no image-like latent (see image_posterior)"
            )
        if z.dim() != 4 or z.shape[1] != self.config.D:
            raise ValueError(f"expected an ω grid (B, {self.config.D}, gh, gw), got {tuple(z.shape)}")
        omega = rearrange(z, "b d gh gw -> b (gh gw) d")
        return self.decode(SpectralLatent(grid=(z.shape[-2], z.shape[-1]), omega=omega))

    def matrix_from_latent(self, latent: SpectralLatent) -> torch.Tensor:
        """The matrices the decoder consumes: ``M̂ = U·diag(S)·Vh`` or the inverse readout of ω.

        Args:
            latent: a :class:`SpectralLatent` of this model's readout kind.

        Returns:
            ``(B, N, V, D)`` float32 (canonical) matrices.
        """
        c = self.config
        if c.readout == "svd":
            if latent.U is None or latent.S is None or latent.Vh is None:
                raise ValueError("the canonical PatchSVAE decodes from U, S and Vh; the latent lacks them")
            with _autocast_off(latent.S.device):
                return (latent.U.float() * latent.S.float().unsqueeze(-2)) @ latent.Vh.float()
        if latent.omega is None:
            raise ValueError("the NoSVD PatchSVAE decodes from omega; the latent lacks it")
        assert self.inverse_readout is not None
        mhat = rearrange(self.inverse_readout(latent.omega), "b n (v d) -> b n v d", v=c.V)
        if c.mhat_sphere_norm:
            mhat = F.normalize(mhat.float(), dim=-1)
        return mhat

    def _decode_matrix(self, mhat: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        c = self.config
        patches = self.decoder(rearrange(mhat, "b n v d -> b n (v d)"))
        images = unpatchify(patches, c.patch_size, grid[0] * c.patch_size, grid[1] * c.patch_size, c.channels)
        return self.smooth(images)

    def decode(self, latent: SpectralLatent) -> torch.Tensor:
        """Spectral latent → images.

        Args:
            latent: from :meth:`encode` (``S`` may be edited, e.g. to probe the spectrum).

        Returns:
            ``(B, C, gh·p, gw·p)`` reconstructions.
        """
        return self._decode_matrix(self.matrix_from_latent(latent), latent.grid)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> AutoencoderOutput:
        """Reconstruct ``x``; compute the loss and the geometry readouts.

        Args:
            x: ``(B, C, H, W)`` images in model space.

        Returns:
            :class:`AutoencoderOutput` with ``loss``, ``recon``, ``recon_loss``, ``cv_loss`` (None
            when CV is undefined), readouts ``cv``, ``erank``, ``s_delta``, ``alpha_mean``,
            ``latent_rms`` (0-d, no gradient), the weights used, and the ``latent``.
        """
        latent = self.encode(x)
        mhat = self.matrix_from_latent(latent)
        recon = self._decode_matrix(mhat, latent.grid)
        recon_loss = F.mse_loss(recon.float(), x.float())
        weights = self.loss_weights
        cv_value = self._cv_readout(latent.M)
        cv_term: torch.Tensor | None = None
        if self.cv_target is not None:
            if self.config.cv_mode == "loss":
                cv_term = self._cv_loss(latent.M)
            else:
                # Faithful to the reference: a constant ((cv − target)², no gradient).
                delta = 0.0 if math.isnan(cv_value) else cv_value - self.cv_target
                cv_term = recon_loss.new_tensor(delta * delta)
        loss = weights["recon_weight"] * recon_loss
        if cv_term is not None and weights["cv_weight"] > 0:
            loss = loss + weights["cv_weight"] * cv_term
        with torch.no_grad():
            readouts = self._readouts(latent, mhat)
        return AutoencoderOutput(
            loss=loss,
            recon=recon,
            recon_loss=recon_loss,
            cv_loss=cv_term,
            cv=None if self.cv_target is None else recon_loss.new_tensor(cv_value).detach(),
            recon_weight=weights["recon_weight"],
            cv_weight=weights["cv_weight"],
            latent=latent,
            **readouts,
        )

    # ------------------------------------------------------------------ geometry
    def _readout_patches(self, m: torch.Tensor) -> torch.Tensor:
        """``(k, V, D)`` detached matrices of k patches evenly spaced over the batch."""
        flat = m.detach().reshape(-1, *m.shape[-2:])
        k = min(self.config.cv_readout_patches, flat.shape[0])
        idx = torch.linspace(0, flat.shape[0] - 1, k, device=flat.device).round().long()
        return flat[idx]

    def _cv_readout(self, m: torch.Tensor | None) -> float:
        """CV of the rows of M on a few patches (no gradient); NaN when undefined or non-finite."""
        if m is None or self.cv_target is None:
            return float("nan")
        pts = self._readout_patches(m)
        if not bool(torch.isfinite(pts).all()):
            return float("nan")
        gen = torch.Generator().manual_seed(self.READOUT_SEED)
        return cv_metric(pts, n_samples=self.config.cv_readout_samples, generator=gen)

    def _cv_loss(self, m: torch.Tensor | None) -> torch.Tensor:
        """Differentiable CV loss on the rows of M of a random subset of patches (global RNG)."""
        assert m is not None and self.cv_target is not None
        flat = m.reshape(-1, *m.shape[-2:])
        cap = self.config.cv_loss_max_patches
        if cap and flat.shape[0] > cap:
            flat = flat[torch.randperm(flat.shape[0])[:cap].to(flat.device)]
        if not bool(torch.isfinite(flat.detach()).all()):
            return flat.new_tensor(float("nan"))
        return cv_loss(flat, self.cv_target, n_samples=self.config.cv_loss_samples)

    def _readouts(self, latent: SpectralLatent, mhat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Cheap geometry readouts (call under ``torch.no_grad``)."""
        coords = latent.coords.float()
        raw = latent.raw.float() if latent.raw is not None else coords
        if self.config.readout == "svd":
            spectrum = coords
        else:
            # what the SVD would have read from M, on a few patches (the ablation has no S)
            spectrum = torch.linalg.svdvals(self._readout_patches(latent.M).double()).float()
        if self.cross_attn:
            alpha = torch.stack([layer.alpha for layer in self.cross_attn]).mean()
        else:
            alpha = coords.new_zeros(())
        return {
            "erank": effective_rank(spectrum).mean().float(),
            "s_delta": (coords - raw).abs().mean(),
            "alpha_mean": alpha.detach().float(),
            "latent_rms": mhat.float().square().mean().sqrt(),
        }
