"""Latent text-to-image on the scene world: first stages, their latents, and the miniature UNet in them.

The question (issue "GeoVAE's real job"): which autoencoder makes generation cheapest at equal quality?
A latent-diffusion first stage exists so the denoiser works on a small, smooth grid instead of pixels;
this module trains first stages on the world's training renders, wraps them behind diffusers' VAE
surface (:class:`~pentachora.autoencoders.LatentAutoencoder`), measures what explains a latent's use
(reconstruction, KL per cell, per-channel variance spread, pentachoron CV against ``target_cv``,
interpolation smoothness read by the world's reader) and builds the latent
:class:`~pentachora.t2i.MiniT2I` that :func:`pentachora.recipes.t2i.train_t2i` trains like the pixel one.

* :data:`FIRST_STAGES` — the contenders (factory + peak-lr candidates), all at 8×8 pixels per latent
  cell on the 32-pixel world, so every latent is a 4×4 grid.
* :class:`SceneImageSource` — training renders in [−1, 1], a pure function of ``(seed, step)``.
* :func:`train_first_stages` — equal CPU budgets through :func:`~pentachora.recipes.benchmarking.train_interleaved`.
* :func:`reconstruction_scores`, :func:`reconstruction_reading` (the reader on round trips: the ceiling a
  first stage puts on generation), :func:`latent_statistics`, :func:`interpolation_smoothness`.
* :func:`latent_t2i_model` — a fresh latent MiniT2I around a calibrated first stage.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pentachora.autoencoders import (
    AutoencoderKLAdapter,
    AutoencoderKLAdapterConfig,
    AutoencoderTinyAdapter,
    AutoencoderTinyAdapterConfig,
    GeoVAE,
    GeoVAEConfig,
    LatentAutoencoder,
    PatchAutoencoder,
    PatchSVAE,
    PatchSVAEConfig,
)
from pentachora.data import psnr
from pentachora.data.seeding import step_generator
from pentachora.geometry import cv_metric, target_cv
from pentachora.t2i.model import MiniT2I, MiniT2IConfig
from pentachora.t2i.reader import SceneReader

__all__ = [
    "FIRST_STAGES",
    "FirstStage",
    "SceneImageSource",
    "interpolation_smoothness",
    "latent_statistics",
    "latent_t2i_model",
    "reconstruction_reading",
    "reconstruction_scores",
    "ssim",
    "to_signed",
]


@dataclass(frozen=True)
class FirstStage:
    """One first-stage contender: how to build it, its peak-lr candidates and what it is."""

    build: Callable[[], PatchAutoencoder]
    lrs: tuple[float, ...]
    about: str


#: The contenders. Every one turns an 8×8×3 patch (or an f8 cell) into its latent floats; 12:1 is 16
#: floats per cell, 48:1 is 4.
FIRST_STAGES: dict[str, FirstStage] = {
    "geovae-12": FirstStage(
        lambda: GeoVAE(GeoVAEConfig.preset("tiny-12")), (3e-4, 1e-3, 3e-3),
        "GeoVAE tiny-12: 8×8 patches → 15 stochastic dims + log-magnitude (12:1), KL, CV on every sector",
    ),
    "geovae-48": FirstStage(
        lambda: GeoVAE(GeoVAEConfig.preset("tiny-12", latent_dim=3)), (3e-4, 1e-3, 3e-3),
        "GeoVAE tiny-12 at latent_dim 3: 3 stochastic dims + log-magnitude per 8×8 patch (48:1)",
    ),
    "nosvd-12": FirstStage(
        lambda: PatchSVAE(PatchSVAEConfig.preset("tiny", readout="linear", D=16)), (3e-4, 1e-3, 3e-3),
        "PatchSVAE tiny, NoSVD (linear readout ω, no KL): 16 floats per 8×8 patch (12:1)",
    ),
    "kl-12": FirstStage(
        lambda: AutoencoderKLAdapter(AutoencoderKLAdapterConfig.preset("tiny-f8c16")), (3e-4, 1e-3, 3e-3),
        "diffusers AutoencoderKL, f8 with 16 channels (12:1, the FLUX/SD3 layout), β = 1e-3",
    ),
    "tiny-12": FirstStage(
        lambda: AutoencoderTinyAdapter(AutoencoderTinyAdapterConfig.preset("tiny-f8c16")), (3e-4, 1e-3, 3e-3),
        "diffusers AutoencoderTiny (TAESD's architecture), f8 with 16 channels, deterministic (12:1)",
    ),
}  # fmt: skip


class SceneImageSource:
    """Training renders (``(N, 3, H, W)`` uint8, e.g. a scene pool's) as batches in [−1, 1].

    ``batch(step)`` → ``(B, 3, H, W)`` float32; the rows are drawn with :func:`step_generator`, so a batch
    is a pure function of ``(seed, step)``.
    """

    def __init__(self, images_uint8: torch.Tensor, batch_size: int, seed: int = 0) -> None:
        if images_uint8.ndim != 4 or images_uint8.shape[1] != 3 or images_uint8.dtype != torch.uint8:
            raise ValueError(
                f"expected (N, 3, H, W) uint8 images, got {tuple(images_uint8.shape)} {images_uint8.dtype}"
            )
        self.images, self.batch_size, self.seed = images_uint8, batch_size, seed

    def batch(self, step: int) -> torch.Tensor:
        idx = torch.randint(
            0, self.images.shape[0], (self.batch_size,), generator=step_generator(self.seed, step)
        )
        return to_signed(self.images[idx])


def to_signed(images_uint8: torch.Tensor) -> torch.Tensor:
    """``(N, 3, H, W)`` uint8 → float32 in [−1, 1]."""
    return images_uint8.float() / 127.5 - 1.0


# ============================================================================================ scores
def ssim(a01: torch.Tensor, b01: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of ``(N, 3, H, W)`` images in [0, 1] (scikit-image, Gaussian weights as Wang et al.)."""
    from skimage.metrics import structural_similarity

    a, b = a01.permute(0, 2, 3, 1).double().numpy(), b01.permute(0, 2, 3, 1).double().numpy()
    return torch.tensor([
        structural_similarity(x, y, channel_axis=-1, data_range=1.0, gaussian_weights=True, sigma=1.5,
                              use_sample_covariance=False)
        for x, y in zip(a, b, strict=True)
    ])  # fmt: skip


@torch.no_grad()
def reconstruction_scores(
    ae: LatentAutoencoder, images: torch.Tensor, batch_size: int = 256
) -> dict[str, float]:
    """Mean PSNR (dB) and SSIM of the posterior-mode round trip of ``(N, 3, H, W)`` images in [−1, 1]."""
    ae.eval()
    recon = torch.cat([ae(images[i : i + batch_size]) for i in range(0, images.shape[0], batch_size)])
    a, b = ((images + 1) / 2).clamp(0, 1), ((recon.float() + 1) / 2).clamp(0, 1)
    return {"psnr": float(psnr(b, a).mean()), "ssim": float(ssim(b, a).mean())}


@torch.no_grad()
def latent_statistics(ae: LatentAutoencoder, images: torch.Tensor, seed: int = 0) -> dict[str, float]:
    """What explains how a latent generates, on ``(N, 3, H, W)`` images in [−1, 1].

    Returns:
        ``kl_per_cell`` — mean KL (nats) per latent cell (0 for a deterministic encoder);
        ``channel_var_spread`` — log10 of the largest over the smallest per-channel variance of the
        posterior mode (0: every channel equally loud; the denoiser's noise hits every channel equally,
        so a quiet channel is drowned first);
        ``cv`` / ``cv_target`` / ``cv_ratio`` — pentachoron CV of the normalised latent cell vectors (the
        modes as the denoiser sees them) against ``target_cv(c)`` of uniform directions in that dimension;
        ``normalized_rms`` — RMS of the normalised posterior mode (1 for a deterministic encoder calibrated
        on these images; below 1, the rest of the calibrated variance is the posterior's noise).
    """
    ae.eval()
    posterior = ae.encode(images).latent_dist
    z = posterior.mode().double()
    cells = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    var = cells.var(dim=0)
    c = cells.shape[1]
    g = torch.Generator().manual_seed(seed)
    seen = ae.normalize(z.float()).permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # what the denoiser sees
    cv = cv_metric(seen, n_samples=2000, generator=g)
    tcv = target_cv(c) if c >= 4 else math.nan
    return {
        "kl_per_cell": float(posterior.kl_per_channel().sum()) if posterior.mean.shape[1] else 0.0,
        "channel_var_spread": float(torch.log10(var.max() / var.min().clamp_min(1e-30))),
        "cv": cv, "cv_target": tcv, "cv_ratio": cv / tcv if tcv == tcv else math.nan,
        "normalized_rms": float(ae.normalize(z.float()).square().mean().sqrt()),
    }  # fmt: skip


@torch.no_grad()
def reconstruction_reading(
    ae: LatentAutoencoder, reader: SceneReader, images: torch.Tensor, layouts: np.ndarray | torch.Tensor
) -> dict[str, float]:
    """The ceiling a first stage puts on generation: the world's reader on round-trip reconstructions.

    A latent T2I can only draw what its decoder can draw; if the reader cannot find the objects in a
    reconstruction of a real scene, no denoiser in that latent will make them appear.

    Args:
        images: ``(N, 3, H, W)`` scenes in [−1, 1].
        layouts: ``(N, g²)`` their true layouts.

    Returns:
        ``object_recall`` / ``shape_recall`` / ``colour_recall`` on the reconstructions, and
        ``object_recall_originals`` of the reader on the scenes themselves (its own accuracy).
    """
    from pentachora.t2i.scoring import object_hits

    ae.eval()
    n_shapes = len(reader.config.world.shapes)
    truth = np.asarray(layouts)
    recon01 = ((ae(images).float() + 1) / 2).clamp(0, 1)
    rec = object_hits(reader.read(recon01).labels.cpu().numpy(), truth, n_shapes)
    orig = object_hits(reader.read(((images + 1) / 2).clamp(0, 1)).labels.cpu().numpy(), truth, n_shapes)
    return {"object_recall": float(rec.object.mean()), "shape_recall": float(rec.shape.mean()),
            "colour_recall": float(rec.colour.mean()), "object_recall_originals": float(orig.object.mean())}  # fmt: skip


@torch.no_grad()
def interpolation_smoothness(
    ae: LatentAutoencoder,
    reader: SceneReader,
    images_a: torch.Tensor,
    images_b: torch.Tensor,
    points: int = 9,
) -> dict[str, float]:
    """Decode straight-line paths between the latents (modes) of two image sets and read every frame.

    For each pair the reader's layout (one label per cell) is read at ``points`` equally spaced points;
    ``flips`` counts the cells whose label changes between consecutive frames, ``distance`` the cells that
    differ between the two ends. A smooth latent changes each differing cell about once:

    * ``excess_flips`` — mean of ``flips / max(distance, 1)`` (1 = every differing cell flips once, more =
      objects appear, vanish and reappear along the path);
    * ``max_jump`` — mean over pairs of the largest fraction of the grid that changes in one step;
    * ``ghost_frames`` — fraction of interior frames whose reading has a label found in neither end.
    """
    ae.eval()
    za = ae.encode(images_a).latent_dist.mode()
    zb = ae.encode(images_b).latent_dist.mode()
    ts = torch.linspace(0, 1, points)
    readings = []
    for t in ts:
        frames = ((ae.decode(za + t * (zb - za)).sample.float() + 1) / 2).clamp(0, 1)
        readings.append(reader.read(frames).labels.cpu().numpy())
    r = np.stack(readings, axis=1)  # (N, points, cells)
    flips = (r[:, 1:] != r[:, :-1]).sum(axis=(1, 2))
    distance = (r[:, 0] != r[:, -1]).sum(axis=1)
    jump = (r[:, 1:] != r[:, :-1]).mean(axis=2).max(axis=1)
    ends = np.concatenate([r[:, :1], r[:, -1:]], axis=1)
    ghost = [
        np.mean([not set(r[i, k]).issubset(set(ends[i].ravel())) for k in range(1, points - 1)])
        for i in range(r.shape[0])
    ]
    return {
        "excess_flips": float(np.mean(flips / np.maximum(distance, 1))),
        "max_jump": float(jump.mean()),
        "ghost_frames": float(np.mean(ghost)),
        "pairs": int(r.shape[0]),
    }


# ============================================================================================ models
def latent_t2i_model(ae: LatentAutoencoder, config: MiniT2IConfig | None = None) -> MiniT2I:
    """A fresh :class:`MiniT2I` (the ``cpu`` preset unless ``config``) denoising in ``ae``'s latent, with
    ``ae``'s weights (frozen) as its first stage."""
    base = config if config is not None else MiniT2IConfig.preset("cpu")
    model = MiniT2I(base.with_first_stage(ae))
    model.first_stage.load_state_dict(ae.state_dict())
    return model


def describe_first_stage(ae: LatentAutoencoder) -> dict[str, Any]:
    """Accounting of a wrapped first stage."""
    return {
        "model_type": ae.config.first_stage_type,
        "params": ae.first_stage.num_parameters(),
        "latent_shape": [ae.latent_channels, ae.downsample],
        "compression": float(ae.first_stage.compression_ratio),
        "scaling_factor": ae.config.scaling_factor,
        "shift_factor": ae.config.shift_factor,
    }
