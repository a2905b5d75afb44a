"""`pentachora demo`: the main job on the embedded default data (the work is
:mod:`pentachora.recipes.demo`; this module parses and prints).

Trains the CPU-sized autoencoders side by side on the photographs shipped inside scikit-image,
evaluates them on held-out whole photos and on all 16 noise types, and writes a run folder with
metrics, a reconstruction grid and training curves. No downloads; a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console

from pentachora.cli.app import app
from pentachora.cli.options import MAX_SEED

#: The contenders' names, spelled out so ``--help`` needs no torch (a test checks they equal
#: ``pentachora.recipes.demo.DEMO_MODELS``).
DEMO_MODEL_NAMES = ("geovae", "svae", "nosvd")
DEFAULT_MODELS = ("geovae", "svae")


@app.command()
def demo(
    steps: int = typer.Option(
        800, min=1, help="Optimizer steps per model (≈2.5 min for both on 2 idle cores)."
    ),
    models: str = typer.Option(
        ",".join(DEFAULT_MODELS), help=f"Comma-separated contenders from: {', '.join(DEMO_MODEL_NAMES)}."
    ),
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Run folder (one sub-folder per model)."),
    batch_size: int = typer.Option(16, min=1, help="Images per batch."),
    image_size: int = typer.Option(
        64, min=8, max=4096, help="Training crop and evaluation tile side in pixels."
    ),
    lr: float = typer.Option(2e-3, help="Peak learning rate."),
    seed: int = typer.Option(0, min=0, max=MAX_SEED, help="Seed (same data and budget for every model)."),
    fresh: bool = typer.Option(
        True,
        help="Start fresh (replace the demo's earlier runs in --out; a folder the demo did not write is refused) "
        "instead of resuming.",
    ),
    eval_tiles: int = typer.Option(0, min=0, help="Cap on evaluation tiles per held-out photo (0 = all)."),
    noise_per_type: int = typer.Option(16, min=1, help="Evaluation images per noise type."),
    results_stem: Path = typer.Option(
        None,
        "--results",
        help="Also write the printed comparison as a results file pair STEM.json + STEM.md (with this command).",
    ),
) -> None:
    """Train and compare the autoencoders on the embedded photos (CPU, a few minutes, no downloads).

    Prints a side-by-side table (held-out PSNR/SSIM in [0,1] pixel space, per-noise-type MSE, CV,
    effective rank, NaN/inf steps, true latent floats per patch) and writes OUT/summary.json,
    OUT/reconstructions.png and OUT/curves.png.
    """
    from pentachora.cli.autoencoders import describe_model, summary_table, write_pictures
    from pentachora.cli.core import set_resume_dir
    from pentachora.cli.options import TrainOptions, check_run_folder, parse_data
    from pentachora.data.noise import NOISE_TYPES
    from pentachora.errors import ConfigError
    from pentachora.recipes import build_eval_data
    from pentachora.recipes.demo import check_demo_folder, train_demo_model, write_demo_summary

    check_run_folder(out)  # before anything is trained or deleted: never the current directory
    console = Console()
    names = [m.strip() for m in models.split(",") if m.strip()]
    unknown = [m for m in names if m not in DEMO_MODEL_NAMES]
    if unknown or not names:
        raise ConfigError(f"--models: unknown model(s) {unknown}; choose from {list(DEMO_MODEL_NAMES)}")
    configs = {
        name: TrainOptions(steps=steps, batch_size=batch_size, lr=lr, warmup=min(50, steps // 10), grad_clip=1.0,
                           seed=seed, eval_every=max(steps // 4, 1), save_every=steps, out=out / name).train_config()
        for name in names
    }  # fmt: skip  # every option is validated before the disk is touched
    stem = results_stem.resolve() if results_stem is not None else None
    check_demo_folder(
        out, (stem.name + ".json", stem.name + ".md") if stem and stem.parent == out.resolve() else ()
    )
    t_start = time.perf_counter()
    spec = parse_data("images")
    eval_data = build_eval_data(
        spec, image_size, NOISE_TYPES, n_noise_per_type=noise_per_type, max_tiles_per_image=eval_tiles or None
    )
    console.print(
        f"[bold]pentachora demo[/bold]: {len(names)} model(s) × {steps} steps on the embedded photos "
        f"(train: 7 photos, held out: chelsea + coffee → {eval_data.tiles01.shape[0]} tiles of {image_size}²), "
        f"evaluated on held-out tiles and all {len(NOISE_TYPES)} noise types."
    )
    runs = {}
    for name in names:
        set_resume_dir(out / name)
        done = train_demo_model(
            name, configs[name], spec, eval_data, image_size, seed, fresh=fresh, describe=describe_model,
            on_built=lambda label, model: console.print(f"→ {label}: {model.num_parameters():,} parameters"),
        )  # fmt: skip
        runs[done.label] = done
        trace = " → ".join(f"{v:.2f}" for _, v in done.psnr_curve)
        before = done.result["psnr_heldout_before_training"]
        console.print(
            f"  held-out PSNR during training (dB): {float('nan') if before is None else before:.2f} (init) → {trace}"
        )
    results = {label: r.result for label, r in runs.items()}
    console.print(
        summary_table(f"pentachora demo: {steps} steps each, same data and seed", results, NOISE_TYPES)
    )
    pictures = write_pictures(out, {label: r.run for label, r in runs.items()}, eval_data.tiles01)
    summary = {
        "steps": steps, "batch_size": batch_size, "image_size": image_size, "seed": seed,
        "data": "images (scikit-image sample photos; held out: chelsea, coffee)",
        "wall_time_s": time.perf_counter() - t_start, "models": results,
    }  # fmt: skip
    command = (
        f"pentachora demo --steps {steps} --models {models} --out {out} --batch-size {batch_size} "
        f"--image-size {image_size} --lr {lr:g} --seed {seed} --eval-tiles {eval_tiles} "
        f"--noise-per-type {noise_per_type} --results {results_stem}"
    )
    write_demo_summary(out, summary, results_stem, command)
    if results_stem is not None:
        console.print(f"results: {results_stem.with_suffix('.md')}")
    for kind, path in pictures.items():
        console.print(f"{kind}: {path}")
    console.print(f"summary: {out / 'summary.json'}   ({summary['wall_time_s']:.0f} s in total)")
