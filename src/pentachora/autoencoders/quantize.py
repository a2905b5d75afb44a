"""Rate of a patch autoencoder: quantise the latent the decoder consumes and count its bits.

What crosses an autoencoder's bottleneck is the tensor its decoder reads. To put a model next to a
codec (JPEG, WebP) on a PSNR-vs-bits-per-pixel plot, that tensor has to become bits:

* :func:`quantize` — uniform scalar quantisation per channel with the channel's min / max as the
  range (``bits`` per symbol, 8 by default); the range travels as side information (two fp32
  numbers per channel, counted).
* :class:`QuantizedTensor` — the symbols plus the range; ``dequantize()`` returns the decoder's
  input, ``raw_bits`` = ``numel · bits + side`` and ``coded_bits(coder)`` = the bits after a
  standard lossless coder (``zlib`` level 9 or ``lzma`` preset 9) on the channel-major symbol
  bytes, plus the same side information.
* :func:`latent_roundtrip` — for every autoencoder family here (GeoVAE and the battery container:
  the posterior mode including the magnitude channel; PatchSVAE: U, S and Vᵀ, the floats its
  decoder needs; the NoSVD readout: ω; diffusers' AutoencoderKL adapter: the posterior mode), encode,
  quantise every decoder input, decode, and return the reconstruction and the bit counts.

Bits per pixel are per image pixel (``H · W``, not per channel value), as codecs report them.

Example:
    >>> q = quantize(torch.randn(1, 4, 8, 8), bits=8)
    >>> q.symbols.dtype, q.raw_bits
    (torch.uint8, 2304)
"""

from __future__ import annotations

import dataclasses
import lzma
import zlib
from collections.abc import Callable
from typing import Any

import torch

from pentachora.autoencoders.distributions import DiagonalGaussian

__all__ = ["CODERS", "QuantizedTensor", "RateResult", "dequantize", "latent_roundtrip", "quantize"]

#: Lossless coders applied to the symbol bytes (name → compress function).
CODERS: dict[str, Callable[[bytes], bytes]] = {
    "zlib": lambda b: zlib.compress(b, 9),
    "lzma": lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME),
}

#: Side information per channel: its min and max as fp32.
SIDE_BITS_PER_CHANNEL = 64


@dataclasses.dataclass
class QuantizedTensor:
    """Uniform per-channel quantisation of one tensor.

    Attributes:
        symbols: integer symbols in ``[0, 2^bits − 1]`` (uint8 for ≤ 8 bits, int32 otherwise), the
            input's shape.
        lo, hi: ``(C,)`` float32 per-channel range (min and max of the input channel).
        bits: bits per symbol.
        channel_dim: the channel axis of ``symbols``.
    """

    symbols: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor
    bits: int
    channel_dim: int

    @property
    def levels(self) -> int:
        """``2^bits`` quantisation levels."""
        return 2**self.bits

    @property
    def side_bits(self) -> int:
        """Bits of side information (two fp32 numbers per channel)."""
        return SIDE_BITS_PER_CHANNEL * self.lo.numel()

    @property
    def raw_bits(self) -> int:
        """Bits at a fixed ``bits`` per symbol, plus the side information."""
        return self.symbols.numel() * self.bits + self.side_bits

    def symbol_bytes(self) -> bytes:
        """The symbols, channel-major (all of channel 0, then channel 1, …), as bytes."""
        s = self.symbols.movedim(self.channel_dim, 0).contiguous().cpu()
        if self.bits <= 8:
            return s.to(torch.uint8).numpy().tobytes()
        return s.to(torch.int32).numpy().astype("<u2" if self.bits <= 16 else "<u4").tobytes()

    def coded_bits(self, coder: str = "zlib") -> int:
        """Bits after the lossless ``coder`` (see :data:`CODERS`) on :meth:`symbol_bytes`, plus side bits."""
        if coder not in CODERS:
            raise ValueError(f"unknown coder {coder!r}; choose one of {sorted(CODERS)}")
        return 8 * len(CODERS[coder](self.symbol_bytes())) + self.side_bits

    def dequantize(self) -> torch.Tensor:
        """Back to float32: the centre value of each symbol's bin (exact at the channel min and max)."""
        shape = [1] * self.symbols.dim()
        shape[self.channel_dim] = -1
        lo, hi = self.lo.view(shape), self.hi.view(shape)
        step = (hi - lo) / (self.levels - 1)
        return lo + self.symbols.float() * step


