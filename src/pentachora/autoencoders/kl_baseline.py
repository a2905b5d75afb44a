"""A thin adapter that lets the one trainer train diffusers' ``AutoencoderKL`` from scratch.

The baseline every latent-diffusion user knows: a convolutional VAE with ``f = 2^(levels − 1)``
spatial downsampling and ``c`` latent channels. f8 with 4 channels is the SD/SDXL layout (48:1 for
RGB); f8 with 16 channels is the FLUX/SD3 layout (12:1). Here it is built from a small config
(nothing is downloaded) and trained with the same objective shape as GeoVAE::

    loss = recon_weight · MSE(x̂, x) + kl_weight · KL(q(z|x) ‖ N(0, I)) / (C·H·W)

with the KL in nats per image divided by the pixel floats of the image — the same "nats per pixel
float" unit in which GeoVAE's β is expressed, so an equal ``kl_weight`` is an equal β.

Honest accounting: one latent cell of ``c`` floats covers an ``f × f`` tile of ``C·f²`` pixel
floats, so this adapter presents itself as a :class:`PatchAutoencoder` whose "patch" is the
latent cell (``patch_size = f``, ``latent_floats_per_patch = c``). The compression ratio
``C·f²/c`` is exact (48 for f8c4, 12 for f8c16); per 16×16 patch that is ``4c`` floats (16 / 64),
the same as GeoVAE's 48:1 / 12:1 presets. The decoder's receptive field spans many cells (it is
convolutional), so unlike the patch models it is not a per-patch code — but it consumes no other
floats than the latent.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from pentachora.autoencoders.base import AutoencoderOutput, VariationalPatchAutoencoder
from pentachora.autoencoders.distributions import DiagonalGaussian
from pentachora.modeling import Presets, register_model

__all__ = [
    "KL_PRESETS",
    "AutoencoderKLAdapter",
    "AutoencoderKLAdapterConfig",
    "DiffusersLatentConfig",
    "DiffusersLatentModel",
    "diffusers_class",
]

#: Small from-scratch configurations (f8: four levels). Parameter counts in the config docstring.
KL_PRESETS: dict[str, dict[str, Any]] = {
    "tiny-f8c4": dict(block_out_channels=(32, 64, 64, 64), latent_channels=4),
    "tiny-f8c16": dict(block_out_channels=(32, 64, 64, 64), latent_channels=16),
    "small-f8c4": dict(block_out_channels=(64, 128, 256, 256), latent_channels=4),
    "small-f8c16": dict(block_out_channels=(64, 128, 256, 256), latent_channels=16),
}


def diffusers_class(name: str, needed_by: str) -> Any:
    """``diffusers.<name>``, or an ImportError that says which extra to install."""
    try:
        import diffusers
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(f"{needed_by} needs diffusers: pip install 'pentachora[diffusion]'") from exc
    return getattr(diffusers, name)


class DiffusersLatentConfig:
    """What the diffusers adapters' configs share: ``block_out_channels`` (one entry per level) set the
    downsampling factor ``f = 2^(levels − 1)``, the adapters' "patch"."""

    block_out_channels: tuple[int, ...]

    def _check_blocks(self) -> None:
        """Normalise ``block_out_channels`` to a tuple of ints and refuse an empty or non-positive one."""
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        if not self.block_out_channels or min(self.block_out_channels) < 1:
            raise ValueError(f"block_out_channels must be positive, got {self.block_out_channels}")

    @property
    def patch_size(self) -> int:
        """The downsampling factor f (pixels per latent cell along a side)."""
        return 2 ** (len(self.block_out_channels) - 1)


class DiffusersLatentModel:
    """What the diffusers adapters share: one latent cell of ``latent_channels`` floats per ``f × f``
    tile (their honest latent accounting)."""

    config: Any

    @property
    def latent_floats_per_patch(self) -> int:
        """``latent_channels`` floats per ``f × f`` latent cell."""
        return self.config.latent_channels

    @property
    def latent_channels(self) -> int:
        """Channels of the latent ``(B, c, H/f, W/f)``."""
        return self.config.latent_channels


