"""`pentachora demo`: the main job on the embedded default data.

Trains the CPU-sized autoencoders side by side on the photographs shipped inside scikit-image,
evaluates them on held-out whole photos and on all 16 noise types, and writes a run folder with
metrics, a reconstruction grid and training curves. No downloads; a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import typer
from rich.console import Console

from pentachora.cli.app import app
from pentachora.cli.options import MAX_SEED


def _svae(steps: int):
    from pentachora.autoencoders.svae import PatchSVAE, PatchSVAEConfig

    return PatchSVAE(PatchSVAEConfig.preset("tiny")), ()


def _nosvd(steps: int):
    from pentachora.autoencoders.svae import PatchSVAE, PatchSVAEConfig

    return PatchSVAE(PatchSVAEConfig.preset("tiny", readout="linear")), ()


def _geovae(steps: int):
    from pentachora.autoencoders.geovae import GeoVAE, GeoVAEConfig
    from pentachora.recipes import geovae_schedule

    return GeoVAE(GeoVAEConfig.preset("tiny-12")), (geovae_schedule(steps),)


#: Contenders the demo can train: name → (label, builder(steps) → (model, callbacks)).
DEMO_MODELS: dict[str, tuple[str, Callable[[int], tuple[object, tuple]]]] = {
    "geovae": ("GeoVAE (tiny-12)", _geovae),
    "svae": ("PatchSVAE (tiny)", _svae),
    "nosvd": ("NoSVD ablation (tiny)", _nosvd),
}
DEFAULT_MODELS = ("geovae", "svae")


#: What the demo writes into its folder: a marker, one run folder per model, the summary and pictures.
DEMO_MARKER = ".pentachora-demo"
DEMO_FILES = ("summary.json", "reconstructions.png", "curves.png", ".lock")


def check_demo_folder(out: Path, also_ours: tuple[str, ...] = ()) -> None:
    """Refuse a demo folder that holds anything the demo did not write (a real run, a user's notes), and
    mark a new one as the demo's. Nothing is deleted here.

    Raises:
        RunFolderError: ``out`` is a file, or a non-empty folder without the demo's marker, or holds
            entries other than the demo's own.
    """
    from pentachora.errors import RunFolderError
    from pentachora.training.state import RUN_ARTIFACTS

    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--out {out} is a file; the demo needs a folder")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if entries and not (out / DEMO_MARKER).is_file():
        raise RunFolderError(
            f"--out {out} already holds {', '.join(entries[:4])}{' …' if len(entries) > 4 else ''}, which the demo "
            "did not write; give an empty or new folder (-o runs/demo2)"
        )
    allowed_runs = set(RUN_ARTIFACTS) | {".lock"}
    foreign = [
        name for name in entries if name not in DEMO_MODELS and name not in DEMO_FILES and name != DEMO_MARKER
    ]
    for name in entries:
        if name in DEMO_MODELS and (out / name).is_dir():
            foreign += [f"{name}/{p.name}" for p in (out / name).iterdir() if p.name not in allowed_runs]
        elif name in DEMO_MODELS:
            foreign.append(name)
    if foreign:
        raise RunFolderError(
            f"--out {out} holds {', '.join(sorted(foreign)[:4])}, which the demo did not write; move it away or "
            "give another folder (-o runs/demo2)"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARKER).write_text("written by `pentachora demo`; it may replace the run folders here\n")


def clear_demo_run(run_dir: Path) -> None:
    """Remove an earlier demo run's artifacts from ``run_dir`` (under its lock; the lock file stays)."""
    import shutil

    from pentachora.training.state import RUN_ARTIFACTS

    for name in RUN_ARTIFACTS:
        path = run_dir / name
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)


