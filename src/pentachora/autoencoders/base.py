"""Shared API of the patch autoencoders: output dataclass and a small base class.

Every patch autoencoder in :mod:`pentachora.autoencoders`

* cuts ``(B, C, H, W)`` images into ``patch×patch`` tiles (see :mod:`pentachora.nn.patch`),
* exposes ``encode(x)`` / ``decode(latent)`` / ``forward(x) → AutoencoderOutput`` /
  ``reconstruct(x)``,
* reports the floats its decoder really consumes per patch (:attr:`latent_floats_per_patch`) and
  the resulting :attr:`compression_ratio` (< 1 means the "latent" is bigger than the pixels),
* takes loss weights that a training callback may change between steps
  (:meth:`set_loss_weights`, e.g. the seeds' soft-hand CV schedule).

Variational ones (:class:`VariationalPatchAutoencoder`: GeoVAE, the battery container, the
AutoencoderKL baseline) also decode draws from their prior N(0, I) (:meth:`~VariationalPatchAutoencoder.sample_prior`,
defined once here).
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Any, ClassVar

import torch

from pentachora.autoencoders.distributions import DiagonalGaussian
from pentachora.modeling import ModelOutput, PentachoraModel
from pentachora.nn.patch import check_image_batch

__all__ = ["AutoencoderOutput", "PatchAutoencoder", "VariationalPatchAutoencoder"]


@dataclasses.dataclass
class AutoencoderOutput(ModelOutput):
    """What an autoencoder's ``forward`` returns.

    Every 0-d tensor or float field is logged by the trainer through :meth:`ModelOutput.scalars`;
    ``None`` fields (parts a model does not have) are skipped.

    Attributes:
        loss: 0-d total training loss (the weighted sum of the parts below).
        recon: ``(B, C, H, W)`` reconstruction, in the same (model) space as the input.
        recon_loss: 0-d MSE between ``recon`` and the input, in model space.
        kl: 0-d KL divergence (variational models only).
        cv_loss: 0-d CV term ``(cv − target)²`` (with or without gradient, see the model).
        cv: 0-d pentachoron CV readout (no gradient).
        erank: 0-d mean effective rank of the latent spectrum (no gradient).
        s_delta: 0-d mean ``|S′ − S|`` — how much cross-attention changed the spectrum.
        alpha_mean: 0-d mean cross-attention gate α.
        latent_rms: 0-d RMS of the matrix the decoder consumes (a magnitude probe).
        recon_weight: the reconstruction weight used for this loss.
        cv_weight: the CV weight used for this loss.
        latent: the model's latent (its ``encode`` result); not logged.
    """

    recon: torch.Tensor | None = None
    recon_loss: torch.Tensor | None = None
    kl: torch.Tensor | None = None
    cv_loss: torch.Tensor | None = None
    cv: torch.Tensor | None = None
    erank: torch.Tensor | None = None
    s_delta: torch.Tensor | None = None
    alpha_mean: torch.Tensor | None = None
    latent_rms: torch.Tensor | None = None
    recon_weight: float | None = None
    cv_weight: float | None = None
    latent: Any = None


class PatchAutoencoder(PentachoraModel, abc.ABC):
    """Base class of the patch autoencoders (shared API, no layers of its own).

    Subclasses must

    * use a config dataclass with ``patch_size`` and ``channels`` fields and one float field per
      name in :attr:`loss_weight_names` (its default weight);
    * implement :meth:`encode`, :meth:`decode`, :meth:`forward` and :attr:`latent_floats_per_patch`;
    * override :meth:`latent_for_decoding` when ``encode`` returns a posterior rather than the
      decoder's input (e.g. return ``posterior.mode()``).
    """

    #: Loss weights a callback may set through :meth:`set_loss_weights`; each is a config field.
    loss_weight_names: ClassVar[tuple[str, ...]] = ("recon_weight", "cv_weight")

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        for name in ("patch_size", "channels", *self.loss_weight_names):
            if not hasattr(config, name):
                raise TypeError(f"{type(config).__name__} lacks the field {name!r} a PatchAutoencoder needs")
        self._loss_weights: dict[str, float] = {}
        self.set_loss_weights(**{name: getattr(config, name) for name in self.loss_weight_names})

    # ------------------------------------------------------------------ geometry of the patches
    @property
    def patch_size(self) -> int:
        """Square patch side in pixels."""
        return int(self.config.patch_size)

    @property
    def channels(self) -> int:
        """Image channels C."""
        return int(self.config.channels)

    @property
    def pixel_floats_per_patch(self) -> int:
        """``C·p·p``: the floats of one patch of pixels."""
        return self.channels * self.patch_size**2

    @property
    @abc.abstractmethod
    def latent_floats_per_patch(self) -> int:
        """The floats per patch the decoder really consumes (honest accounting, not a subset)."""

    @property
    def compression_ratio(self) -> float:
        """``pixel_floats_per_patch / latent_floats_per_patch`` (below 1 is an expansion)."""
        return self.pixel_floats_per_patch / self.latent_floats_per_patch

    # ------------------------------------------------------------------ loss weights
    @property
    def loss_weights(self) -> dict[str, float]:
        """A copy of the current loss weights."""
        return dict(self._loss_weights)

    def set_loss_weights(self, **weights: float) -> None:
        """Set loss weights used by the next ``forward`` (e.g. from a soft-hand callback).

        Args:
            **weights: any of :attr:`loss_weight_names`, each a finite float ≥ 0.

        Raises:
            ValueError: an unknown name, or a negative / non-finite weight.
        """
        unknown = sorted(set(weights) - set(self.loss_weight_names))
        if unknown:
            raise ValueError(
                f"{type(self).__name__} has no loss weight(s) {unknown}; known: {list(self.loss_weight_names)}"
            )
        for name, value in weights.items():
            value = float(value)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"loss weight {name} must be a finite number ≥ 0, got {value}")
            self._loss_weights[name] = value

    # ------------------------------------------------------------------ API
    def check_input(self, x: torch.Tensor) -> None:
        """Raise a clear error unless ``x`` is a finite ``(B, channels, H, W)`` batch with patch-divisible sides."""
        check_image_batch(x, self.channels, self.patch_size)

    @abc.abstractmethod
    def encode(self, x: torch.Tensor) -> Any:
        """Encode ``(B, C, H, W)`` images to the model's latent (or posterior)."""

    @abc.abstractmethod
    def decode(self, latent: Any) -> torch.Tensor:
        """Decode a latent back to ``(B, C, H, W)`` images."""

    @abc.abstractmethod
    def forward(self, x: torch.Tensor) -> AutoencoderOutput:
        """Reconstruct ``x`` and compute the training loss and its parts."""

    def latent_for_decoding(self, latent: Any) -> Any:
        """Map the result of :meth:`encode` to what :meth:`decode` takes (identity by default)."""
        return latent

    # ------------------------------------------------------------------ image-like latent
    @property
    def latent_stride(self) -> int:
        """Pixels per latent cell along each side (default: the patch size)."""
        return self.patch_size

    def image_posterior(self, x: torch.Tensor) -> DiagonalGaussian:
        """Images → a posterior over an image-like latent ``(B, c, H/s, W/s)``, ``c`` =
        :attr:`latent_floats_per_patch`, ``s`` = :attr:`latent_stride` — what a latent-diffusion model
        denoises (see :class:`~pentachora.autoencoders.latent.LatentAutoencoder`).

        A model whose ``encode`` returns a :class:`DiagonalGaussian` gives it; one whose ``encode``
        returns a ``(B, c, h, w)`` tensor gives a point mass (every channel ``fixed``: ``sample()`` =
        ``mode()`` = the tensor, KL 0). Models whose latent is not image-like override this or raise.
        """
        latent = self.encode(x)
        if isinstance(latent, DiagonalGaussian):
            return latent
        if isinstance(latent, torch.Tensor) and latent.dim() == 4:
            return DiagonalGaussian.point_mass(latent)
        raise NotImplementedError(f"{type(self).__name__} has no image-like latent")

    def decode_image_latent(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, c, h, w)`` image-like latent (a draw of :meth:`image_posterior`) → ``(B, C, s·h, s·w)``."""
        return self.decode(z)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct images in eval mode without computing a loss.

        Args:
            x: ``(B, C, H, W)`` images.

        Returns:
            ``(B, C, H, W)`` reconstructions. The module's train/eval mode is restored afterwards.
        """
        was_training = self.training
        self.eval()
        try:
            return self.decode(self.latent_for_decoding(self.encode(x)))
        finally:
            self.train(was_training)