def quantize(x: torch.Tensor, bits: int = 8, channel_dim: int = 1) -> QuantizedTensor:
    """Uniform per-channel quantisation with min / max ranges.

    Args:
        x: any float tensor with a channel axis ``channel_dim`` (finite).
        bits: bits per symbol, 1–16.
        channel_dim: the axis whose entries get their own range.

    Returns:
        :class:`QuantizedTensor`; ``dequantize()`` is within half a step ``(hi − lo) / (2^bits − 1) / 2``
        of ``x`` everywhere.

    Raises:
        ValueError: ``bits`` out of range or a non-finite input.
    """
    if not 1 <= int(bits) <= 16:
        raise ValueError(f"bits must be between 1 and 16, got {bits}")
    x = x.detach().float()
    if not torch.isfinite(x).all():
        raise ValueError("cannot quantise a tensor with NaN or inf entries")
    channel_dim = channel_dim % x.dim()
    flat = x.movedim(channel_dim, 0).reshape(x.shape[channel_dim], -1)
    lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
    shape = [1] * x.dim()
    shape[channel_dim] = -1
    levels = 2 ** int(bits)
    step = ((hi - lo) / (levels - 1)).clamp_min(torch.finfo(torch.float32).tiny)
    sym = ((x - lo.view(shape)) / step.view(shape)).round().clamp(0, levels - 1)
    sym = sym.to(torch.uint8 if bits <= 8 else torch.int32)
    return QuantizedTensor(symbols=sym, lo=lo, hi=hi, bits=int(bits), channel_dim=channel_dim)


def dequantize(q: QuantizedTensor) -> torch.Tensor:
    """Same as ``q.dequantize()``."""
    return q.dequantize()


@dataclasses.dataclass
class RateResult:
    """Outcome of :func:`latent_roundtrip` for one batch of images.

    Attributes:
        recon: ``(B, C, H, W)`` reconstruction decoded from the quantised latent (model space).
        floats: latent floats that crossed the bottleneck (all tensors the decoder read).
        raw_bits: bits at ``bits`` per float plus side information.
        coded_bits: ``{coder: bits}`` after each lossless coder.
        pixels: ``B · H · W`` image pixels the bits describe.
    """

    recon: torch.Tensor
    floats: int
    raw_bits: int
    coded_bits: dict[str, int]
    pixels: int

    def bpp(self, coder: str | None = None) -> float:
        """Bits per pixel: raw (``coder=None``) or after ``coder``."""
        bits = self.raw_bits if coder is None else self.coded_bits[coder]
        return bits / self.pixels


def _quantize_fields(tensors: dict[str, tuple[torch.Tensor, int]], bits: int) -> dict[str, QuantizedTensor]:
    return {k: quantize(t, bits, dim) for k, (t, dim) in tensors.items()}


@torch.no_grad()
def latent_roundtrip(
    model: Any, x: torch.Tensor, bits: int = 8, coders: tuple[str, ...] = ("zlib", "lzma")
) -> RateResult:
    """Encode ``x``, quantise every tensor the decoder consumes, decode, and count the bits.

    Args:
        model: a pentachora patch autoencoder (GeoVAE-shaped, PatchSVAE of either readout, the
            AutoencoderKL adapter), or any module with ``encode_latent(x) → (B, c, h, w)`` and
            ``decode_latent(z) → images`` (e.g. a benchmark's wrapper of another library's model).
        x: ``(B, C, H, W)`` images in model space.
        bits: bits per latent float.
        coders: lossless coders to report (names in :data:`CODERS`).

    Returns:
        :class:`RateResult`.

    Raises:
        TypeError: a model whose latent kind this function does not know.
    """
    from pentachora.autoencoders.svae import SpectralLatent

    was_training = model.training
    model.eval()
    try:
        if hasattr(model, "encode_latent"):
            q = _quantize_fields({"z": (model.encode_latent(x), 1)}, bits)
            recon = model.decode_latent(q["z"].dequantize())
        else:
            latent = model.encode(x)
            if isinstance(latent, DiagonalGaussian):
                q = _quantize_fields({"z": (latent.mode(), 1)}, bits)
                recon = model.decode(q["z"].dequantize())
            elif isinstance(latent, SpectralLatent):
                if latent.omega is not None:  # NoSVD: ω (B, N, D), channels last
                    q = _quantize_fields({"omega": (latent.omega, -1)}, bits)
                    new = SpectralLatent(grid=latent.grid, omega=q["omega"].dequantize())
                else:  # canonical: U (B,N,V,D), S (B,N,D), Vh (B,N,D,D) — channel = singular index
                    q = _quantize_fields(
                        {"U": (latent.U, -1), "S": (latent.S, -1), "Vh": (latent.Vh, -2)}, bits
                    )
                    new = SpectralLatent(
                        grid=latent.grid,
                        U=q["U"].dequantize(),
                        S=q["S"].dequantize(),
                        Vh=q["Vh"].dequantize(),
                    )
                recon = model.decode(new)
            else:
                raise TypeError(f"latent_roundtrip does not know the latent {type(latent).__name__}")
    finally:
        model.train(was_training)
    return RateResult(
        recon=recon,
        floats=sum(t.symbols.numel() for t in q.values()),
        raw_bits=sum(t.raw_bits for t in q.values()),
        coded_bits={c: sum(t.coded_bits(c) for t in q.values()) for c in coders},
        pixels=x.shape[0] * x.shape[-2] * x.shape[-1],
    )
