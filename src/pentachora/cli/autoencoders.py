"""`pentachora train svae ...`, `pentachora train geovae ...`, `pentachora eval DIR`,
`pentachora reconstruct DIR IMAGE -o OUT`.

The shared training and data options are declared once in :mod:`pentachora.cli.options`; the work
is done by :mod:`pentachora.recipes` and :mod:`pentachora.autoencoders.tiling`; this module parses
and prints.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from pentachora.cli.app import app, train_app
from pentachora.cli.core import set_resume_dir
from pentachora.cli.options import (
    DATA_HELP,
    GRAD_CLIP_MODE_CHOICES,
    GradClipMode,
    ImageDataOptions,
    TrainOptions,
    build_config,
    build_model,
    check_output_file,
    check_run_folder,
    describe_eval_data,
    image_data_options,
    lazy_loads_json,
    load_autoencoder,
    merge_flag_overrides,
    parse_overrides,
    train_options,
)

__all__ = [
    "DATA_HELP",
    "GRAD_CLIP_MODE_CHOICES",
    "GradClipMode",
    "describe_model",
    "parse_overrides",
    "print_model_card",
    "summary_table",
    "train_and_report",
    "write_pictures",
]


# ---------------------------------------------------------------------------- helpers shared by commands


def describe_model(model) -> dict[str, Any]:
    """Parameter count and honest latent accounting of an autoencoder."""
    return {
        "model": model.model_type,
        "parameters": model.num_parameters(),
        "patch": model.patch_size,
        "pixel_floats_per_patch": model.pixel_floats_per_patch,
        "latent_floats_per_patch": model.latent_floats_per_patch,
        "compression_ratio": model.compression_ratio,
    }


def print_model_card(console: Console, model, title: str) -> None:
    info = describe_model(model)
    ratio = info["compression_ratio"]
    kind = f"{ratio:.1f}:1 compression" if ratio >= 1 else f"{1 / ratio:.1f}× EXPANSION (no bottleneck)"
    console.print(
        f"[bold]{title}[/bold]: {info['parameters']:,} parameters; patch {info['patch']}; decoder consumes "
        f"{info['latent_floats_per_patch']:,} floats per patch of {info['pixel_floats_per_patch']:,} pixel floats "
        f"→ {kind}"
    )


def summary_table(title: str, runs: dict[str, dict[str, float]], noise_types: tuple[str, ...] = ()) -> Table:
    """A rich table with one column per run: held-out metrics, readouts, then per-noise MSE."""
    table = Table(title=title)
    table.add_column("metric")
    for name in runs:
        table.add_column(name, justify="right")
    rows = [
        ("held-out PSNR (dB, [0,1] pixels) ↑", "psnr_heldout", "{:.2f}"),
        ("held-out SSIM ↑", "ssim_heldout", "{:.3f}"),
        ("noise MSE, mean of types ↓", "mse_noise_mean", "{:.4g}"),
        ("parameters", "parameters", "{:,.0f}"),
        ("latent floats / patch", "latent_floats_per_patch", "{:,.0f}"),
        ("compression (pixels : latent)", "compression_ratio", "{:.2f}"),
        ("CV of frames (readout)", "cv", "{:.4f}"),
        ("effective rank", "erank", "{:.2f}"),
        ("S_delta", "s_delta", "{:.4f}"),
        ("KL", "kl", "{:.4g}"),
        ("NaN/inf steps skipped", "nonfinite_steps", "{:.0f}"),
        ("train wall time (s)", "train_wall_s", "{:.1f}"),
    ]
    rows += [(f"MSE {t}", f"mse_noise/{t}", "{:.4g}") for t in noise_types]
    for label, key, fmt in rows:
        if not any(key in r for r in runs.values()):
            continue
        cells = []
        for r in runs.values():
            v = r.get(key)
            cells.append("—" if v is None else ("nan/inf" if not math.isfinite(v) else fmt.format(v)))
        table.add_row(label, *cells)
    return table


def write_pictures(out: Path, runs: dict[str, Any], tiles01, n: int = 8) -> dict[str, Path]:
    """Reconstruction grid of held-out tiles for every run, and the training curves of every run."""
    from pentachora.recipes.pictures import save_run_pictures

    return save_run_pictures(out, runs, tiles01, n=n)


def train_and_report(
    console: Console,
    model,
    label: str,
    train: TrainOptions,
    images: ImageDataOptions,
    soft_hand: bool = False,
    callbacks: tuple = (),
) -> None:
    """Shared body of the image `train` commands: train, evaluate, write pictures, print the summary."""
    from pentachora.data.noise import NOISE_TYPES
    from pentachora.errors import ConfigError
    from pentachora.recipes import build_eval_data, train_autoencoder
    from pentachora.training import TrainingDiverged

    spec = images.spec
    images.check_patch(model.patch_size)
    cfg = train.train_config()
    out = Path(cfg.out_dir)
    check_run_folder(out)
    fit_kwargs = train.fit_kwargs(train_autoencoder)
    callbacks = (*callbacks, *train.diagnostics_callbacks(model))
    eval_data = build_eval_data(spec, images.image_size, **images.eval_kwargs())
    console.print(
        f"training {label} on '{spec.spec}' for {train.steps} steps → {out}; evaluating on {describe_eval_data(eval_data)}"
    )
    set_resume_dir(out)
    try:
        run = train_autoencoder(
            model,
            spec,
            cfg,
            image_size=images.image_size,
            name=label,
            soft_hand=soft_hand,
            eval_data=eval_data,
            callbacks=callbacks,
            **fit_kwargs,
        )
    except TrainingDiverged as exc:
        raise ConfigError(f"{exc} (lower --lr or raise --warmup)") from exc
    result = {**run.evaluation, **describe_model(run.model)}
    pictures = write_pictures(out, {label: run}, eval_data.tiles01)
    console.print(summary_table(f"{label} after {run.result.steps} steps", {label: result}, NOISE_TYPES))
    for kind, path in pictures.items():
        console.print(f"{kind}: {path}")
    console.print(f"run folder: {out}  (model: {out / 'final'}; metrics: {out / 'metrics.jsonl'})")


def train_image_autoencoder(
    train: TrainOptions,
    images: ImageDataOptions,
    model_class: type,
    config,
    label: str,
    default_out: Path,
    soft_hand: bool = False,
    callbacks: Callable[[int], tuple] = lambda steps: (),
) -> None:
    """The one body of ``train svae`` and ``train geovae``: build the model from ``config`` (seeded),
    print its card, then describe it (``--steps 0``) or train, evaluate and report it.

    ``callbacks(steps)`` gives the model's schedule callbacks for a run of ``steps`` steps.
    """
    import torch

    console = Console()
    torch.manual_seed(train.seed)
    model = build_model(model_class, config)
    print_model_card(console, model, label)
    if train.steps == 0:
        console.print_json(json.dumps({**describe_model(model), "config": dataclasses.asdict(config)}))
        return
    train.out = train.out or default_out
    train_and_report(
        console, model, label, train, images, soft_hand=soft_hand, callbacks=callbacks(train.steps)
    )


# ---------------------------------------------------------------------------- train svae


@train_app.command("svae")
@train_options(
    grad_clip={"help": "Gradient-norm clip (0 = off); the floor of --grad-clip-mode adaptive."},
    out={"help": "Run folder (default runs/svae-<preset>). Rerun to resume."},
)
@image_data_options()
def train_svae(
    train: TrainOptions,
    images: ImageDataOptions,
    preset: str = typer.Option(
        "tiny", help="Architecture preset: tiny (CPU), freckles (≈2.56M), fresnel (≈16.9M)."
    ),
    readout: str = typer.Option(
        None, help="'svd' (canonical PatchSVAE; the presets' default) or 'linear' (the NoSVD ablation)."
    ),
    omega_layernorm: bool = typer.Option(
        None, help="NoSVD round 2: LayerNorm on omega (+ orthogonal init). Default: the preset's (off)."
    ),
    mhat_sphere_norm: bool = typer.Option(None, help="NoSVD round 3: sphere-normalise M̂. Default: off."),
    cv_mode: str = typer.Option(
        None, help="'readout' (faithful: CV measured, no gradient; the default) or 'loss'."
    ),
    soft_hand: bool = typer.Option(True, help="Soft-hand schedule of recon/CV weights from the CV readout."),
    set_: list[str] = typer.Option(
        None,
        "--set",
        help="Model config override KEY=VALUE (repeatable); a flag for the same field must agree.",
    ),
) -> None:
    """Train PatchSVAE (or its NoSVD ablation with --readout linear) and evaluate it.

    Example: pentachora train svae --preset tiny --data images --steps 500 --out runs/svae
    """
    from pentachora.autoencoders.svae import PatchSVAE, PatchSVAEConfig

    overrides = merge_flag_overrides(
        parse_overrides(set_), readout=readout, cv_mode=cv_mode, omega_layernorm=omega_layernorm,
        mhat_sphere_norm=mhat_sphere_norm,
    )  # fmt: skip
    config = build_config(PatchSVAEConfig, preset, overrides)
    svd = config.readout == "svd"
    label = f"PatchSVAE[{preset}{'' if svd else ', NoSVD'}]"
    default_out = Path("runs") / f"svae-{preset}{'' if svd else '-nosvd'}"
    train_image_autoencoder(train, images, PatchSVAE, config, label, default_out, soft_hand=soft_hand)


# ---------------------------------------------------------------------------- train geovae


@train_app.command("geovae")
@train_options(
    exclude=("grad_clip_mode", "weight_decay"),
    out={"help": "Run folder (default runs/geovae-<preset>). Rerun to resume."},
)
@image_data_options()
def train_geovae(
    train: TrainOptions,
    images: ImageDataOptions,
    preset: str = typer.Option("tiny-12", help="Preset: tiny-12, tiny-48 (CPU), 12:1, 48:1 (16×16 patches)."),
    align_fraction: float = typer.Option(
        0.1, min=0.0, max=1.0, help="Fraction of steps in the geometry-first CV alignment phase."
    ),
    set_: list[str] = typer.Option(None, "--set", help="Model config override KEY=VALUE (repeatable)."),
) -> None:
    """Train GeoVAE, the SVD-free geometric VAE (geometry-first CV phase, then hand-off), and evaluate it.

    Example: pentachora train geovae --preset tiny-12 --data noise:raw --steps 3000 --out runs/geovae
    """
    from pentachora.autoencoders.geovae import GeoVAE, GeoVAEConfig
    from pentachora.recipes import geovae_schedule

    config = build_config(GeoVAEConfig, preset, parse_overrides(set_))
    train_image_autoencoder(
        train,
        images,
        GeoVAE,
        config,
        f"GeoVAE[{preset}]",
        Path("runs") / f"geovae-{preset.replace(':', 'to')}",
        callbacks=lambda steps: (geovae_schedule(steps, align_fraction=align_fraction),),
    )


# ---------------------------------------------------------------------------- eval


@app.command("eval")
@image_data_options(noise_per_type={"default": 32})
def eval_cmd(
    images: ImageDataOptions,
    run: Path = typer.Argument(
        ..., help="Run folder (uses final/ or the latest checkpoint) or checkpoint folder."
    ),
    heavy_tails: str = typer.Option(
        None, help="Noise heavy tails for evaluation: clamp or raw (default: from --data)."
    ),
    json_out: Path = typer.Option(None, "--json", help="Also write the metrics as JSON here."),
) -> None:
    """Evaluate a trained autoencoder: held-out PSNR/SSIM, per-noise-type MSE, CV, erank, S_delta."""
    from pentachora.data.noise import NOISE_TYPES
    from pentachora.errors import CheckpointError, ConfigError
    from pentachora.recipes import build_eval_data
    from pentachora.recipes.evaluation import broken_reconstructions, evaluate_autoencoder

    check_output_file(json_out, "json", "--json")
    if heavy_tails not in (None, "clamp", "raw"):
        raise ConfigError(f"--heavy-tails must be 'clamp' or 'raw', got {heavy_tails!r}")
    console = Console()
    model = load_autoencoder(run)
    images.check_patch(model.patch_size)
    eval_data = build_eval_data(
        images.spec, images.image_size, heavy_tails=heavy_tails, **images.eval_kwargs()
    )
    console.print(f"evaluating {run} on {describe_eval_data(eval_data)}")
    metrics = {**evaluate_autoencoder(model, eval_data), **describe_model(model)}
    console.print(summary_table(f"evaluation of {run}", {model.model_type: metrics}, NOISE_TYPES))
    if json_out is not None:
        json_out.write_text(json.dumps(metrics, indent=2) + "\n")
    broken = broken_reconstructions(metrics, eval_data)
    if broken is not None:  # finite weights can still overflow (e.g. scaled by 1e30): not a result
        largest = max(float(p.detach().abs().max()) for p in model.parameters())
        raise CheckpointError(f"{run}: {broken}; the model is broken (largest |weight| {largest:.3g})")


# ---------------------------------------------------------------------------- reconstruct


@app.command("reconstruct")
def reconstruct_cmd(
    run: Path = typer.Argument(..., help="Run folder or checkpoint folder."),
    image: Path = typer.Argument(..., help="Input image (PNG/JPEG/...), any size."),
    output: Path = typer.Option(
        ...,
        "--output",
        "-o",
        help="Where to write the reconstruction (.png, .jpg, .webp, ...; not the input).",
    ),
    mode: str = typer.Option(
        "tile",
        help="'tile': cut into training-size tiles (reflect-padded at the border), reconstruct each, stitch; "
        "'pad': reflect-pad to a patch multiple and reconstruct the whole image at once.",
    ),
    tile: int = typer.Option(
        None,
        min=1,
        max=4096,
        help="Tile side for --mode tile, a multiple of the patch (default: the run's training image size, else 64).",
    ),
) -> None:
    """Reconstruct one image of any size and report its PSNR (in [0, 1] pixels)."""
    from pentachora.autoencoders.tiling import MAX_IMAGE_PIXELS, reconstruct_image
    from pentachora.data.images import load_image_file, psnr, to_model_space, to_pixel_space
    from pentachora.diagnostics.plots import save_image_grid
    from pentachora.errors import ConfigError, DataError

    if mode not in ("tile", "pad"):
        raise ConfigError(f"--mode must be 'tile' or 'pad', got {mode!r}")
    if not image.is_file():
        raise DataError(
            f"input image {image} does not exist" if not image.exists() else f"{image} is not a file"
        )
    check_output_file(output, "image", "--output", inputs=(image,))
    console = Console()
    model = load_autoencoder(run)
    try:
        x01 = load_image_file(image, max_pixels=MAX_IMAGE_PIXELS)  # (3, H, W); size checked before decoding
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the image {image}: {exc}") from exc
    fit = tile is None
    if mode == "tile" and tile is None:
        tile = _training_image_size(run)
    try:
        result = reconstruct_image(model, to_model_space(x01), mode=mode, tile=tile, fit_tile=fit)
    except ConfigError as exc:
        raise ConfigError(f"--tile: {exc}" if mode == "tile" and "tile" in str(exc) else str(exc)) from exc
    rec01 = to_pixel_space(result.image)
    save_image_grid(rec01[None], output, nrow=1, pad=0)
    h, w = x01.shape[-2:]
    console.print(
        f"reconstructed {image} ({w}×{h}) {result.describe()}: PSNR {float(psnr(rec01, x01)):.2f} dB → {output}"
    )


def _training_image_size(run: Path) -> int:
    """The image size a run trained on (its data.json), else 64."""
    data_json = Path(run) / "data.json"
    try:
        return int(lazy_loads_json(data_json.read_text()).get("image_size", 64))
    except (OSError, ValueError, TypeError, AttributeError):
        return 64
