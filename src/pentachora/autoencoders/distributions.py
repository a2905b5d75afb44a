"""Posteriors of the variational autoencoders.

:class:`DiagonalGaussian` follows the conventions of diffusers' ``DiagonalGaussianDistribution``
(``sample(generator)``, ``mode()``, ``kl(other=None)``, ``nll(sample)``, log-variance clamped to
[−30, 20], KL summed over every non-batch axis) with two additions used by GeoVAE:

* ``fixed``: deterministic channels appended after the stochastic ones along ``channel_dim``
  (GeoVAE's per-patch log-magnitude). They are exact statistics of the input, not inferred, so they
  are a point mass: ``sample()`` and ``mode()`` return them unchanged and they carry no KL. The
  latent the decoder consumes is ``cat([stochastic, fixed])``.
* ``kl_per_channel()``: the KL averaged over batch and positions, per stochastic channel — what a
  free-bits floor acts on.
"""

from __future__ import annotations

import torch

__all__ = ["LOGVAR_CLAMP", "DiagonalGaussian"]

#: Clamp of the log-variance, as in diffusers (``σ`` between ``e^-15`` and ``e^10``).
LOGVAR_CLAMP: tuple[float, float] = (-30.0, 20.0)


class DiagonalGaussian:
    """A factorised Gaussian posterior ``q(z|x) = N(mean, diag(exp(logvar)))`` (+ fixed channels).

    Args:
        mean: ``(B, d, ...)`` means (any trailing spatial axes, e.g. ``(B, d, gh, gw)``).
        logvar: same shape as ``mean``; clamped to :data:`LOGVAR_CLAMP`.
        fixed: optional ``(B, k, ...)`` deterministic channels appended after the stochastic ones.
        channel_dim: the channel axis (1 for image-like latents).

    Attributes:
        mean, logvar, std, var: ``(B, d, ...)`` tensors.
        fixed: ``(B, k, ...)`` or ``None``.

    Example:
        >>> q = DiagonalGaussian(torch.zeros(2, 4, 3, 3), torch.zeros(2, 4, 3, 3))
        >>> q.kl()  # q equals the prior N(0, I)
        tensor([0., 0.])
    """

    def __init__(
        self,
        mean: torch.Tensor,
        logvar: torch.Tensor,
        fixed: torch.Tensor | None = None,
        channel_dim: int = 1,
    ) -> None:
        if mean.shape != logvar.shape:
            raise ValueError(f"mean {tuple(mean.shape)} and logvar {tuple(logvar.shape)} differ in shape")
        if mean.dim() < 2:
            raise ValueError(f"expected (B, d, ...) tensors, got shape {tuple(mean.shape)}")
        if fixed is not None:
            expect = list(mean.shape)
            expect[channel_dim] = fixed.shape[channel_dim]
            if list(fixed.shape) != expect:
                raise ValueError(
                    f"fixed channels {tuple(fixed.shape)} do not match mean {tuple(mean.shape)} "
                    f"outside the channel axis {channel_dim}"
                )
        self.mean = mean
        self.logvar = logvar.clamp(*LOGVAR_CLAMP)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)
        self.fixed = fixed
        self.channel_dim = channel_dim

    @classmethod
    def point_mass(cls, latent: torch.Tensor, channel_dim: int = 1) -> DiagonalGaussian:
        """A deterministic latent as a posterior: no stochastic channel, every channel ``fixed``.

        ``sample()`` and ``mode()`` return ``latent``; the KL is 0 (nothing is inferred). This is how
        a deterministic encoder (NoSVD, AutoencoderTiny) offers diffusers' ``latent_dist`` surface.
        """
        shape = list(latent.shape)
        shape[channel_dim] = 0
        empty = latent.new_zeros(shape)
        return cls(empty, empty.clone(), fixed=latent, channel_dim=channel_dim)

    @classmethod
    def from_parameters(cls, parameters: torch.Tensor, channel_dim: int = 1) -> DiagonalGaussian:
        """Build from ``(B, 2d, ...)`` = ``cat([mean, logvar])`` (the diffusers layout)."""
        mean, logvar = torch.chunk(parameters, 2, dim=channel_dim)
        return cls(mean, logvar, channel_dim=channel_dim)

    # ------------------------------------------------------------------ shapes
    @property
    def latent_channels(self) -> int:
        """Channels of a sample: stochastic ``d`` plus fixed ``k``."""
        k = 0 if self.fixed is None else self.fixed.shape[self.channel_dim]
        return self.mean.shape[self.channel_dim] + k

    def _with_fixed(self, z: torch.Tensor) -> torch.Tensor:
        if self.fixed is None:
            return z
        return torch.cat([z, self.fixed.to(z.dtype)], dim=self.channel_dim)

    # ------------------------------------------------------------------ draws
    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterised draw ``mean + std · ε`` (differentiable in mean and logvar).

        Args:
            generator: optional ``torch.Generator`` (on the tensors' device) for ε; ``None`` uses
                the global RNG.

        Returns:
            ``(B, d + k, ...)`` latent (fixed channels appended unchanged).
        """
        eps = torch.randn(
            self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype
        )
        return self._with_fixed(self.mean + self.std * eps)

    def mode(self) -> torch.Tensor:
        """The most likely latent, ``cat([mean, fixed])`` — ``(B, d + k, ...)``."""
        return self._with_fixed(self.mean)

    # ------------------------------------------------------------------ divergences
    def _kl_elements(self, other: DiagonalGaussian | None = None) -> torch.Tensor:
        if other is None:
            return 0.5 * (self.mean.pow(2) + self.var - 1.0 - self.logvar)
        return 0.5 * (
            (self.mean - other.mean).pow(2) / other.var
            + self.var / other.var
            - 1.0
            - self.logvar
            + other.logvar
        )

    def kl(self, other: DiagonalGaussian | None = None) -> torch.Tensor:
        """``KL(q ‖ other)`` in nats per sample, summed over every non-batch axis (fixed channels excluded).

        Args:
            other: another :class:`DiagonalGaussian` of the same shape; ``None`` is the prior N(0, I).

        Returns:
            ``(B,)`` non-negative KL (exactly 0 where ``q`` equals ``other``).
        """
        return self._kl_elements(other).flatten(1).sum(dim=1)

    def kl_per_channel(self, other: DiagonalGaussian | None = None) -> torch.Tensor:
        """KL per stochastic channel, averaged over the batch and every position — ``(d,)`` nats.

        Summing this over channels gives the mean KL per latent position (per patch for GeoVAE);
        a free-bits floor clamps each entry from below.
        """
        kl = self._kl_elements(other).movedim(self.channel_dim, -1)
        if kl.shape[-1] == 0:  # a point mass: nothing inferred
            return kl.new_zeros(0)
        return kl.reshape(-1, kl.shape[-1]).mean(dim=0)

    def nll(self, sample: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood of ``sample`` (stochastic channels only) — ``(B,)`` nats."""
        d = self.mean.shape[self.channel_dim]
        z = sample.narrow(self.channel_dim, 0, d)
        log2pi = torch.log(torch.tensor(2.0 * torch.pi, dtype=z.dtype, device=z.device))
        return 0.5 * (log2pi + self.logvar + (z - self.mean).pow(2) / self.var).flatten(1).sum(dim=1)

    def __repr__(self) -> str:
        k = 0 if self.fixed is None else self.fixed.shape[self.channel_dim]
        return f"DiagonalGaussian(shape={tuple(self.mean.shape)}, fixed_channels={k})"