class VariationalPatchAutoencoder(PatchAutoencoder):
    """A patch autoencoder with a prior N(0, I) over an image-like latent ``(B, c, H/s, W/s)``.

    Subclasses implement :attr:`latent_channels` (c) and may override :attr:`latent_stride` (s, the
    pixels per latent cell along a side; default ``patch_size``); :meth:`decode` must accept a
    ``(B, c, H/s, W/s)`` latent. :meth:`sample_prior` is then shared.
    """

    @property
    @abc.abstractmethod
    def latent_channels(self) -> int:
        """Channels c of the image-like latent (every one is drawn from the prior)."""

    @torch.no_grad()
    def sample_prior(
        self, n: int, height: int, width: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Decode latents drawn from the prior N(0, I) (every latent channel).

        Args:
            n: number of images.
            height, width: image size in pixels (positive multiples of :attr:`latent_stride`).
            generator: optional generator for reproducible draws (its device is used for the draw).

        Returns:
            ``(n, C, height, width)`` images in model space (eval mode is used and restored).

        Raises:
            ValueError: a size that is not a positive multiple of the stride.
        """
        s = self.latent_stride
        if height % s or width % s or height < s or width < s:
            raise ValueError(f"height {height} and width {width} must be positive multiples of {s}")
        device = next(self.parameters()).device
        z = torch.randn(
            n,
            self.latent_channels,
            height // s,
            width // s,
            generator=generator,
            device=generator.device if generator is not None else device,
        ).to(device)
        was_training = self.training
        self.eval()
        try:
            return self.decode(z)
        finally:
            self.train(was_training)
