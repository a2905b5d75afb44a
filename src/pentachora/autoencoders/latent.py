"""A diffusers-shaped first stage: any pentachora autoencoder with an image-like latent, as a latent-diffusion
model expects its VAE.

Latent-diffusion code calls ``vae.encode(x).latent_dist.sample()``, multiplies by
``vae.config.scaling_factor`` (after subtracting ``shift_factor``), denoises, divides back and calls
``vae.decode(z).sample``, with images in [−1, 1]. :class:`LatentAutoencoder` offers exactly that surface
over a trained :class:`~pentachora.autoencoders.PatchAutoencoder` (GeoVAE, NoSVD, the folded container,
AutoencoderKL, AutoencoderTiny) without giving up our contract: a typed config, strict safetensors load,
and honest accounting (``latent_floats_per_patch`` is the wrapped model's).

* ``encode(x)`` → diffusers' ``AutoencoderKLOutput(latent_dist=…)``; ``latent_dist`` is a
  :class:`~pentachora.autoencoders.DiagonalGaussian` (``sample(generator)``, ``mode()``, ``kl()``). A
  deterministic encoder (NoSVD, AutoencoderTiny) gives a point mass; GeoVAE's log-magnitude channel is
  a fixed channel of its posterior.
* ``decode(z)`` → diffusers' ``DecoderOutput(sample=…)``.
* ``config.scaling_factor`` / ``config.shift_factor`` — diffusers' scalars, and
  ``config.latents_mean`` / ``config.latents_std`` — per-channel statistics (as diffusers'
  ``AutoencoderKL`` config carries for SDXL-derived models); all computed from data by
  :meth:`LatentAutoencoder.calibrate` and stored in ``config.json``. :meth:`~LatentAutoencoder.normalize`
  and :meth:`~LatentAutoencoder.denormalize` apply the per-channel pair (what our latent T2I uses).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any, ClassVar

import torch

from pentachora.autoencoders.base import PatchAutoencoder
from pentachora.errors import ConfigError, DataError
from pentachora.modeling import (
    MODEL_REGISTRY,
    PentachoraModel,
    config_from_dict,
    config_to_dict,
    register_model,
)

__all__ = ["LatentAutoencoder", "LatentAutoencoderConfig"]


@dataclasses.dataclass
class LatentAutoencoderConfig:
    """Configuration of :class:`LatentAutoencoder`.

    Attributes:
        first_stage_type: The wrapped autoencoder's registered ``model_type`` (``"geovae"``,
            ``"patch_svae"`` with ``readout="linear"``, ``"autoencoder_kl"``, ``"autoencoder_tiny"`` …).
        first_stage: That model's config, as a dict (its ``config.json`` ``"config"``).
        latents_mean: Per-channel mean of posterior draws over the calibration images (empty: 0).
        latents_std: Per-channel standard deviation of those draws (empty: 1).
        scaling_factor: diffusers' scalar: ``1 / std`` of all latent floats (1 until calibrated).
        shift_factor: diffusers' scalar shift: the mean of all latent floats (0 until calibrated).
        calibration_images: How many images the statistics came from (0: not calibrated).
    """

    first_stage_type: str = "geovae"
    first_stage: dict[str, Any] = dataclasses.field(default_factory=dict)
    latents_mean: tuple[float, ...] = ()
    latents_std: tuple[float, ...] = ()
    scaling_factor: float = 1.0
    shift_factor: float = 0.0
    calibration_images: int = 0

    def __post_init__(self) -> None:
        self.latents_mean = tuple(float(v) for v in self.latents_mean)
        self.latents_std = tuple(float(v) for v in self.latents_std)
        if len(self.latents_mean) != len(self.latents_std):
            raise ValueError("latents_mean and latents_std need one entry per latent channel each")
        bad = [v for v in (*self.latents_mean, *self.latents_std) if not math.isfinite(v)]
        if bad or any(v <= 0 for v in self.latents_std):
            raise ValueError("latents_mean must be finite and latents_std finite and > 0")
        if not (math.isfinite(self.scaling_factor) and self.scaling_factor > 0):
            raise ValueError(f"scaling_factor must be a finite number > 0, got {self.scaling_factor}")


def _diffusers_outputs() -> tuple[type, type]:
    """diffusers' ``AutoencoderKLOutput`` and ``DecoderOutput`` (attribute and index access, as pipelines use)."""
    from diffusers.models.autoencoders.vae import DecoderOutput
    from diffusers.models.modeling_outputs import AutoencoderKLOutput

    return AutoencoderKLOutput, DecoderOutput


