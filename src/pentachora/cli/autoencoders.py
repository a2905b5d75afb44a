"""`pentachora train svae ...`, `pentachora eval DIR`, `pentachora reconstruct DIR IMAGE -o OUT`."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Literal, get_args

import typer
from rich.console import Console
from rich.table import Table

from pentachora.cli import app, train_app

DATA_HELP = (
    "Training data: 'images' (embedded scikit-image photos, whole-image held-out split), 'noise' "
    "(16 noise types, heavy tails clamped to ±4), 'noise:raw' (raw heavy tails), 'noise:tier2', "
    "'noise:gaussian,pink', 'folder:PATH', 'hf:NAME[:SPLIT[:COLUMN]]'."
)


# ---------------------------------------------------------------------------- helpers shared by commands


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``["V=64", "readout=linear", "cv_target=0.3"]`` → typed dict (JSON literals, else strings)."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise typer.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--set")
        key, value = pair.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


#: ``TrainConfig.grad_clip_mode`` values, spelled out here so the CLI starts without importing torch
#: (a test checks they equal ``pentachora.training.GRAD_CLIP_MODES``).
GradClipMode = Literal["fixed", "adaptive"]
GRAD_CLIP_MODE_CHOICES: tuple[str, ...] = get_args(GradClipMode)


def make_train_config(
    steps: int,
    batch_size: int,
    lr: float,
    out: Path | None,
    seed: int,
    eval_every: int,
    save_every: int,
    bf16: bool,
    grad_clip: float,
    warmup: int,
    progress: bool = True,
    weight_decay: float = 0.01,
    grad_clip_mode: str = "fixed",
):
    from pentachora.training import TrainConfig

    return TrainConfig(
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        warmup_steps=warmup,
        grad_clip=grad_clip,
        grad_clip_mode=grad_clip_mode,
        mixed_precision="bf16" if bf16 else "no",
        seed=seed,
        eval_every=eval_every,
        save_every=save_every,
        log_every=max(1, min(25, steps // 40 or 1)),
        out_dir=str(out) if out is not None else None,
        progress=progress,
    )


def load_model_or_exit(console: Console, run: Path):
    """Load a model from a run or checkpoint folder; on a bad folder print why and exit with code 2."""
    from pentachora.io import CheckpointError
    from pentachora.recipes import load_run_model

    try:
        return load_run_model(run)
    except CheckpointError as exc:
        console.print(f"[red]cannot load {run}: {exc}[/red]")
        raise typer.Exit(code=2) from exc


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
    import torch

    from pentachora.data.images import psnr, to_model_space, to_pixel_space
    from pentachora.diagnostics.plots import save_reconstruction_grid, save_training_curves

    paths: dict[str, Path] = {}
    if tiles01 is not None:
        idx = torch.linspace(0, tiles01.shape[0] - 1, min(n, tiles01.shape[0])).round().long()
        originals = tiles01[idx]
        recons, titles = {}, {}
        for name, run in runs.items():
            rec = to_pixel_space(run.model.reconstruct(to_model_space(originals)))
            recons[name] = rec
            titles[name] = f"{name}\n{float(psnr(rec, originals).mean()):.1f} dB"
        paths["reconstructions"] = save_reconstruction_grid(
            originals, recons, out / "reconstructions.png", titles
        )
    curves = {name: run.metrics for name, run in runs.items() if run.metrics}
    if curves:
        paths["curves"] = save_training_curves(curves, out / "curves.png")
    return paths


# ---------------------------------------------------------------------------- train svae


@train_app.command("svae")
def train_svae(
    preset: str = typer.Option(
        "tiny", help="Architecture preset: tiny (CPU), freckles (≈2.56M), fresnel (≈16.9M)."
    ),
    data: str = typer.Option("images", help=DATA_HELP),
    steps: int = typer.Option(500, min=0, help="Optimizer steps (0 = build and describe the model only)."),
    batch_size: int = typer.Option(16, min=1, help="Images per batch."),
    image_size: int = typer.Option(
        64, min=1, help="Crop / noise image side in pixels (multiple of the patch)."
    ),
    lr: float = typer.Option(1e-3, help="Peak learning rate (AdamW, cosine schedule)."),
    warmup: int = typer.Option(50, min=0, help="Linear warm-up steps."),
    grad_clip: float = typer.Option(
        1.0, help="Gradient-norm clip (0 = off); the floor of --grad-clip-mode adaptive."
    ),
    grad_clip_mode: GradClipMode = typer.Option(
        "fixed",
        help="'fixed' (clip at --grad-clip) or 'adaptive' (clip at max(recon loss, --grad-clip), the reference "
        "F-class trainer's rule; its threshold rises with a blowing-up loss, so it protects less).",
    ),
    weight_decay: float = typer.Option(
        0.01, min=0.0, help="AdamW weight decay on matrices (0 = plain Adam, as the reference trainer)."
    ),
    readout: str = typer.Option("svd", help="'svd' (canonical PatchSVAE) or 'linear' (the NoSVD ablation)."),
    omega_layernorm: bool = typer.Option(
        False, help="NoSVD round 2: LayerNorm on omega (+ orthogonal init)."
    ),
    mhat_sphere_norm: bool = typer.Option(False, help="NoSVD round 3: sphere-normalise M̂."),
    cv_mode: str = typer.Option("readout", help="'readout' (faithful: CV measured, no gradient) or 'loss'."),
    soft_hand: bool = typer.Option(True, help="Soft-hand schedule of recon/CV weights from the CV readout."),
    set_: list[str] = typer.Option(None, "--set", help="Model config override KEY=VALUE (repeatable)."),
    out: Path = typer.Option(
        None, "--out", "-o", help="Run folder (default runs/svae-<preset>). Rerun to resume."
    ),
    seed: int = typer.Option(0, help="Seed (data, init, per-step randomness)."),
    eval_every: int = typer.Option(
        100, min=0, help="Evaluate on held-out data every N steps (0 = end only)."
    ),
    save_every: int = typer.Option(250, min=0, help="Checkpoint every N steps (0 = end only)."),
    bf16: bool = typer.Option(False, help="bf16 autocast (geometry stays fp32/fp64)."),
    noise_per_type: int = typer.Option(16, min=1, help="Evaluation images per noise type."),
    eval_tiles: int = typer.Option(0, min=0, help="Cap on evaluation tiles per held-out image (0 = all)."),
) -> None:
    """Train PatchSVAE (or its NoSVD ablation with --readout linear) and evaluate it.

    Example: pentachora train svae --preset tiny --data images --steps 500 --out runs/svae
    """
    import torch

    from pentachora.autoencoders.svae import PatchSVAE, PatchSVAEConfig

    console = Console()
    overrides = parse_overrides(set_)
    overrides.update(readout=readout, cv_mode=cv_mode)
    if omega_layernorm:
        overrides["omega_layernorm"] = True
    if mhat_sphere_norm:
        overrides["mhat_sphere_norm"] = True
    try:
        config = PatchSVAEConfig.preset(preset, **overrides)
    except (TypeError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    torch.manual_seed(seed)
    model = PatchSVAE(config)
    label = f"PatchSVAE[{preset}{'' if readout == 'svd' else ', NoSVD'}]"
    print_model_card(console, model, label)
    if steps == 0:
        console.print_json(json.dumps({**describe_model(model), "config": dataclasses.asdict(config)}))
        return
    out = out or Path("runs") / f"svae-{preset}{'' if readout == 'svd' else '-nosvd'}"
    run_training(
        console,
        model,
        label,
        data,
        steps,
        batch_size,
        image_size,
        lr,
        warmup,
        grad_clip,
        soft_hand,
        out,
        seed,
        eval_every,
        save_every,
        bf16,
        noise_per_type,
        weight_decay=weight_decay,
        grad_clip_mode=grad_clip_mode,
    )


def run_training(
    console: Console,
    model,
    label: str,
    data: str,
    steps: int,
    batch_size: int,
    image_size: int,
    lr: float,
    warmup: int,
    grad_clip: float,
    soft_hand: bool,
    out: Path,
    seed: int,
    eval_every: int,
    save_every: int,
    bf16: bool,
    noise_per_type: int,
    callbacks: tuple = (),
    eval_tiles: int = 0,
    weight_decay: float = 0.01,
    grad_clip_mode: str = "fixed",
) -> None:
    """Shared body of the `train` commands: train, evaluate, write pictures, print the summary."""
    from pentachora.data.noise import NOISE_TYPES
    from pentachora.data.sources import parse_data_spec
    from pentachora.recipes import build_eval_data, train_autoencoder
    from pentachora.training import TrainingDiverged

    try:
        spec = parse_data_spec(data)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--data") from exc
    if image_size % model.patch_size:
        raise typer.BadParameter(
            f"{image_size} is not a multiple of the patch size {model.patch_size}", param_hint="--image-size"
        )
    try:
        cfg = make_train_config(
            steps,
            batch_size,
            lr,
            out,
            seed,
            eval_every,
            save_every,
            bf16,
            grad_clip,
            warmup,
            weight_decay=weight_decay,
            grad_clip_mode=grad_clip_mode,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    eval_data = build_eval_data(
        spec, image_size, NOISE_TYPES, n_noise_per_type=noise_per_type, max_tiles_per_image=eval_tiles or None
    )
    console.print(f"training {label} on '{spec.spec}' for {steps} steps → {out}")
    try:
        run = train_autoencoder(
            model,
            spec,
            cfg,
            image_size=image_size,
            name=label,
            soft_hand=soft_hand,
            eval_data=eval_data,
            callbacks=callbacks,
        )
    except TrainingDiverged as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(code=2) from exc
    result = {**run.evaluation, **describe_model(run.model)}
    pictures = write_pictures(out, {label: run}, eval_data.tiles01)
    console.print(summary_table(f"{label} after {run.result.steps} steps", {label: result}, NOISE_TYPES))
    for kind, path in pictures.items():
        console.print(f"{kind}: {path}")
    console.print(f"run folder: {out}  (model: {out / 'final'}; metrics: {out / 'metrics.jsonl'})")


# ---------------------------------------------------------------------------- eval


@app.command("eval")
def eval_cmd(
    run: Path = typer.Argument(
        ..., help="Run folder (uses final/ or the latest checkpoint) or checkpoint folder."
    ),
    data: str = typer.Option("images", help=DATA_HELP),
    image_size: int = typer.Option(64, help="Held-out tile / noise image side in pixels."),
    noise_per_type: int = typer.Option(32, min=1, help="Evaluation images per noise type."),
    heavy_tails: str = typer.Option(
        None, help="Noise heavy tails for evaluation: clamp or raw (default: from --data)."
    ),
    eval_tiles: int = typer.Option(0, min=0, help="Cap on evaluation tiles per held-out image (0 = all)."),
    json_out: Path = typer.Option(None, "--json", help="Also write the metrics as JSON here."),
) -> None:
    """Evaluate a trained autoencoder: held-out PSNR/SSIM, per-noise-type MSE, CV, erank, S_delta."""
    from pentachora.data.noise import NOISE_TYPES
    from pentachora.data.sources import parse_data_spec
    from pentachora.recipes import build_eval_data
    from pentachora.recipes.evaluation import evaluate_autoencoder

    console = Console()
    model = load_model_or_exit(console, run)
    try:
        spec = parse_data_spec(data)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--data") from exc
    if image_size % model.patch_size:
        raise typer.BadParameter(
            f"not a multiple of the patch size {model.patch_size}", param_hint="--image-size"
        )
    eval_data = build_eval_data(
        spec, image_size, NOISE_TYPES, n_noise_per_type=noise_per_type, heavy_tails=heavy_tails
    )
    metrics = {**evaluate_autoencoder(model, eval_data), **describe_model(model)}
    console.print(summary_table(f"evaluation of {run}", {model.model_type: metrics}, NOISE_TYPES))
    if json_out is not None:
        json_out.write_text(json.dumps(metrics, indent=2) + "\n")


# ---------------------------------------------------------------------------- reconstruct


@app.command("reconstruct")
def reconstruct_cmd(
    run: Path = typer.Argument(..., help="Run folder or checkpoint folder."),
    image: Path = typer.Argument(..., help="Input image (PNG/JPEG/...), any size."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the reconstruction (PNG)."),
    mode: str = typer.Option(
        "tile",
        help="'tile': cut into training-size tiles (reflect-padded at the border), reconstruct each, stitch; "
        "'pad': reflect-pad to a patch multiple and reconstruct the whole image at once.",
    ),
    tile: int = typer.Option(
        0, help="Tile side for --mode tile (0 = the run's training image size, else 64)."
    ),
) -> None:
    """Reconstruct one image of any size and report its PSNR (in [0, 1] pixels)."""
    import torch

    from pentachora.data.images import load_image_file, psnr, to_model_space, to_pixel_space

    console = Console()
    model = load_model_or_exit(console, run)
    if not image.is_file():
        raise typer.BadParameter(f"{image} does not exist", param_hint="IMAGE")
    x01 = load_image_file(image)  # (3, H, W)
    if mode not in ("tile", "pad"):
        raise typer.BadParameter("mode must be 'tile' or 'pad'", param_hint="--mode")
    p = model.patch_size
    if mode == "tile" and tile <= 0:
        tile = 64
        data_json = Path(run) / "data.json"
        if data_json.is_file():
            tile = int(json.loads(data_json.read_text()).get("image_size", 64))
    step = tile if mode == "tile" else p
    if mode == "tile" and tile % p:
        raise typer.BadParameter(f"tile {tile} is not a multiple of the patch size {p}", param_hint="--tile")
    h, w = x01.shape[-2:]
    ph, pw = (-h) % step, (-w) % step
    padded = torch.nn.functional.pad(
        x01[None], (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate"
    )
    with torch.no_grad():
        if mode == "pad":
            rec = model.reconstruct(to_model_space(padded))
        else:
            hh, ww = padded.shape[-2:]
            tiles = padded.unfold(2, tile, tile).unfold(3, tile, tile)  # (1, 3, r, q, t, t)
            r, q = tiles.shape[2], tiles.shape[3]
            flat = tiles.permute(0, 2, 3, 1, 4, 5).reshape(r * q, 3, tile, tile)
            outs = torch.cat([model.reconstruct(to_model_space(b)) for b in flat.split(32)])
            rec = outs.reshape(1, r, q, 3, tile, tile).permute(0, 3, 1, 4, 2, 5).reshape(1, 3, hh, ww)
    rec01 = to_pixel_space(rec)[..., :h, :w]
    from pentachora.diagnostics.plots import save_image_grid

    save_image_grid(rec01, output, nrow=1, pad=0)
    how = f"{tile}×{tile} tiles" if mode == "tile" else "the whole image at once"
    pad_note = f", reflect-padded by {ph}×{pw} px then cropped back" if (ph or pw) else ""
    console.print(
        f"reconstructed {image} ({w}×{h}) as {how}{pad_note}: PSNR {float(psnr(rec01[0], x01)):.2f} dB → {output}"
    )


# ---------------------------------------------------------------------------- train geovae


@train_app.command("geovae")
def train_geovae(
    preset: str = typer.Option("tiny-12", help="Preset: tiny-12, tiny-48 (CPU), 12:1, 48:1 (16×16 patches)."),
    data: str = typer.Option("images", help=DATA_HELP),
    steps: int = typer.Option(500, min=0, help="Optimizer steps (0 = build and describe the model only)."),
    batch_size: int = typer.Option(16, min=1, help="Images per batch."),
    image_size: int = typer.Option(
        64, min=1, help="Crop / noise image side in pixels (multiple of the patch)."
    ),
    lr: float = typer.Option(1e-3, help="Peak learning rate (AdamW, cosine schedule)."),
    warmup: int = typer.Option(50, min=0, help="Linear warm-up steps."),
    grad_clip: float = typer.Option(1.0, help="Fixed gradient-norm clip (0 = off)."),
    align_fraction: float = typer.Option(
        0.1, help="Fraction of steps in the geometry-first CV alignment phase."
    ),
    set_: list[str] = typer.Option(None, "--set", help="Model config override KEY=VALUE (repeatable)."),
    out: Path = typer.Option(
        None, "--out", "-o", help="Run folder (default runs/geovae-<preset>). Rerun to resume."
    ),
    seed: int = typer.Option(0, help="Seed (data, init, per-step randomness)."),
    eval_every: int = typer.Option(
        100, min=0, help="Evaluate on held-out data every N steps (0 = end only)."
    ),
    save_every: int = typer.Option(250, min=0, help="Checkpoint every N steps (0 = end only)."),
    bf16: bool = typer.Option(False, help="bf16 autocast (geometry stays fp32/fp64)."),
    noise_per_type: int = typer.Option(16, min=1, help="Evaluation images per noise type."),
    eval_tiles: int = typer.Option(0, min=0, help="Cap on evaluation tiles per held-out image (0 = all)."),
) -> None:
    """Train GeoVAE, the SVD-free geometric VAE (geometry-first CV phase, then hand-off), and evaluate it.

    Example: pentachora train geovae --preset tiny-12 --data noise:raw --steps 3000 --out runs/geovae
    """
    import torch

    from pentachora.autoencoders.geovae import GeoVAE, GeoVAEConfig
    from pentachora.recipes import geovae_schedule

    console = Console()
    try:
        config = GeoVAEConfig.preset(preset, **parse_overrides(set_))
    except (TypeError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    torch.manual_seed(seed)
    model = GeoVAE(config)
    label = f"GeoVAE[{preset}]"
    print_model_card(console, model, label)
    if steps == 0:
        console.print_json(json.dumps({**describe_model(model), "config": dataclasses.asdict(config)}))
        return
    out = out or Path("runs") / f"geovae-{preset.replace(':', 'to')}"
    run_training(
        console, model, label, data, steps, batch_size, image_size, lr, warmup, grad_clip, False, out,
        seed, eval_every, save_every, bf16, noise_per_type, callbacks=(geovae_schedule(steps, align_fraction=align_fraction),),
        eval_tiles=eval_tiles,
    )  # fmt: skip
