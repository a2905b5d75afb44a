"""The 16 noise types of the SVAE work, generated in seeded, vectorised batches.

Every generator returns a float32 tensor of shape ``(n, C, H, W)`` (square images, ``H = W = size``)
with values roughly zero-centred and of unit scale, drawn entirely from the ``torch.Generator`` passed
in (no global RNG state). Per-image random parameters (Poisson rate, block size, ramp angle, ...) are
drawn as ``(n,)`` tensors, so no generator loops over the samples of a batch.

The semantics follow the reference trainer's ``_generate_noise`` (geolip-svae ``dataset_presets.py``)
with these documented deviations:

* ``pink`` / ``brown``: the reference divides the spectrum by ``max(|f|, 1e-8)`` *including* the DC
  bin, which multiplies each channel's mean by 1e8 and turns the image into three near-constant
  planes after normalisation. Here the DC bin is set to zero, so the image is zero-mean 1/f (1/f²)
  structure, normalised to unit std per image.
* ``block``: exact ``b × b`` pixel blocks (``b`` ∈ [2, 15] per image) instead of nearest-neighbour
  upsampling of a ``(s//b + 1)``-sized grid.
* ``checkerboard``: the reference's fixed-phase board gets a random sign per image, so the type is
  sign-symmetric.
* ``cauchy``: see *Heavy tails* below.

Heavy tails (``heavy_tails``):

* ``"clamp"`` (the reference): Cauchy is ``tan(π(u − ½))`` clamped to ±3 inside its generator, and
  every type's output is clamped to ±4, exactly as the reference datasets did.
* ``"raw"``: no clamp anywhere. Cauchy is ``tan(π(u − ½))`` with ``u`` drawn uniformly from
  ``[CAUCHY_U_MARGIN, 1 − CAUCHY_U_MARGIN] = [0.005, 0.995]`` — a unit-scale Cauchy truncated at
  ``|x| ≤ tan(0.495π) ≈ 63.66`` (the ≈63 the seed quotes; the seed's formula ``tan(π·0.49)`` is
  ≈31.82, and its ≈63 is reached with ``u`` ∈ [0.005, 0.995] at unit scale). Exponential is
  ``−log(u) − 1`` with ``u`` ∈ (0, 1] from float32 ``torch.rand``, so the largest possible value is
  ``−log(2⁻²⁴) − 1 ≈ 15.6`` (a batch of ~10⁶ values reaches ≈13). Laplace, Poisson (small rates),
  sparse spikes and even Gaussian also exceed ±4 in raw mode.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch

from pentachora.data.seeding import step_generator

logger = logging.getLogger(__name__)

HeavyTails = Literal["clamp", "raw"]

NOISE_TYPES: tuple[str, ...] = (
    "gaussian",
    "uniform",
    "uniform_scaled",
    "poisson",
    "pink",
    "brown",
    "salt_pepper",
    "sparse",
    "block",
    "gradient",
    "checkerboard",
    "mixed",
    "structural",
    "cauchy",
    "exponential",
    "laplace",
)
"""The 16 noise types, in the reference's index order (``NOISE_TYPES[i]`` is reference type ``i``)."""

CURRICULUM_TIERS: dict[int, tuple[str, ...]] = {
    0: ("gaussian",),
    1: ("pink", "brown", "block", "gradient"),
    2: ("uniform", "uniform_scaled", "checkerboard", "mixed"),
    3: ("poisson", "exponential", "laplace", "sparse"),
    4: ("cauchy", "salt_pepper", "structural"),
}
"""The 5-tier curriculum: tier ``k`` unlocks these types on top of tiers ``0 .. k − 1``."""

CLAMP_BOUND: float = 4.0
"""``heavy_tails="clamp"`` clamps every type to ``[-CLAMP_BOUND, CLAMP_BOUND]`` (the reference's ±4)."""

CAUCHY_CLAMP: float = 3.0
"""In clamp mode the reference clamps Cauchy to ±3 inside its generator (before the ±4 clamp)."""

CAUCHY_U_MARGIN: float = 0.005
"""Raw Cauchy draws ``u`` ∈ ``[m, 1 − m]``: ``|tan(π(u − ½))| ≤ tan(π(½ − m)) ≈ 63.66`` for m = 0.005."""

RAW_CAUCHY_MAX: float = math.tan(math.pi * (0.5 - CAUCHY_U_MARGIN))
"""The largest magnitude raw Cauchy can produce (≈ 63.66)."""