@register_model
class LatentAutoencoder(PentachoraModel):
    """A trained patch autoencoder behind diffusers' VAE surface (see the module docstring).

    Args:
        config: A :class:`LatentAutoencoderConfig`.

    Raises:
        ConfigError: an unregistered first-stage type, an invalid first-stage config, a first stage
            without an image-like latent, or statistics of the wrong length.
    """

    model_type: ClassVar[str] = "latent-autoencoder"
    config_class: ClassVar[type] = LatentAutoencoderConfig
    config: LatentAutoencoderConfig

    def __init__(self, config: LatentAutoencoderConfig) -> None:
        super().__init__(config)
        target = MODEL_REGISTRY.get(config.first_stage_type)
        if target is None or not issubclass(target, PatchAutoencoder):
            raise ConfigError(
                f"first_stage_type {config.first_stage_type!r} is not a registered patch autoencoder; known: "
                f"{sorted(k for k, v in MODEL_REGISTRY.items() if issubclass(v, PatchAutoencoder))}"
            )
        self.first_stage: PatchAutoencoder = target(
            config_from_dict(target.config_class, config.first_stage, ConfigError)
        )
        if getattr(self.first_stage.config, "readout", "linear") != "linear":
            raise ConfigError(
                "the canonical PatchSVAE (readout='svd') has no image-like latent; use readout='linear'"
            )
        n = len(config.latents_mean)
        if n and n != self.latent_channels:
            raise ConfigError(f"latents_mean has {n} entries for {self.latent_channels} latent channels")
        self.first_stage.requires_grad_(False).eval()

    @classmethod
    def wrap(cls, first_stage: PatchAutoencoder) -> LatentAutoencoder:
        """A :class:`LatentAutoencoder` holding a copy of ``first_stage``'s weights (not yet calibrated)."""
        config = LatentAutoencoderConfig(
            first_stage_type=first_stage.model_type, first_stage=config_to_dict(first_stage.config)
        )
        model = cls(config)
        model.first_stage.load_state_dict(first_stage.state_dict())
        return model.to(next(first_stage.parameters()).device)

    def train(self, mode: bool = True) -> LatentAutoencoder:
        """The first stage is frozen and stays in eval mode (as diffusers keeps its VAE)."""
        super().train(mode)
        self.first_stage.eval()
        return self

    # ------------------------------------------------------------------ accounting
    @property
    def latent_channels(self) -> int:
        """Channels c of the latent ``(B, c, H/s, W/s)``."""
        return int(self.first_stage.latent_floats_per_patch)

    @property
    def downsample(self) -> int:
        """Pixels per latent cell along a side (s)."""
        return int(self.first_stage.latent_stride)

    @property
    def latent_floats_per_patch(self) -> int:
        """The wrapped model's honest count of floats per latent cell."""
        return int(self.first_stage.latent_floats_per_patch)

    # ------------------------------------------------------------------ diffusers surface
    def encode(self, x: torch.Tensor, return_dict: bool = True) -> Any:
        """``(B, C, H, W)`` images in [−1, 1] → ``AutoencoderKLOutput(latent_dist=DiagonalGaussian)``
        (or ``(latent_dist,)`` with ``return_dict=False``); the posterior is over ``(B, c, H/s, W/s)``."""
        posterior = self.first_stage.image_posterior(x)
        if not return_dict:
            return (posterior,)
        encoder_output, _ = _diffusers_outputs()
        return encoder_output(latent_dist=posterior)

    def decode(self, z: torch.Tensor, return_dict: bool = True) -> Any:
        """``(B, c, h, w)`` latent (unscaled) → ``DecoderOutput(sample=(B, C, s·h, s·w))`` in model space
        (or ``(sample,)`` with ``return_dict=False``)."""
        if z.dim() != 4 or z.shape[1] != self.latent_channels:
            raise DataError(f"expected a latent (B, {self.latent_channels}, h, w), got {tuple(z.shape)}")
        images = self.first_stage.decode_image_latent(z)
        if not return_dict:
            return (images,)
        _, decoder_output = _diffusers_outputs()
        return decoder_output(sample=images)

    # ------------------------------------------------------------------ scaling
    def _stats(self, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        if not c.latents_mean:
            return torch.zeros(1, 1, 1, 1).to(ref), torch.ones(1, 1, 1, 1).to(ref)
        mean = torch.tensor(c.latents_mean).view(1, -1, 1, 1).to(ref)
        std = torch.tensor(c.latents_std).view(1, -1, 1, 1).to(ref)
        return mean, std

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """``(z − latents_mean) / latents_std`` per channel: the latent a diffusion model denoises."""
        mean, std = self._stats(z)
        return (z - mean) / std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize`."""
        mean, std = self._stats(z)
        return z * std + mean

    @torch.no_grad()
    def calibrate(
        self, batches: Iterable[torch.Tensor], generator: torch.Generator | None = None
    ) -> dict[str, Any]:
        """Compute and store the latent statistics from images (each batch ``(B, C, H, W)`` in [−1, 1]).

        One posterior draw per image (as diffusers computes ``scaling_factor`` from
        ``latent_dist.sample()``), accumulated in float64.

        Returns:
            The statistics written into the config.

        Raises:
            DataError: no image, or non-finite latents.
        """
        total = count = None
        n_images = 0
        for x in batches:
            z = self.encode(x).latent_dist.sample(generator).double()
            if not torch.isfinite(z).all():
                raise DataError("the first stage produced non-finite latents on the calibration images")
            flat = z.transpose(0, 1).reshape(z.shape[1], -1)
            s1, s2 = flat.sum(dim=1), flat.square().sum(dim=1)
            total = (s1, s2) if total is None else (total[0] + s1, total[1] + s2)
            count = flat.shape[1] + (count or 0)
            n_images += x.shape[0]
        if total is None or not count:
            raise DataError("calibrate needs at least one image")
        mean = total[0] / count
        var = (total[1] / count - mean.square()).clamp_min(1e-12)
        all_mean = float(total[0].sum() / (count * mean.numel()))
        all_var = max(float(total[1].sum() / (count * mean.numel())) - all_mean**2, 1e-12)
        c = self.config
        c.latents_mean = tuple(mean.tolist())
        c.latents_std = tuple(var.sqrt().tolist())
        c.scaling_factor = 1.0 / math.sqrt(all_var)
        c.shift_factor = all_mean
        c.calibration_images = n_images
        return {"latents_mean": list(c.latents_mean), "latents_std": list(c.latents_std),
                "scaling_factor": c.scaling_factor, "shift_factor": c.shift_factor, "images": n_images}  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Round trip through the posterior's mode: ``(B, C, H, W)`` → reconstructions."""
        return self.decode(self.encode(x).latent_dist.mode()).sample
