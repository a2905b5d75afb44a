"""Evaluation of patch autoencoders on held-out photos and on every noise type.

Conventions (docs/findings.md): PSNR and SSIM are computed in [0, 1] **pixel space** on held-out
images the model never saw in training; noise reconstruction is an MSE in the noise's own units
(model space). Geometry readouts (CV, effective rank, S_delta…) are whatever scalar readouts the
model's ``forward`` reports, averaged over the held-out batches.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from pentachora.data.images import heldout_tiles, psnr, ssim, to_model_space, to_pixel_space

__all__ = ["EvalData", "broken_reconstructions", "evaluate_autoencoder", "make_eval_data"]

#: Scalars of a model's output that are geometry readouts worth reporting at evaluation.
READOUT_KEYS = ("cv", "erank", "s_delta", "alpha_mean", "latent_rms", "kl")


@dataclass
class EvalData:
    """Fixed evaluation data.

    Attributes:
        tiles01: ``(N, 3, T, T)`` held-out image tiles in [0, 1] pixel space, or None.
        noise: ``{type: (n, C, S, S)}`` fixed noise batches (model space), or None.
    """

    tiles01: torch.Tensor | None = None
    noise: Mapping[str, torch.Tensor] | None = None

    def subset(
        self,
        max_tiles: int | None = None,
        noise_types: tuple[str, ...] | None = None,
        n_noise: int | None = None,
    ):
        """A smaller EvalData for cheap periodic evaluation during training."""
        tiles = self.tiles01
        if tiles is not None and max_tiles is not None and tiles.shape[0] > max_tiles:
            keep = torch.linspace(0, tiles.shape[0] - 1, max_tiles).round().long()
            tiles = tiles[keep]
        noise = self.noise
        if noise is not None:
            noise = {
                k: (v[:n_noise] if n_noise else v)
                for k, v in noise.items()
                if noise_types is None or k in noise_types
            }
        return EvalData(tiles, noise)


def make_eval_data(
    heldout_images: list[torch.Tensor] | None,
    tile: int,
    noise_types: tuple[str, ...] = (),
    n_noise_per_type: int = 16,
    noise_size: int | None = None,
    heavy_tails: str = "clamp",
    seed: int = 0,
    max_tiles_per_image: int | None = None,
) -> EvalData:
    """Build :class:`EvalData` from held-out images and a list of noise types."""
    from pentachora.data.noise import noise_eval_sets

    tiles = heldout_tiles(heldout_images, tile, max_per_image=max_tiles_per_image) if heldout_images else None
    noise = (
        noise_eval_sets(noise_types, n_noise_per_type, noise_size or tile, seed, heavy_tails, 3)
        if noise_types
        else None
    )
    return EvalData(tiles, noise)


def _batches(x: torch.Tensor, batch_size: int):
    for i in range(0, x.shape[0], batch_size):
        yield x[i : i + batch_size]


@torch.no_grad()
def evaluate_autoencoder(
    model: torch.nn.Module,
    data: EvalData,
    batch_size: int = 32,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Evaluate an autoencoder (eval mode, no gradient).

    Args:
        model: a patch autoencoder with ``reconstruct(x)`` and a ``forward(x)`` returning scalars.
        data: held-out tiles and/or noise batches.
        batch_size: evaluation batch size.
        device: where to run (defaults to the model's device).

    Returns:
        ``psnr_heldout`` (mean per-tile dB), ``ssim_heldout``, ``mse_heldout`` (pixel space),
        ``heldout_nonfinite`` (held-out tiles whose reconstruction holds NaN/inf),
        ``mse_noise/<type>`` for each noise type, ``mse_noise_mean`` (mean over types, model
        space), ``noise_nonfinite`` (count of non-finite reconstructions) and the mean readouts
        the model reports (``cv``, ``erank``, ...).
    """
    was_training = model.training
    model.eval()
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    out: dict[str, float] = {}
    readouts: dict[str, list[float]] = {}
    try:
        if data.tiles01 is not None:
            psnrs, ssims, mses = [], [], []
            heldout_bad = 0
            for tiles in _batches(data.tiles01, batch_size):
                x = to_model_space(tiles).to(dev)
                # reconstruct() is deterministic (a VAE decodes its posterior mode); forward() gives
                # the model's own readouts.
                raw = model.reconstruct(x).float()
                heldout_bad += int((~torch.isfinite(raw)).flatten(1).any(dim=1).sum())
                rec01 = to_pixel_space(raw).cpu()
                try:
                    output = model(x)
                except torch.linalg.LinAlgError:  # a readout's decomposition of NaN/inf: no readouts
                    output = None
                psnrs.append(psnr(rec01, tiles))
                ssims.append(ssim(rec01, tiles))
                mses.append(((rec01 - tiles) ** 2).flatten(1).mean(1))
                for k, v in output.scalars().items() if output is not None else ():
                    if k in READOUT_KEYS:
                        readouts.setdefault(k, []).append(v)
            out["psnr_heldout"] = float(torch.cat(psnrs).clamp_max(100.0).mean())
            out["ssim_heldout"] = float(torch.cat(ssims).mean())
            out["mse_heldout"] = float(torch.cat(mses).mean())
            out["heldout_nonfinite"] = float(heldout_bad)
        if data.noise:
            per_type = []
            nonfinite = 0
            for kind, batch in data.noise.items():
                errs = []
                for x in _batches(batch, batch_size):
                    rec = model.reconstruct(x.to(dev)).float().cpu()
                    bad = ~torch.isfinite(rec)
                    nonfinite += int(bad.any(dim=(1, 2, 3)).sum())
                    errs.append(((rec - x) ** 2).flatten(1).mean(1))
                mse = float(torch.cat(errs).mean())
                out[f"mse_noise/{kind}"] = mse
                per_type.append(mse)
            finite = [m for m in per_type if math.isfinite(m)]
            out["mse_noise_mean"] = (
                float(sum(finite) / len(finite)) if len(finite) == len(per_type) else math.inf
            )
            out["noise_nonfinite"] = float(nonfinite)
        for k, vs in readouts.items():
            out[k] = float(sum(vs) / len(vs))
    finally:
        model.train(was_training)
    return out


def broken_reconstructions(metrics: dict[str, float], data: EvalData) -> str | None:
    """Why an evaluation shows a broken model (``None`` if it does not): any held-out photo tile
    reconstructed to NaN/inf (bounded inputs: a healthy model never does), or every noise image."""
    bad = int(metrics.get("heldout_nonfinite", 0))
    if bad:
        n = int(data.tiles01.shape[0]) if data.tiles01 is not None else bad
        return f"{bad} of {n} held-out photo tiles reconstruct to NaN/inf"
    n_noise = sum(int(b.shape[0]) for b in data.noise.values()) if data.noise else 0
    if n_noise and int(metrics.get("noise_nonfinite", 0)) >= n_noise:
        return f"all {n_noise} noise images reconstruct to NaN/inf"
    return None