@dataclasses.dataclass
class AutoencoderKLAdapterConfig(DiffusersLatentConfig, Presets):
    """Configuration of :class:`AutoencoderKLAdapter` (a diffusers ``AutoencoderKL`` from scratch).

    Presets (:data:`KL_PRESETS`, 3 channels): ``tiny-f8c4`` 48:1 and ``tiny-f8c16`` 12:1
    (1,250,759 / 1,272,755 parameters), ``small-f8c4`` / ``small-f8c16`` (15,481,255 / 15,565,459;
    SD's VAE has 83.7M).

    Attributes:
        channels: image channels C (in and out).
        block_out_channels: channels per resolution level; ``len − 1`` downsamplings
            (4 levels → f8).
        layers_per_block: ResNet layers per level (diffusers default 1; SD uses 2).
        latent_channels: latent channels c.
        norm_num_groups: GroupNorm groups (must divide every entry of ``block_out_channels``).
        mid_block_add_attention: self-attention in the mid block (SD: yes).
        recon_weight: weight of the model-space MSE.
        kl_weight: β, in nats per pixel float (the KL per image is divided by C·H·W).
    """

    presets = KL_PRESETS
    preset_family = "AutoencoderKL"

    channels: int = 3
    block_out_channels: tuple[int, ...] = (32, 64, 64, 64)
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 32
    mid_block_add_attention: bool = True
    recon_weight: float = 1.0
    kl_weight: float = 1e-3

    def __post_init__(self) -> None:
        self._check_blocks()
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(
                f"norm_num_groups={self.norm_num_groups} must divide every block_out_channels entry; "
                f"it does not divide {bad}"
            )
        if self.latent_channels < 1 or self.channels < 1 or self.layers_per_block < 1:
            raise ValueError("latent_channels, channels and layers_per_block must be ≥ 1")


@register_model
class AutoencoderKLAdapter(DiffusersLatentModel, VariationalPatchAutoencoder):
    """diffusers ``AutoencoderKL`` behind the pentachora autoencoder API (see the module docstring).

    Args:
        config: an :class:`AutoencoderKLAdapterConfig`.

    Raises:
        ImportError: diffusers is not installed (``pip install pentachora[diffusion]``).
    """

    model_type: ClassVar[str] = "autoencoder_kl"
    config_class: ClassVar[type] = AutoencoderKLAdapterConfig
    config: AutoencoderKLAdapterConfig
    loss_weight_names: ClassVar[tuple[str, ...]] = ("recon_weight", "kl_weight")

    def __init__(self, config: AutoencoderKLAdapterConfig) -> None:
        super().__init__(config)
        AutoencoderKL = diffusers_class("AutoencoderKL", type(self).__name__)
        c = config
        n = len(c.block_out_channels)
        self.vae = AutoencoderKL(
            in_channels=c.channels,
            out_channels=c.channels,
            down_block_types=("DownEncoderBlock2D",) * n,
            up_block_types=("UpDecoderBlock2D",) * n,
            block_out_channels=c.block_out_channels,
            layers_per_block=c.layers_per_block,
            latent_channels=c.latent_channels,
            norm_num_groups=c.norm_num_groups,
            mid_block_add_attention=c.mid_block_add_attention,
        )

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """``(B, C, H, W)`` → posterior with mean / logvar ``(B, c, H/f, W/f)``."""
        self.check_input(x)
        dist = self.vae.encode(x).latent_dist
        return DiagonalGaussian(dist.mean, dist.logvar)

    def latent_for_decoding(self, latent: Any) -> torch.Tensor:
        """The posterior's mode."""
        return latent.mode() if isinstance(latent, DiagonalGaussian) else latent

    def decode(self, latent: torch.Tensor | DiagonalGaussian) -> torch.Tensor:
        """``(B, c, h, w)`` latent (or a posterior) → ``(B, C, f·h, f·w)`` images."""
        return self.vae.decode(self.latent_for_decoding(latent)).sample

    def forward(self, x: torch.Tensor) -> AutoencoderOutput:
        """Reconstruct ``x`` (sampled latent in training, the mode in eval) with MSE + β·KL.

        Returns:
            :class:`AutoencoderOutput` with ``loss``, ``recon``, ``recon_loss`` (model-space MSE)
            and ``kl`` (mean nats per latent cell).
        """
        posterior = self.encode(x)
        z = posterior.sample() if self.training else posterior.mode()
        recon = self.decode(z)
        recon_loss = F.mse_loss(recon.float(), x.float())
        kl_image = posterior.kl().float()  # (B,) nats per image
        pixel_floats = math.prod(x.shape[1:])
        kl_loss = kl_image.mean() / pixel_floats
        w = self.loss_weights
        loss = w["recon_weight"] * recon_loss + w["kl_weight"] * kl_loss
        return AutoencoderOutput(
            loss=loss,
            recon=recon,
            recon_loss=recon_loss,
            kl=posterior.kl_per_channel().sum().detach(),
            recon_weight=w["recon_weight"],
            latent=posterior,
        )
