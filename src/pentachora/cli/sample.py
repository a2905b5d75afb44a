"""`pentachora sample DIR -n 16 -o grid.png`: decode z ~ N(0, I) from a variational autoencoder.

Works with any checkpoint whose model has ``sample_prior(n, height, width, generator)`` (GeoVAE,
the AutoencoderKL adapter). GeoVAE draws every latent channel per patch — the d stochastic dims and
the standardised log-magnitude — from N(0, 1) and decodes them *with* its cross-patch attention, so
the patches of one sample are coordinated; nothing is conditioned on data.
"""

from __future__ import annotations

from pathlib import Path

import typer

from pentachora.cli.app import app
from pentachora.cli.options import MAX_SEED, check_output_file, load_autoencoder

#: Largest ``--num`` (the grid is built in memory).
MAX_SAMPLES = 1024

#: Most latent cells of one call (``-n`` × cells per sample): all samples are decoded at once.
MAX_SAMPLE_CELLS = 16 * 16384


@app.command()
def sample(
    directory: Path = typer.Argument(
        ..., help="A run folder (final/ or latest checkpoint) or a checkpoint folder."
    ),
    n: int = typer.Option(16, "-n", "--num", min=1, max=MAX_SAMPLES, help="Number of samples."),
    output: Path = typer.Option(
        Path("samples.png"), "-o", "--output", help="Image grid to write (.png, .jpg, .webp, ...)."
    ),
    seed: int = typer.Option(0, "--seed", min=0, max=MAX_SEED, help="Seed of the prior draws."),
    size: int = typer.Option(
        64, "--size", min=1, max=4096, help="Image side in pixels (a multiple of the patch size)."
    ),
) -> None:
    """Draw z ~ N(0, I), decode it and save a PNG grid (variational autoencoders only)."""
    import torch

    from pentachora.autoencoders.tiling import check_patch_budget
    from pentachora.data.images import to_pixel_space
    from pentachora.diagnostics.plots import save_image_grid
    from pentachora.errors import ConfigError

    check_output_file(output, "image", "--output")
    model = load_autoencoder(directory)
    if not callable(getattr(model, "sample_prior", None)):
        raise ConfigError(
            f"{directory} holds a {type(model).__name__}, which is not a variational autoencoder (it has no "
            "prior to sample); use a GeoVAE or AutoencoderKL checkpoint"
        )
    stride = int(getattr(model, "latent_stride", getattr(model, "patch_size", 1)))
    if size % stride:
        raise ConfigError(f"--size {size} must be a multiple of {stride}")
    cells = check_patch_budget(size, size, stride, what="--size: a sample")
    if n * cells > MAX_SAMPLE_CELLS:
        raise ConfigError(
            f"-n {n} samples of {size}×{size} px decode {n * cells:,} latent cells at once, more than the "
            f"{MAX_SAMPLE_CELLS:,} allowed; lower -n or --size"
        )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        images = model.sample_prior(n, size, size, generator=gen)
    written = save_image_grid(to_pixel_space(images), output, nrow=None)
    typer.echo(
        f"{n} samples from {type(model).__name__} ({size}×{size}, seed {seed}, "
        f"z of {getattr(model, 'latent_channels', '?')} channels per {stride}×{stride} cell) → {written}"
    )
