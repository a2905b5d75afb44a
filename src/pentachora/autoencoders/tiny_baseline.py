"""diffusers' ``AutoencoderTiny`` (TAESD's architecture) trained from scratch behind the pentachora API.

TAESD is the other first stage latent-diffusion users meet: a deterministic convolutional encoder and
decoder (no KL, no posterior), ``f = 2^(levels − 1)`` downsampling and ``c`` latent channels, built for
cheap decoding. Here it is built from a small config (nothing is downloaded) and trained on plain MSE.
Its decoder squashes the latent with ``3·tanh(z/3)`` (diffusers' ``DecoderTiny``), so latents beyond
±3 all decode alike.

Honest accounting as for :class:`~pentachora.autoencoders.AutoencoderKLAdapter`: a latent cell of ``c``
floats covers an ``f × f`` tile, so ``patch_size = f`` and ``latent_floats_per_patch = c``; f8c16 is 12:1
for RGB, f8c4 48:1. ``encode`` returns the ``(B, c, H/f, W/f)`` tensor; its image posterior is a point
mass.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from pentachora.autoencoders.base import AutoencoderOutput, PatchAutoencoder
from pentachora.autoencoders.kl_baseline import DiffusersLatentConfig, DiffusersLatentModel, diffusers_class
from pentachora.modeling import Presets, register_model

__all__ = ["TINY_PRESETS", "AutoencoderTinyAdapter", "AutoencoderTinyAdapterConfig"]

#: Small from-scratch configurations (f8: four levels).
TINY_PRESETS: dict[str, dict[str, Any]] = {
    "tiny-f8c4": dict(block_out_channels=(64, 64, 64, 64), latent_channels=4),
    "tiny-f8c16": dict(block_out_channels=(64, 64, 64, 64), latent_channels=16),
}


@dataclasses.dataclass
class AutoencoderTinyAdapterConfig(DiffusersLatentConfig, Presets):
    """Configuration of :class:`AutoencoderTinyAdapter` (a diffusers ``AutoencoderTiny`` from scratch).

    Presets (:data:`TINY_PRESETS`, 3 channels): ``tiny-f8c4`` (48:1) and ``tiny-f8c16`` (12:1), one
    block per level and 64 channels (TAESD: 64 channels, 1/3/3/3 blocks).

    Attributes:
        channels: image channels C (in and out).
        block_out_channels: channels per level, encoder and decoder alike; ``len − 1`` downsamplings.
        blocks_per_level: ``AutoencoderTinyBlock`` residual blocks per level.
        latent_channels: latent channels c.
        recon_weight: weight of the model-space MSE (the only loss).
    """

    presets = TINY_PRESETS
    preset_family = "AutoencoderTiny"

    channels: int = 3
    block_out_channels: tuple[int, ...] = (32, 32, 32, 32)
    blocks_per_level: int = 1
    latent_channels: int = 16
    recon_weight: float = 1.0

    def __post_init__(self) -> None:
        self._check_blocks()
        if self.latent_channels < 1 or self.channels < 1 or self.blocks_per_level < 1:
            raise ValueError("latent_channels, channels and blocks_per_level must be ≥ 1")


@register_model
class AutoencoderTinyAdapter(DiffusersLatentModel, PatchAutoencoder):
    """diffusers ``AutoencoderTiny`` behind the pentachora autoencoder API (see the module docstring).

    Images are in model space [−1, 1] (diffusers' convention; the encoder maps them to TAESD's [0, 1]).

    Raises:
        ImportError: diffusers is not installed (``pip install pentachora[diffusion]``).
    """

    model_type: ClassVar[str] = "autoencoder_tiny"
    config_class: ClassVar[type] = AutoencoderTinyAdapterConfig
    config: AutoencoderTinyAdapterConfig
    loss_weight_names: ClassVar[tuple[str, ...]] = ("recon_weight",)

    def __init__(self, config: AutoencoderTinyAdapterConfig) -> None:
        super().__init__(config)
        AutoencoderTiny = diffusers_class("AutoencoderTiny", type(self).__name__)
        c = config
        n = len(c.block_out_channels)
        self.vae = AutoencoderTiny(
            in_channels=c.channels,
            out_channels=c.channels,
            encoder_block_out_channels=c.block_out_channels,
            decoder_block_out_channels=tuple(reversed(c.block_out_channels)),
            latent_channels=c.latent_channels,
            num_encoder_blocks=(c.blocks_per_level,) * n,
            num_decoder_blocks=(c.blocks_per_level,) * n,
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` in [−1, 1] → ``(B, c, H/f, W/f)`` latent."""
        self.check_input(x)
        return self.vae.encode(x).latents

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """``(B, c, h, w)`` → ``(B, C, f·h, f·w)`` in [−1, 1]."""
        return self.vae.decode(latent).sample

    def forward(self, x: torch.Tensor) -> AutoencoderOutput:
        """Reconstruct ``x`` with MSE (the model is deterministic: no KL)."""
        z = self.encode(x)
        recon = self.decode(z)
        recon_loss = F.mse_loss(recon.float(), x.float())
        w = self.loss_weights["recon_weight"]
        return AutoencoderOutput(
            loss=w * recon_loss, recon=recon, recon_loss=recon_loss, recon_weight=w, latent=z,
            latent_rms=z.detach().float().square().mean().sqrt(),
        )  # fmt: skip
