"""`pentachora sample DIR -n 16 -o grid.png`: decode z ~ N(0, I) from a variational autoencoder.

Works with any checkpoint whose model has ``sample_prior(n, height, width, generator)`` (GeoVAE,
the AutoencoderKL adapter). GeoVAE draws every latent channel per patch — the d stochastic dims and
the standardised log-magnitude — from N(0, 1) and decodes them *with* its cross-patch attention, so
the patches of one sample are coordinated; nothing is conditioned on data.
"""

from __future__ import annotations

import math
from pathlib import Path

import typer

from pentachora.cli import app


def save_grid(images01, path: Path, nrow: int | None = None, pad: int = 2) -> Path:
    """Write ``(n, C, H, W)`` images in [0, 1] as one PNG grid (white padding).

    Args:
        images01: tensor of images in pixel space.
        path: output PNG path (parent folders are created).
        nrow: images per row (default: ⌈√n⌉).
        pad: padding in pixels between images.

    Returns:
        The path written.
    """
    import numpy as np
    import torch
    from PIL import Image

    x = images01.detach().float().clamp(0, 1).cpu()
    n, c, h, w = x.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    grid = torch.ones(c, rows * (h + pad) + pad, nrow * (w + pad) + pad)
    for i in range(n):
        r, q = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[:, top : top + h, left : left + w] = x[i]
    arr = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    if c == 1:
        arr = arr[..., 0]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


@app.command()
def sample(
    directory: Path = typer.Argument(
        ..., help="A run folder (final/ or latest checkpoint) or a checkpoint folder."
    ),
    n: int = typer.Option(16, "-n", "--num", min=1, help="Number of samples."),
    output: Path = typer.Option(Path("samples.png"), "-o", "--output", help="PNG grid to write."),
    seed: int = typer.Option(0, "--seed", help="Seed of the prior draws."),
    size: int = typer.Option(
        64, "--size", min=1, help="Image side in pixels (a multiple of the patch size)."
    ),
) -> None:
    """Draw z ~ N(0, I), decode it and save a PNG grid (variational autoencoders only)."""
    import torch

    from pentachora.data.images import to_pixel_space
    from pentachora.io import CheckpointError
    from pentachora.recipes import load_run_model

    try:
        model = load_run_model(directory)
    except CheckpointError as exc:
        raise typer.BadParameter(str(exc), param_hint="DIR") from exc
    if not callable(getattr(model, "sample_prior", None)):
        raise typer.BadParameter(
            f"{type(model).__name__} is not a variational autoencoder (it has no prior to sample); "
            "use a GeoVAE or AutoencoderKL checkpoint",
            param_hint="DIR",
        )
    stride = int(getattr(model, "latent_stride", getattr(model, "patch_size", 1)))
    if size % stride:
        raise typer.BadParameter(f"--size {size} must be a multiple of {stride}", param_hint="--size")
    gen = torch.Generator().manual_seed(seed)
    images = model.sample_prior(n, size, size, generator=gen)
    written = save_grid(to_pixel_space(images), output)
    typer.echo(
        f"{n} samples from {type(model).__name__} ({size}×{size}, seed {seed}, "
        f"z of {getattr(model, 'latent_channels', '?')} channels per {stride}×{stride} cell) → {written}"
    )