@app.command()
def demo(
    steps: int = typer.Option(
        800, min=1, help="Optimizer steps per model (≈2.5 min for both on 2 idle cores)."
    ),
    models: str = typer.Option(
        ",".join(DEFAULT_MODELS), help=f"Comma-separated contenders from: {', '.join(DEMO_MODELS)}."
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
    import torch

    from pentachora.cli.autoencoders import describe_model, summary_table, write_pictures
    from pentachora.cli.core import set_resume_dir
    from pentachora.cli.options import TrainOptions, check_run_folder, parse_data
    from pentachora.data.noise import NOISE_TYPES
    from pentachora.errors import ConfigError
    from pentachora.recipes import build_eval_data, train_autoencoder
    from pentachora.recipes.evaluation import evaluate_autoencoder
    from pentachora.training.state import run_folder_lock

    check_run_folder(out)  # before anything is trained or deleted: never the current directory
    console = Console()
    names = [m.strip() for m in models.split(",") if m.strip()]
    unknown = [m for m in names if m not in DEMO_MODELS]
    if unknown or not names:
        raise ConfigError(f"--models: unknown model(s) {unknown}; choose from {list(DEMO_MODELS)}")
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
    runs, results = {}, {}
    for name in names:
        label, build = DEMO_MODELS[name]
        run_dir, cfg = out / name, configs[name]
        torch.manual_seed(seed)
        model, callbacks = build(steps)
        before = evaluate_autoencoder(model, eval_data.subset(max_tiles=24, n_noise=4))
        console.print(f"→ {label}: {model.num_parameters():,} parameters")
        set_resume_dir(run_dir)
        with run_folder_lock(run_dir):  # a live training there is refused before anything is deleted
            if fresh:
                clear_demo_run(run_dir)
            run = train_autoencoder(
                model, spec, cfg, image_size=image_size, name=label, eval_data=eval_data, callbacks=callbacks
            )
        runs[label] = run
        results[label] = {
            **run.evaluation,
            **describe_model(run.model),
            "psnr_heldout_before_training": before.get("psnr_heldout"),
        }
        curve = [
            (r["step"], r["psnr_heldout"])
            for r in run.metrics
            if r.get("split") == "eval" and "psnr_heldout" in r
        ]
        trace = " → ".join(f"{v:.2f}" for _, v in curve)
        console.print(
            f"  held-out PSNR during training (dB): {before.get('psnr_heldout', float('nan')):.2f} (init) → {trace}"
        )
    console.print(
        summary_table(f"pentachora demo: {steps} steps each, same data and seed", results, NOISE_TYPES)
    )
    pictures = write_pictures(out, runs, eval_data.tiles01)
    summary = {
        "steps": steps,
        "batch_size": batch_size,
        "image_size": image_size,
        "seed": seed,
        "data": "images (scikit-image sample photos; held out: chelsea, coffee)",
        "wall_time_s": time.perf_counter() - t_start,
        "models": results,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    if results_stem is not None:
        from pentachora.recipes.reporting import run_meta, write_results

        meta = run_meta("pentachora demo", [])
        meta["command"] = (
            f"pentachora demo --steps {steps} --models {models} --out {out} --batch-size {batch_size} "
            f"--image-size {image_size} --lr {lr:g} --seed {seed} --eval-tiles {eval_tiles} "
            f"--noise-per-type {noise_per_type} --results {results_stem}"
        )
        meta["wall_s"] = summary["wall_time_s"]
        write_results(results_stem, {"meta": meta, **summary}, demo_markdown(summary))
        console.print(f"results: {results_stem.with_suffix('.md')}")
    for kind, path in pictures.items():
        console.print(f"{kind}: {path}")
    console.print(f"summary: {out / 'summary.json'}   ({summary['wall_time_s']:.0f} s in total)")


def demo_markdown(summary: dict) -> str:
    """The demo's comparison as a markdown table (what the README quotes)."""
    models = summary["models"]

    def floats(r: dict) -> str:
        ratio = r["compression_ratio"]
        kind = f"{ratio:.0f}:1" if ratio >= 1 else f"a {1 / ratio:.1f}× expansion"
        return f"{r['latent_floats_per_patch']:,} ({kind})"

    first = next(iter(models.values()))
    p = first["patch"]
    rows = [
        ("held-out PSNR / SSIM", lambda r: f"{r['psnr_heldout']:.2f} dB / {r['ssim_heldout']:.3f}"),
        (
            f"floats the decoder consumes per {p}×{p}×3 patch ({first['pixel_floats_per_patch']} pixel floats)",
            floats,
        ),
        ("mean MSE over the 16 noise types", lambda r: f"{r['mse_noise_mean']:.3f}"),
        ("parameters", lambda r: f"{r['parameters'] / 1e6:.2f}M"),
        ("NaN/inf steps", lambda r: f"{r.get('nonfinite_steps', 0):.0f}"),
    ]
    lines = [
        f"# pentachora demo: {summary['steps']} steps each, seed {summary['seed']}, {summary['wall_time_s']:.0f} s in total",
        "",
        "| | " + " | ".join(models) + " |",
        "|---|" + "---:|" * len(models),
    ]
    lines += [f"| {label} | " + " | ".join(fn(r) for r in models.values()) + " |" for label, fn in rows]
    return "\n".join(lines) + "\n"