def tier_types(tier: int) -> tuple[str, ...]:
    """Types active once the curriculum has unlocked ``tier`` (tiers ``0 .. tier``, cumulative).

    Args:
        tier: Curriculum tier in ``0 .. 4``.

    Returns:
        The active types, in ``NOISE_TYPES`` order.

    Raises:
        ValueError: If ``tier`` is not a valid tier.
    """
    if tier not in CURRICULUM_TIERS:
        raise ValueError(f"tier must be one of {sorted(CURRICULUM_TIERS)}, got {tier}")
    active = {t for k in range(tier + 1) for t in CURRICULUM_TIERS[k]}
    return tuple(t for t in NOISE_TYPES if t in active)


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def _rand(shape: Sequence[int], g: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(tuple(shape), generator=g, device=device, dtype=torch.float32)


def _randn(shape: Sequence[int], g: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=g, device=device, dtype=torch.float32)


def _randint(low: int, high: int, n: int, g: torch.Generator, device: torch.device) -> torch.Tensor:
    """(n,) int64 uniform on ``[low, high)``."""
    return torch.randint(low, high, (n,), generator=g, device=device)


def _uniform(low: float, high: float, n: int, g: torch.Generator, device: torch.device) -> torch.Tensor:
    """(n,) float32 uniform on ``[low, high)``."""
    return low + (high - low) * _rand((n,), g, device)


def _spectral_noise(
    n: int, c: int, s: int, power: float, g: torch.Generator, device: torch.device
) -> torch.Tensor:
    """White noise shaped to amplitude ``1/|f|^power`` (DC removed), unit std per image.

    Returns:
        (n, c, s, s) float32.
    """
    white = _randn((n, c, s, s), g, device)
    spec = torch.fft.rfft2(white)
    fy = torch.fft.fftfreq(s, device=device).view(s, 1)
    fx = torch.fft.rfftfreq(s, device=device).view(1, s // 2 + 1)
    f = torch.sqrt(fx**2 + fy**2)
    scale = torch.where(f > 0, f.clamp_min(1e-8).pow(-power), torch.zeros_like(f))
    img = torch.fft.irfft2(spec * scale, s=(s, s))
    std = img.std(dim=(1, 2, 3), keepdim=True)
    return img / (std + 1e-8)


# ----------------------------------------------------------------------------------------------
# The 16 generators. Each: (n, c, s, g, device, raw) -> (n, c, s, s) float32.
# ----------------------------------------------------------------------------------------------

_Gen = Callable[[int, int, int, torch.Generator, torch.device, bool], torch.Tensor]


def _gaussian(n: int, c: int, s: int, g: torch.Generator, dev: torch.device, raw: bool) -> torch.Tensor:
    """Standard normal N(0, 1) per pixel."""
    return _randn((n, c, s, s), g, dev)


def _uniform_t(n: int, c: int, s: int, g: torch.Generator, dev: torch.device, raw: bool) -> torch.Tensor:
    """Uniform on [−1, 1) per pixel."""
    return _rand((n, c, s, s), g, dev) * 2 - 1


def _uniform_scaled(n: int, c: int, s: int, g: torch.Generator, dev: torch.device, raw: bool) -> torch.Tensor:
    """Uniform on [−2, 2) per pixel."""
    return (_rand((n, c, s, s), g, dev) - 0.5) * 4


def _poisson(n: int, c: int, s: int, g: torch.Generator, dev: torch.device, raw: bool) -> torch.Tensor:
    """Poisson counts at a per-image rate λ ~ U(0.5, 20), centred and scaled: ``k/λ − 1`` (mean 0)."""
    lam = _uniform(0.5, 20.0, n, g, dev).view(n, 1, 1, 1)
    counts = torch.poisson(lam.expand(n, c, s, s).contiguous(), generator=g)
    return counts / lam - 1.0


def _pink(n: int, c: int, s: int, g: torch.Generator, dev: torch.device, raw: bool) -> torch.Tensor:
    """1/f (pink) noise: white noise FFT-shaped by 1/|f|, DC removed, unit std per image."""
    return _spectral_noise(n, c, s, 1.0, g, dev)


def _brown(n: int, c: int, s: int, g: torch.Generator, dev: torch.device, raw: bool) -> torch.Tensor:
    """1/f² (brown) noise: white noise FFT-shaped by 1/|f|², DC removed, unit std per image."""
    return _spectral_noise(n, c, s, 2.0, g, dev)


def _salt_pepper(n: int, c: int, s: int, g: torch.Generator, dev: torch.device, raw: bool) -> torch.Tensor:
    """±2 with equal probability per pixel, plus N(0, 0.1²) jitter."""
    sign = torch.where(_rand((n, c, s, s), g, dev) > 0.5, 2.0, -2.0)
    return sign + _randn((n, c, s, s), g, dev) * 0.1


def _sparse(n: int, c: int, s: int, g: torch.Generator, dev: torch.device, raw: bool) -> torch.Tensor:
    """Mostly zeros; ~10% of pixels are N(0, 3²) spikes."""
    values = _randn((n, c, s, s), g, dev)
    mask = (_rand((n, c, s, s), g, dev) > 0.9).float()
    return values * mask * 3


def _block(n: int, c: int, s: int, g: torch.Generator, dev: torch.device, raw: bool) -> torch.Tensor:
    """Piecewise-constant N(0, 1) blocks of b × b pixels, b ~ U{2..15} per image."""
    b = _randint(2, 16, n, g, dev)  # (n,)
    grid = _randn((n, c, s, s), g, dev)  # only the top-left (ceil(s/b))² cells are read
    idx = torch.arange(s, device=dev).view(1, s) // b.view(n, 1)  # (n, s) block index per row/col
    n_idx = torch.arange(n, device=dev).view(n, 1, 1, 1)
    c_idx = torch.arange(c, device=dev).view(1, c, 1, 1)
    return grid[n_idx, c_idx, idx.view(n, 1, s, 1), idx.view(n, 1, 1, s)]


def _gradient(n: int, c: int, s: int, g: torch.Generator, dev: torch.device, raw: bool) -> torch.Tensor:
    """Linear ramp over [−2, 2] at a random angle per image (same on all channels) + N(0, 0.5²)."""
    angle = _uniform(0.0, 2 * math.pi, n, g, dev).view(n, 1, 1, 1)
    lin = torch.linspace(-2, 2, s, device=dev)
    gy, gx = lin.view(1, 1, s, 1), lin.view(1, 1, 1, s)
    ramp = torch.cos(angle) * gx + torch.sin(angle) * gy  # (n, 1, s, s)
    return ramp.expand(n, c, s, s) + _randn((n, c, s, s), g, dev) * 0.5


def _checkerboard(n: int, c: int, s: int, g: torch.Generator, dev: torch.device, raw: bool) -> torch.Tensor:
    """±1 checkerboard with cell size ~ U{2..15} and random sign per image, + N(0, 0.3²)."""
    cell = _randint(2, 16, n, g, dev).view(n, 1, 1)
    sign = torch.where(_rand((n,), g, dev) > 0.5, 1.0, -1.0).view(n, 1, 1, 1)
    pos = torch.arange(s, device=dev)
    board = ((pos.view(1, s, 1) // cell + pos.view(1, 1, s) // cell) % 2).float() * 2 - 1  # (n, s, s)
    return board.unsqueeze(1).expand(n, c, s, s) * sign + _randn((n, c, s, s), g, dev) * 0.3


def _mixed(n: int, c: int, s: int, g: torch.Generator, dev: torch.device, raw: bool) -> torch.Tensor:
    """Convex mix α·gaussian + (1 − α)·uniform[−1, 1), α ~ U(0.2, 0.8) per image."""
    alpha = _uniform(0.2, 0.8, n, g, dev).view(n, 1, 1, 1)
    return alpha * _randn((n, c, s, s), g, dev) + (1 - alpha) * (_rand((n, c, s, s), g, dev) * 2 - 1)


def _structural(n: int, c: int, s: int, g: torch.Generator, dev: torch.device, raw: bool) -> torch.Tensor:
    """Four quadrants of different texture: gaussian | uniform[−1,1) / pink·½ | ±1 binary."""
    h = s // 2
    h2 = s - h
    top_left = _randn((n, c, h, h), g, dev)
    top_right = _rand((n, c, h, h2), g, dev) * 2 - 1
    bottom_left = _spectral_noise(n, c, h2, 1.0, g, dev)[..., :h] / 2
    bottom_right = torch.where(_rand((n, c, h2, h2), g, dev) > 0.5, 1.0, -1.0)
    top = torch.cat([top_left, top_right], dim=-1)
    bottom = torch.cat([bottom_left, bottom_right], dim=-1)
    return torch.cat([top, bottom], dim=-2)


def _cauchy(n: int, c: int, s: int, g: torch.Generator, dev: torch.device, raw: bool) -> torch.Tensor:
    """Standard Cauchy tan(π(u − ½)); clamp: clamped to ±3; raw: u ∈ [0.005, 0.995] (|x| ≤ 63.66)."""
    u = _rand((n, c, s, s), g, dev)
    if raw:
        u = CAUCHY_U_MARGIN + (1 - 2 * CAUCHY_U_MARGIN) * u
        return torch.tan(math.pi * (u - 0.5))
    return torch.tan(math.pi * (u - 0.5)).clamp(-CAUCHY_CLAMP, CAUCHY_CLAMP)


def _exponential(n: int, c: int, s: int, g: torch.Generator, dev: torch.device, raw: bool) -> torch.Tensor:
    """Centred Exp(1): −log(u) − 1 with u ∈ (0, 1] (max ≈ 15.6 in float32)."""
    u = 1.0 - _rand((n, c, s, s), g, dev)  # (0, 1]
    return -torch.log(u) - 1.0


def _laplace(n: int, c: int, s: int, g: torch.Generator, dev: torch.device, raw: bool) -> torch.Tensor:
    """Laplace(0, 1) by inverse CDF: −sign(v)·log(1 − 2|v|), v ∈ [−½, ½)."""
    v = _rand((n, c, s, s), g, dev) - 0.5
    return -torch.sign(v) * torch.log1p(-2 * v.abs())


_GENERATORS: dict[str, _Gen] = {
    "gaussian": _gaussian,
    "uniform": _uniform_t,
    "uniform_scaled": _uniform_scaled,
    "poisson": _poisson,
    "pink": _pink,
    "brown": _brown,
    "salt_pepper": _salt_pepper,
    "sparse": _sparse,
    "block": _block,
    "gradient": _gradient,
    "checkerboard": _checkerboard,
    "mixed": _mixed,
    "structural": _structural,
    "cauchy": _cauchy,
    "exponential": _exponential,
    "laplace": _laplace,
}
assert tuple(_GENERATORS) == NOISE_TYPES


def _check_heavy_tails(heavy_tails: str) -> bool:
    if heavy_tails not in ("clamp", "raw"):
        raise ValueError(f"heavy_tails must be 'clamp' or 'raw', got {heavy_tails!r}")
    return heavy_tails == "raw"


def validate_types(types: Sequence[str]) -> tuple[str, ...]:
    """Check a list of noise-type names.

    Args:
        types: Names from ``NOISE_TYPES`` (non-empty, no repeats).

    Returns:
        The names as a tuple.

    Raises:
        ValueError: On an empty list, an unknown name or a repeated name.
    """
    types = tuple(types)
    if not types:
        raise ValueError("need at least one noise type")
    unknown = [t for t in types if t not in _GENERATORS]
    if unknown:
        raise ValueError(f"unknown noise type(s) {unknown}; valid types: {', '.join(NOISE_TYPES)}")
    if len(set(types)) != len(types):
        raise ValueError(f"repeated noise type in {list(types)}")
    return types


def generate_noise(
    kind: str,
    n: int,
    size: int = 64,
    channels: int = 3,
    generator: torch.Generator | None = None,
    heavy_tails: HeavyTails = "clamp",
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Generate a batch of one noise type, vectorised over the batch.

    Args:
        kind: One of ``NOISE_TYPES``.
        n: Number of images.
        size: Image height and width in pixels (≥ 2).
        channels: Channels per image.
        generator: Source of all randomness. It must live on ``device``. ``None`` uses a fresh
            generator seeded with 0 (deterministic; never the global RNG).
        heavy_tails: ``"clamp"`` clamps to ±4 (Cauchy to ±3) like the reference; ``"raw"`` does not
            clamp (see the module docstring for the raw bounds).
        device: Where to generate. Defaults to the generator's device (CPU if no generator).

    Returns:
        (n, channels, size, size) float32.

    Raises:
        ValueError: On an unknown ``kind`` or ``heavy_tails``, or a bad size.
    """
    if kind not in _GENERATORS:
        raise ValueError(f"unknown noise type {kind!r}; valid types: {', '.join(NOISE_TYPES)}")
    raw = _check_heavy_tails(heavy_tails)
    if n < 0 or channels < 1 or size < 2:
        raise ValueError(
            f"need n >= 0, channels >= 1, size >= 2; got n={n}, channels={channels}, size={size}"
        )
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    device = torch.device(device)
    if generator is None:
        generator = torch.Generator(device=device).manual_seed(0)
    out = _GENERATORS[kind](n, channels, size, generator, device, raw)
    if not raw:
        out = out.clamp(-CLAMP_BOUND, CLAMP_BOUND)
    return out.to(torch.float32).contiguous()


class NoiseSource:
    """Training batches of mixed noise types, a pure function of ``(seed, step)``.

    Each sample's type is drawn uniformly from ``types``; then every type present is generated in one
    vectorised call for the indices that drew it. All randomness comes from
    ``step_generator(seed, step)``, so ``batch(k)`` is identical whether or not steps ``0..k-1`` ran.

    Args:
        types: Noise types to mix (default: all 16).
        batch_size: Images per batch.
        image_size: Height and width in pixels.
        channels: Channels per image.
        seed: Base seed.
        heavy_tails: ``"clamp"`` (reference) or ``"raw"``.
        device: Where batches are generated (default CPU).
    """

    def __init__(
        self,
        types: Sequence[str] = NOISE_TYPES,
        batch_size: int = 64,
        image_size: int = 64,
        channels: int = 3,
        seed: int = 0,
        heavy_tails: HeavyTails = "clamp",
        device: torch.device | str | None = None,
    ) -> None:
        self.types = validate_types(types)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        _check_heavy_tails(heavy_tails)
        self.batch_size = batch_size
        self.image_size = image_size
        self.channels = channels
        self.seed = seed
        self.heavy_tails: HeavyTails = heavy_tails
        self.device = torch.device(device) if device is not None else torch.device("cpu")

    def batch_with_types(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch for ``step`` and each sample's type.

        Args:
            step: Training step (≥ 0).

        Returns:
            ``(x, type_idx)``: x (B, C, S, S) float32; type_idx (B,) int64 indices into ``NOISE_TYPES``.
        """
        g = step_generator(self.seed, step, device=self.device)
        b, c, s = self.batch_size, self.channels, self.image_size
        choice = torch.randint(0, len(self.types), (b,), generator=g, device=self.device)
        out = torch.empty((b, c, s, s), dtype=torch.float32, device=self.device)
        type_idx = torch.empty(b, dtype=torch.int64, device=self.device)
        for j, kind in enumerate(self.types):
            idx = (choice == j).nonzero(as_tuple=True)[0]
            if idx.numel() == 0:
                continue
            out[idx] = generate_noise(
                kind, idx.numel(), s, c, generator=g, heavy_tails=self.heavy_tails, device=self.device
            )
            type_idx[idx] = NOISE_TYPES.index(kind)
        return out, type_idx

    def batch(self, step: int) -> torch.Tensor:
        """The batch for ``step``: (B, C, S, S) float32, a pure function of ``(seed, step)``."""
        return self.batch_with_types(step)[0]

    def __repr__(self) -> str:
        return (
            f"NoiseSource(types={list(self.types)}, batch_size={self.batch_size}, "
            f"image_size={self.image_size}, channels={self.channels}, seed={self.seed}, "
            f"heavy_tails={self.heavy_tails!r})"
        )


def noise_eval_sets(
    types: Sequence[str] = NOISE_TYPES,
    n_per_type: int = 64,
    image_size: int = 64,
    seed: int = 0,
    heavy_tails: HeavyTails = "clamp",
    channels: int = 3,
) -> dict[str, torch.Tensor]:
    """Fixed evaluation batches, one per noise type.

    Type ``t`` is generated from ``step_generator(seed, -1 - NOISE_TYPES.index(t))``: negative steps
    never collide with training steps, and each type's batch does not depend on which other types
    were asked for.

    Args:
        types: Noise types to include.
        n_per_type: Images per type.
        image_size: Height and width in pixels.
        seed: Base seed.
        heavy_tails: ``"clamp"`` or ``"raw"``.
        channels: Channels per image.

    Returns:
        ``{type: (n_per_type, C, S, S) float32}`` in the order of ``types``.
    """
    out: dict[str, torch.Tensor] = {}
    for kind in validate_types(types):
        g = step_generator(seed, -1 - NOISE_TYPES.index(kind))
        out[kind] = generate_noise(
            kind, n_per_type, image_size, channels, generator=g, heavy_tails=heavy_tails
        )
    return out
