"""GeoVAE — the SVD-free geometric variational patch autoencoder.

The seeds' NoSVD ablation (``PatchSVAE(readout="linear")``) showed four things the SVD supplied to
PatchSVAE implicitly. GeoVAE is a VAE that supplies each of them explicitly:

1. *Unitary U, Vᵀ bound |M̂|* → the inverse frame M̂ is row-sphere-normalised (times a learned
   per-row gain that does not depend on the input): bounded by construction.
2. *S carries the input's magnitude* → per patch, the log-RMS is split off as a separate latent
   channel; the encoder sees the unit-RMS patch (bounded even for raw Cauchy ≈ 63) and the
   decoder's unit-scale output is multiplied by ``exp(log-RMS)``.
3. *The SVD is an exact, input-agnostic readout* → a variational bottleneck with capacity
   (Linear → GELU → Linear to μ, log σ²) under KL(q ‖ N(0, I)) with β and free bits.
4. *CM discipline must cover every sector* → a differentiable pentachoron-CV loss (gradient
   flowing, fp64 Cayley–Menger) on the encoder frames M, on the posterior means μ, on the inverse
   frames M̂ and on the decoder's first hidden layer, each aimed at :func:`target_cv` of *its own*
   dimension (never a hard-coded 0.2).

Pipeline (per image; N patches, P = C·p·p pixel floats, d stochastic latent dims)::

    x (B,C,H,W) ─ patchify ─► (B,N,P) ─► rms, log-RMS ──────────────────────────┐ magnitude m (1)
                               │ ÷ rms (unit-RMS patch)                          │
                               ▼                                                 │
                 ResidualMLP enc ─► M (V×D) ─ row sphere-norm ─► [CV: target_cv(D)]
                               ▼                                                 │
                 Linear(V·D→h) ─ GELU ─ Linear(h→2d) ─► μ [CV: target_cv(d)], log σ² ─► z = μ + σ·ε
                                                                                 ▼
    decode(z):  latent (B, d+1, gh, gw) = [z ; m]          (latent_floats_per_patch = d + 1)
                 n_cross × SpectralCrossAttention on z across the N patches
                 Linear(d+1→h) ─ GELU ─ Linear(h→V·D) ─ row sphere-norm · gain ─► M̂ [CV: target_cv(D)]
                 ResidualMLP dec: in_proj ─► [CV: target_cv(dec_hidden)] ─ … ─► unit-scale patch
                 × exp(mag_center + mag_scale·m) ─ unpatchify ─ BoundarySmooth ─► x̂ (B,C,H,W)

The cross-patch coordination runs inside :meth:`GeoVAE.decode`, so latents drawn from the prior
(:meth:`GeoVAE.sample_prior`) are coordinated as well. There is no SVD or eigendecomposition
anywhere (the CV uses an LU determinant); a test records the ATen ops of a train step to prove it.

Loss (every weight settable through :meth:`set_loss_weights`, e.g. by a ``PhaseCallback``)::

    recon_weight · MSE_norm + kl_weight · KL_fb / P
        + cv_weight · (cv_enc_weight·L_enc + cv_lat_weight·L_lat + cv_inv_weight·L_inv + cv_dec_weight·L_dec)

* ``MSE_norm``: per-patch MSE divided by ``max(rms², recon_scale_floor²)`` (rms of the target
  patch, no gradient). With the default floor 1 this is the plain MSE for images in [−1, 1]
  (their patch RMS is ≤ 1) and a scale-free error for heavy-tailed patches, so one Cauchy patch
  cannot own the gradient. ``recon_loss`` (logged) is always the plain model-space MSE.
* ``KL_fb``: KL per patch in nats with a per-dimension free-bits floor; ``/ P`` puts it in nats
  per pixel float, the unit in which the AutoencoderKL baseline's β is expressed too.
* ``L_s = (cv_s − target_s)²`` on a random subset of patches (``cv_patches`` frames of V rows for
  M and M̂; ``cv_points`` patch vectors, sphere-normalised, for the latent and decoder sectors).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from pentachora.autoencoders.base import AutoencoderOutput, VariationalPatchAutoencoder
from pentachora.autoencoders.distributions import DiagonalGaussian
from pentachora.geometry import cv_loss_term, target_cv
from pentachora.modeling import Presets, register_model
from pentachora.nn import BoundarySmooth, ResidualMLP, SpectralCrossAttention, patchify, unpatchify

__all__ = ["GEOVAE_PRESETS", "SECTORS", "GeoVAE", "GeoVAEConfig", "GeoVAEOutput"]

logger = logging.getLogger(__name__)

#: The sectors that carry CV discipline, in pipeline order.
SECTORS: tuple[str, ...] = ("enc", "lat", "inv", "dec")

#: Architecture presets. ``48:1`` / ``12:1`` are 16×16×3 patches → 16 / 64 latent floats (magnitude
#: included) at the PatchSVAE ``fresnel`` frame size (V=256, D=16, hidden 768, depth 4); the
#: ``tiny-*`` variants train on 2 CPU cores (``tiny-12`` uses 8×8 patches → 16 floats, the same
#: 12:1). Latent floats per 16×16 patch and parameter counts (3 channels):
#:
#: * ``48:1``    — 16 floats (15 + magnitude), 19,055,979 parameters
#: * ``12:1``    — 64 floats (63 + magnitude), 19,123,563 parameters
#: * ``tiny-48`` — 16 floats, 1,720,491 parameters (CPU)
#: * ``tiny-12`` — 8×8×3 patches → 16 floats (= 64 per 16×16 patch), 1,424,563 parameters (CPU). At
#:   12:1, 16 floats per 8×8 patch trained far faster on CPU budgets than 64 floats per 16×16 patch
#:   (25.9 vs 22.6 dB held-out after 300 steps, same data and seed).
#:
#: (PatchSVAE ``fresnel``, the peer at the same frame size, has 16,942,419.)
GEOVAE_PRESETS: dict[str, dict[str, Any]] = {
    "48:1": dict(
        patch_size=16,
        V=256,
        D=16,
        latent_dim=15,
        enc_hidden=768,
        enc_depth=4,
        dec_hidden=768,
        dec_depth=4,
        bottleneck_hidden=256,
        inverse_hidden=256,
        bounded_heads=True,
    ),
    "12:1": dict(
        patch_size=16,
        V=256,
        D=16,
        latent_dim=63,
        enc_hidden=768,
        enc_depth=4,
        dec_hidden=768,
        dec_depth=4,
        bottleneck_hidden=256,
        inverse_hidden=256,
        bounded_heads=True,
    ),
    "tiny-48": dict(
        patch_size=16,
        V=64,
        D=16,
        latent_dim=15,
        enc_hidden=256,
        enc_depth=2,
        dec_hidden=256,
        dec_depth=2,
        bottleneck_hidden=128,
        inverse_hidden=128,
        bounded_heads=True,
    ),
    "tiny-12": dict(
        patch_size=8,
        V=64,
        D=16,
        latent_dim=15,
        enc_hidden=256,
        enc_depth=2,
        dec_hidden=256,
        dec_depth=2,
        bottleneck_hidden=128,
        inverse_hidden=128,
        bounded_heads=True,
    ),
}


@dataclasses.dataclass
class GeoVAEConfig(Presets):
    """Configuration of :class:`GeoVAE`.

    Attributes:
        patch_size: square patch side p in pixels.
        channels: image channels C.
        V: rows of the encoder frame M and the inverse frame M̂ (points on S^(D−1)).
        D: frame dimension (rows live on S^(D−1)); ≥ 4 for the frame CV terms.
        latent_dim: stochastic latent dims d per patch; the decoder consumes ``d + 1`` floats
            (the log-magnitude channel is the +1).
        enc_hidden, enc_depth: encoder ResidualMLP width and residual blocks.
        dec_hidden, dec_depth: decoder ResidualMLP width and residual blocks.
        bottleneck_hidden: hidden width h of the readout ``Linear(V·D→h) → GELU → Linear(h→2d)``.
        inverse_hidden: hidden width of the inverse ``Linear(d+1→h) → GELU → Linear(h→V·D)``.
        dropout: dropout inside the residual blocks.
        n_cross: SpectralCrossAttention layers on the latents inside ``decode`` (0 disables).
        n_heads: attention heads (must divide d); ``None`` → the largest of 4, 3, 2, 1 dividing d.
        max_alpha, alpha_init: cross-attention gate bound and initial logit (as PatchSVAE).
        smooth_mid, smooth_kernel: BoundarySmooth hidden channels (``None`` → 16 for p ≥ 16, else 8)
            and kernel.
        magnitude_eps: floor of the patch RMS, ``rms = sqrt(mean(x²) + eps²)``.
        mag_center, mag_scale: the magnitude channel is ``(log rms − mag_center) / mag_scale``, so
            that it is roughly standard normal on natural data and a prior draw N(0, 1) decodes to
            a plausible contrast.
        max_log_rms: clamp of the decoded log-RMS (guards prior samples; e^8 ≈ 2981).
        logvar_init: initial bias of the log σ² head.
        bounded_heads: squash the posterior heads into a box (learning-rate robustness): μ =
            ``mean_bound · tanh(raw / mean_bound)`` and log σ² = ``c + r · tanh((raw − c) / r)``
            with ``c, r`` the centre and half-width of ``[logvar_min, logvar_max]`` (both are the
            identity near 0 / near ``c``, so the start of training is unchanged). Every preset turns
            it on; the dataclass default stays ``False`` so configs saved before the field existed
            load to the exact model they were trained as. Measured (``benchmarks/autoencoders.py
            --mode lr-sweep``, tiny-48, 150 steps, 2 seeds): at lr 1e-2 with no warm-up, no clip and a
            constant lr the unbounded heads reach z std 103 and KL 9·10⁴ nats per patch and end at
            16.4 dB held-out (one seed 14.5, below the mean-colour predictor's 15.1); bounded:
            z std ≤ 3.4, KL ≤ 105, 19.7 dB. With warm-up and clip 1.0 both end near 20.7 dB.
        mean_bound: the box of μ (in prior standard deviations).
        logvar_min, logvar_max: the box of log σ² (default σ ∈ [e^-5, e]).
        free_bits: per-dimension KL floor in nats (0 disables).
        recon_scale_floor: the training MSE of a patch is divided by ``max(rms², floor²)``;
            ``0`` gives the plain MSE.
        recon_weight, kl_weight: loss weights (``kl_weight`` is β in nats per pixel float).
        cv_weight: master multiplier of all CV terms (what a ``SoftHandCallback`` drives).
        cv_enc_weight, cv_lat_weight, cv_inv_weight, cv_dec_weight: per-sector CV weights.
        cv_patches: frames (patches) per batch for the M / M̂ CV terms (random subset).
        cv_points: patch vectors per batch for the latent / decoder CV terms (random subset).
        cv_samples: random pentachora per point set.
    """

    presets = GEOVAE_PRESETS  # `GeoVAEConfig.preset("tiny-12", latent_dim=31)`
    preset_family = "GeoVAE"

    patch_size: int = 16
    channels: int = 3
    V: int = 256
    D: int = 16
    latent_dim: int = 15
    enc_hidden: int = 768
    enc_depth: int = 4
    dec_hidden: int = 768
    dec_depth: int = 4
    bottleneck_hidden: int = 256
    inverse_hidden: int = 256
    dropout: float = 0.0
    n_cross: int = 2
    n_heads: int | None = None
    max_alpha: float = 0.2
    alpha_init: float = -2.0
    smooth_mid: int | None = None
    smooth_kernel: int = 3
    magnitude_eps: float = 1e-3
    mag_center: float = -0.5
    mag_scale: float = 1.0
    max_log_rms: float = 8.0
    logvar_init: float = -4.0
    bounded_heads: bool = False
    mean_bound: float = 3.0
    logvar_min: float = -10.0
    logvar_max: float = 2.0
    free_bits: float = 0.0
    recon_scale_floor: float = 1.0
    recon_weight: float = 1.0
    kl_weight: float = 1e-3
    cv_weight: float = 1.0
    cv_enc_weight: float = 0.1
    cv_lat_weight: float = 0.01
    cv_inv_weight: float = 0.1
    cv_dec_weight: float = 0.01
    cv_patches: int = 16
    cv_points: int = 64
    cv_samples: int = 32

    def __post_init__(self) -> None:
        for name in (
            "patch_size",
            "channels",
            "V",
            "D",
            "latent_dim",
            "enc_hidden",
            "dec_hidden",
            "bottleneck_hidden",
            "inverse_hidden",
            "cv_patches",
            "cv_samples",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.enc_depth < 0 or self.dec_depth < 0 or self.n_cross < 0:
            raise ValueError("enc_depth, dec_depth and n_cross must be ≥ 0")
        if self.cv_points < 5:
            raise ValueError(f"cv_points must be ≥ 5 (a pentachoron has 5 vertices), got {self.cv_points}")
        if self.n_heads is not None and (self.n_heads < 1 or self.latent_dim % self.n_heads):
            raise ValueError(f"n_heads={self.n_heads} must divide latent_dim={self.latent_dim}")
        for name in ("magnitude_eps", "mag_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.bounded_heads and not (self.mean_bound > 0 and self.logvar_min < self.logvar_max):
            raise ValueError(
                f"bounded heads need mean_bound > 0 and logvar_min < logvar_max, got {self.mean_bound}, "
                f"[{self.logvar_min}, {self.logvar_max}]"
            )
        for name in ("free_bits", "recon_scale_floor", "dropout"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number ≥ 0, got {value}")

    # ------------------------------------------------------------------ derived values
    @property
    def latent_floats_per_patch(self) -> int:
        """``latent_dim + 1``: the stochastic latent plus the log-magnitude channel."""
        return self.latent_dim + 1

    @property
    def resolved_n_heads(self) -> int:
        """Attention heads actually used (the largest of 4, 3, 2, 1 dividing d unless given)."""
        if self.n_heads is not None:
            return int(self.n_heads)
        for heads in (4, 3, 2, 1):
            if self.latent_dim % heads == 0:
                return heads
        return 1  # pragma: no cover

    @property
    def resolved_smooth_mid(self) -> int:
        """BoundarySmooth hidden channels actually used."""
        if self.smooth_mid is not None:
            return int(self.smooth_mid)
        return 16 if self.patch_size >= 16 else 8


@dataclasses.dataclass
class GeoVAEOutput(AutoencoderOutput):
    """:class:`AutoencoderOutput` plus GeoVAE's per-sector terms (all 0-d; logged by the trainer).

    Attributes:
        recon_loss_norm: the scale-normalised MSE the loss uses (see the module docstring).
        kl: mean KL per patch in nats (no free-bits floor).
        kl_loss: the KL term before ``kl_weight`` (free bits applied, per pixel float).
        cv: encoder-frame CV (the PatchSVAE-comparable readout; what ``SoftHandCallback`` reads).
        cv_loss: the weighted sum of the sector CV losses before ``cv_weight``.
        cv_enc, cv_lat, cv_inv, cv_dec: CV readouts of each sector (no gradient).
        cv_enc_loss, cv_lat_loss, cv_inv_loss, cv_dec_loss: ``(cv − target)²`` per sector (with
            gradient).
        log_rms_mean: mean per-patch log-RMS of the input (the magnitude channel before scaling).
        z_std: standard deviation of the sampled latents (no gradient).
        kl_weight: the β used.
    """

    recon_loss_norm: torch.Tensor | None = None
    kl_loss: torch.Tensor | None = None
    cv_enc: torch.Tensor | None = None
    cv_lat: torch.Tensor | None = None
    cv_inv: torch.Tensor | None = None
    cv_dec: torch.Tensor | None = None
    cv_enc_loss: torch.Tensor | None = None
    cv_lat_loss: torch.Tensor | None = None
    cv_inv_loss: torch.Tensor | None = None
    cv_dec_loss: torch.Tensor | None = None
    log_rms_mean: torch.Tensor | None = None
    z_std: torch.Tensor | None = None
    kl_weight: float | None = None


@register_model
class GeoVAE(VariationalPatchAutoencoder):
    """The SVD-free geometric VAE (see the module docstring for the pipeline and the loss).

    Submodules (parameter groups, one per sector): ``encoder`` (ResidualMLP → M), ``bottleneck``
    (M → μ, log σ²), ``cross_attn`` (latent coordination), ``inverse`` (latent → M̂, plus
    ``inverse_gain``), ``decoder`` (ResidualMLP M̂ → unit-scale patch), ``smooth``.

    The latent is image-like: ``(B, d + 1, H/p, W/p)`` with the magnitude as the last channel.

    Args:
        config: a :class:`GeoVAEConfig` (e.g. ``GeoVAEConfig.preset("tiny-48")``).

    Example:
        >>> model = GeoVAE(GeoVAEConfig.preset("tiny-48"))
        >>> out = model(torch.randn(2, 3, 32, 32))
        >>> out.recon.shape, model.latent_floats_per_patch
        (torch.Size([2, 3, 32, 32]), 16)
    """

    model_type: ClassVar[str] = "geovae"
    config_class: ClassVar[type] = GeoVAEConfig
    config: GeoVAEConfig
    loss_weight_names: ClassVar[tuple[str, ...]] = (
        "recon_weight",
        "kl_weight",
        "cv_weight",
        "cv_enc_weight",
        "cv_lat_weight",
        "cv_inv_weight",
        "cv_dec_weight",
    )

    def __init__(self, config: GeoVAEConfig) -> None:
        super().__init__(config)
        c = config
        frame = c.V * c.D
        # Sectors in this order (the global RNG draws follow it, so a seed gives the same weights
        # in every subclass that keeps the order). Subclasses replace the two dense sectors through
        # ``_build_encoder`` / ``_build_decoder`` and keep every other part as built here.
        self.encoder = self._build_encoder()
        self.bottleneck = nn.Sequential(
            nn.Linear(frame, c.bottleneck_hidden), nn.GELU(), nn.Linear(c.bottleneck_hidden, 2 * c.latent_dim)
        )
        with torch.no_grad():
            self.bottleneck[2].bias[c.latent_dim :].fill_(c.logvar_init)
        self.cross_attn = nn.ModuleList(
            [
                SpectralCrossAttention(
                    c.latent_dim, n_heads=c.resolved_n_heads, max_alpha=c.max_alpha, alpha_init=c.alpha_init
                )
                for _ in range(c.n_cross)
            ]
        )
        self.inverse = nn.Sequential(
            nn.Linear(c.latent_dim + 1, c.inverse_hidden), nn.GELU(), nn.Linear(c.inverse_hidden, frame)
        )
        self.inverse_gain = nn.Parameter(torch.ones(c.V, 1))
        self.decoder = self._build_decoder()
        self.smooth = BoundarySmooth(c.channels, kernel=c.smooth_kernel, mid=c.resolved_smooth_mid)
        # computed once here (seeded Monte-Carlo, cached per dimension), not inside the first step
        self._targets: dict[str, float] | None = None
        _ = self.cv_targets

    def _build_encoder(self) -> nn.Module:
        """The encoder sector: unit-RMS patch ``(…, P)`` → frame ``(…, V·D)`` (a ResidualMLP here)."""
        c = self.config
        encoder = ResidualMLP(self.pixel_floats_per_patch, c.enc_hidden, c.V * c.D, c.enc_depth, c.dropout)
        nn.init.orthogonal_(encoder.out_proj.weight)
        return encoder

    def _build_decoder(self) -> nn.Module:
        """The decoder sector: inverse frame ``(…, V·D)`` → unit-scale patch ``(…, P)`` (a ResidualMLP here)."""
        c = self.config
        return ResidualMLP(c.V * c.D, c.dec_hidden, self.pixel_floats_per_patch, c.dec_depth, c.dropout)

    # ------------------------------------------------------------------ accounting
    @property
    def latent_floats_per_patch(self) -> int:
        """``latent_dim + 1`` floats per patch: d stochastic dims plus the log-magnitude."""
        return self.config.latent_floats_per_patch

    @property
    def latent_channels(self) -> int:
        """Channels of the image-like latent ``(B, d + 1, H/p, W/p)``."""
        return self.config.latent_floats_per_patch

    @property
    def cv_targets(self) -> dict[str, float]:
        """CV target of each sector: ``target_cv`` of D (M, M̂), d (latents), dec_hidden (decoder)."""
        if self._targets is None:
            c = self.config
            self._targets = {
                "enc": target_cv(c.D) if c.D >= 4 else math.nan,
                "lat": target_cv(c.latent_dim) if c.latent_dim >= 4 else math.nan,
                "inv": target_cv(c.D) if c.D >= 4 else math.nan,
                "dec": target_cv(c.dec_hidden) if c.dec_hidden >= 4 else math.nan,
            }
        return self._targets

    # ------------------------------------------------------------------ encode
    def _magnitude(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, N, P)`` patches → ``(rms (B, N, 1), magnitude channel (B, N, 1))``."""
        c = self.config
        rms = (patches.float().square().mean(dim=-1, keepdim=True) + c.magnitude_eps**2).sqrt()
        return rms, (rms.log() - c.mag_center) / c.mag_scale

    def _bound_heads(self, mean: torch.Tensor, logvar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Squash raw head outputs into the config's box (identity when ``bounded_heads`` is off)."""
        c = self.config
        if not c.bounded_heads:
            return mean, logvar
        centre, half = 0.5 * (c.logvar_max + c.logvar_min), 0.5 * (c.logvar_max - c.logvar_min)
        mean = c.mean_bound * torch.tanh(mean / c.mean_bound)
        logvar = centre + half * torch.tanh((logvar - centre) / half)
        return mean, logvar

    def _encode_tokens(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.check_input(x)
        c = self.config
        patches = patchify(x, c.patch_size)  # (B, N, P)
        rms, mag = self._magnitude(patches)
        unit = patches / rms.to(patches.dtype)
        m = F.normalize(rearrange(self.encoder(unit), "b n (v d) -> b n v d", v=c.V).float(), dim=-1)
        params = self.bottleneck(rearrange(m.to(unit.dtype), "b n v d -> b n (v d)"))
        mean, logvar = self._bound_heads(*params.float().chunk(2, dim=-1))
        return {"patches": patches, "rms": rms, "mag": mag, "M": m, "mean": mean, "logvar": logvar}

    def _posterior(self, enc: dict[str, torch.Tensor], grid: tuple[int, int]) -> DiagonalGaussian:
        def grid_of(t: torch.Tensor) -> torch.Tensor:
            return rearrange(t, "b (gh gw) l -> b l gh gw", gh=grid[0], gw=grid[1])

        return DiagonalGaussian(grid_of(enc["mean"]), grid_of(enc["logvar"]), fixed=grid_of(enc["mag"]))

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """Images → posterior over the image-like latent.

        Args:
            x: ``(B, C, H, W)`` finite images, H and W multiples of ``patch_size``.

        Returns:
            :class:`DiagonalGaussian` with mean / logvar ``(B, d, H/p, W/p)`` and the magnitude
            channel as ``fixed`` ``(B, 1, H/p, W/p)``; ``sample()`` / ``mode()`` give
            ``(B, d + 1, H/p, W/p)`` latents for :meth:`decode`.
        """
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        return self._posterior(self._encode_tokens(x), grid)

    def latent_for_decoding(self, latent: Any) -> torch.Tensor:
        """The posterior's mode (what :meth:`reconstruct` decodes)."""
        return latent.mode() if isinstance(latent, DiagonalGaussian) else latent

    # ------------------------------------------------------------------ decode
    def _latent_to_frames(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """The decoder side up to the inverse frame (shared by every GeoVAE-shaped model).

        ``(B, d+1, gh, gw)`` latent → ``zs`` (B, N, d) coordinated latents, ``mag`` (B, N, 1),
        ``rows`` (B, N, V, D) the row-sphere-normalised inverse frame and ``mhat`` = rows · gain.
        """
        c = self.config
        if z.dim() != 4 or z.shape[1] != c.latent_floats_per_patch:
            raise ValueError(
                f"expected a latent (B, {c.latent_floats_per_patch}, H/{c.patch_size}, W/{c.patch_size}), "
                f"got {tuple(z.shape)}"
            )
        tokens = rearrange(z, "b l gh gw -> b (gh gw) l")
        zs, mag = tokens[..., : c.latent_dim], tokens[..., c.latent_dim :]
        for layer in self.cross_attn:
            zs = layer(zs)
        inv_in = torch.cat([zs, mag.to(zs.dtype)], dim=-1)
        rows = F.normalize(rearrange(self.inverse(inv_in), "b n (v d) -> b n v d", v=c.V).float(), dim=-1)
        return {"zs": zs, "mag": mag, "rows": rows, "mhat": rows * self.inverse_gain}

    def _unit_patches_to_image(
        self, unit: torch.Tensor, mag: torch.Tensor, grid: tuple[int, int]
    ) -> torch.Tensor:
        """Unit-scale patches ``(B, N, P)`` × ``exp(log-RMS)`` → stitched, smoothed ``(B, C, H, W)``."""
        c = self.config
        log_rms = (c.mag_center + c.mag_scale * mag.float()).clamp(max=c.max_log_rms)
        patches = unit.float() * log_rms.exp()
        image = unpatchify(patches, c.patch_size, grid[0] * c.patch_size, grid[1] * c.patch_size, c.channels)
        return self.smooth(image)

    def _decode_tokens(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, d+1, gh, gw)`` latent → decoded image and the sector representations."""
        f = self._latent_to_frames(z)
        mhat = f["mhat"]
        dec_pre = self.decoder.in_proj(rearrange(mhat, "b n v d -> b n (v d)"))
        h = self.decoder.act(dec_pre)
        for block in self.decoder.blocks:
            h = block(h)
        unit = self.decoder.out_proj(h)  # (B, N, P), unit scale
        image = self._unit_patches_to_image(unit, f["mag"], (z.shape[-2], z.shape[-1]))
        return {"image": image, "z": f["zs"], "mhat": mhat, "dec_pre": dec_pre}

    def decode(self, latent: torch.Tensor | DiagonalGaussian) -> torch.Tensor:
        """Latent → images (cross-patch coordination included).

        Args:
            latent: ``(B, d + 1, gh, gw)`` (a sample, the mode, or a prior draw), or a posterior
                (its mode is decoded).

        Returns:
            ``(B, C, gh·p, gw·p)`` images in model space.
        """
        return self._decode_tokens(self.latent_for_decoding(latent))["image"]

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> GeoVAEOutput:
        """Reconstruct ``x`` and compute the loss (sampled latent in training, the mode in eval).

        Args:
            x: ``(B, C, H, W)`` images in model space (any scale: raw heavy tails are fine).

        Returns:
            :class:`GeoVAEOutput` with ``loss``, ``recon``, the parts and per-sector CV readouts.
        """
        c = self.config
        grid = (x.shape[-2] // c.patch_size, x.shape[-1] // c.patch_size)
        enc = self._encode_tokens(x)
        posterior = self._posterior(enc, grid)
        z = posterior.sample() if self.training else posterior.mode()
        dec = self._decode_tokens(z)
        recon = dec["image"]

        # reconstruction: plain MSE (logged) and the scale-normalised MSE (trained)
        err = (patchify(recon.float(), c.patch_size) - enc["patches"].float()).square().mean(dim=-1)
        recon_loss = err.mean()
        if c.recon_scale_floor > 0:
            scale = enc["rms"].squeeze(-1).detach().square().clamp_min(c.recon_scale_floor**2)
            recon_loss_norm = (err / scale).mean()
        else:
            recon_loss_norm = recon_loss

        # KL per patch (nats), free bits per dimension, in nats per pixel float for the loss
        kl_dims = posterior.kl_per_channel()
        kl = kl_dims.sum()
        kl_loss = kl_dims.clamp_min(c.free_bits).sum() / self.pixel_floats_per_patch

        w = self.loss_weights
        cv_losses, cv_values = self._cv_terms(enc["M"], enc["mean"], dec)
        cv_total = recon_loss.new_zeros(())
        for s in SECTORS:
            if s in cv_losses and w[f"cv_{s}_weight"] > 0:
                cv_total = cv_total + w[f"cv_{s}_weight"] * cv_losses[s]
        loss = w["recon_weight"] * recon_loss_norm + w["kl_weight"] * kl_loss + w["cv_weight"] * cv_total

        with torch.no_grad():
            alpha = (
                torch.stack([layer.alpha for layer in self.cross_attn]).mean()
                if len(self.cross_attn)
                else recon_loss.new_zeros(())
            )
            extras = {
                "alpha_mean": alpha.detach().float(),
                "latent_rms": dec["mhat"].detach().float().square().mean().sqrt(),
                "log_rms_mean": enc["rms"].detach().log().mean(),
                "z_std": z[:, : c.latent_dim].detach().float().std() if z.numel() > 1 else None,
            }
        return GeoVAEOutput(
            loss=loss,
            recon=recon,
            recon_loss=recon_loss,
            recon_loss_norm=recon_loss_norm,
            kl=kl,
            kl_loss=kl_loss,
            cv_loss=cv_total,
            cv=cv_values.get("enc"),
            cv_enc=cv_values.get("enc"),
            cv_lat=cv_values.get("lat"),
            cv_inv=cv_values.get("inv"),
            cv_dec=cv_values.get("dec"),
            cv_enc_loss=cv_losses.get("enc"),
            cv_lat_loss=cv_losses.get("lat"),
            cv_inv_loss=cv_losses.get("inv"),
            cv_dec_loss=cv_losses.get("dec"),
            recon_weight=w["recon_weight"],
            cv_weight=w["cv_weight"],
            kl_weight=w["kl_weight"],
            latent=posterior,
            **extras,
        )

    # ------------------------------------------------------------------ geometry
    def _cv_terms(
        self, m: torch.Tensor, mean: torch.Tensor, dec: dict[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Per-sector CV losses (with gradient) and readouts on random subsets of the patches.

        The latent sector is measured on the posterior means μ, not on the samples: on samples
        the CV term can be lowered by inflating σ (noise makes normalised points isotropic), which
        trades reconstruction for geometry — measured, see the benchmark note.
        """
        c = self.config
        targets = self.cv_targets
        losses: dict[str, torch.Tensor] = {}
        values: dict[str, torch.Tensor] = {}
        n_total = m.shape[0] * m.shape[1]

        frames = {"enc": m, "inv": dec["mhat"]}
        if c.V >= 5 and c.D >= 4:
            idx = torch.randperm(n_total, device=m.device)[: c.cv_patches]
            for s, t in frames.items():
                pts = t.reshape(n_total, c.V, c.D)[idx]
                losses[s], values[s] = cv_loss_term(pts, targets[s], c.cv_samples)

        vectors = {"lat": mean, "dec": dec["dec_pre"]}
        if n_total >= 5:
            idx = torch.randperm(n_total, device=m.device)[: c.cv_points]
            for s, t in vectors.items():
                if t.shape[-1] < 4 or math.isnan(targets[s]):
                    continue
                pts = F.normalize(t.reshape(n_total, -1)[idx].float(), dim=-1).unsqueeze(0)
                losses[s], values[s] = cv_loss_term(pts, targets[s], c.cv_samples)
        return losses, values
