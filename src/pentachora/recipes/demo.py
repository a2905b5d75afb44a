"""The demo's work (``pentachora demo``): the contenders, its folder rule, one model's training, the
summary and the results file.

The demo trains the CPU-sized autoencoders side by side on the photographs shipped inside
scikit-image, evaluates them on held-out whole photos and on all 16 noise types, and writes a run
folder with metrics, a reconstruction grid and training curves. No downloads.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pentachora.data.spec import DataSpec
from pentachora.recipes.autoencoders import AutoencoderRun, train_autoencoder
from pentachora.recipes.evaluation import EvalData, evaluate_autoencoder
from pentachora.training import TrainConfig
from pentachora.training.state import run_folder_lock

__all__ = [
    "DEMO_FILES",
    "DEMO_MARKER",
    "DEMO_MODELS",
    "DemoModelRun",
    "check_demo_folder",
    "check_demo_image_size",
    "clear_demo_run",
    "demo_markdown",
    "train_demo_model",
    "write_demo_summary",
]


def _svae_config():
    from pentachora.autoencoders.svae import PatchSVAEConfig

    return PatchSVAEConfig.preset("tiny")


def _nosvd_config():
    from pentachora.autoencoders.svae import PatchSVAEConfig

    return PatchSVAEConfig.preset("tiny", readout="linear")


def _geovae_config():
    from pentachora.autoencoders.geovae import GeoVAEConfig

    return GeoVAEConfig.preset("tiny-12")


def _svae(steps: int):
    from pentachora.autoencoders.svae import PatchSVAE

    return PatchSVAE(_svae_config()), ()


def _nosvd(steps: int):
    from pentachora.autoencoders.svae import PatchSVAE

    return PatchSVAE(_nosvd_config()), ()


def _geovae(steps: int):
    from pentachora.autoencoders.geovae import GeoVAE
    from pentachora.recipes import geovae_schedule

    return GeoVAE(_geovae_config()), (geovae_schedule(steps),)


#: Each contender's config (cheap: no model is built), for checks before anything is trained.
DEMO_CONFIGS: dict[str, Callable[[], Any]] = {
    "geovae": _geovae_config,
    "svae": _svae_config,
    "nosvd": _nosvd_config,
}


def check_demo_image_size(names: list[str], image_size: int) -> None:
    """Refuse an image size that is not a multiple of every chosen contender's patch.

    Raises:
        ConfigError: naming the patch and the nearest sizes that work.
    """
    from pentachora.errors import ConfigError

    for name in names:
        patch = DEMO_CONFIGS[name]().patch_size
        if image_size % patch:
            low = max(patch, image_size - image_size % patch)
            raise ConfigError(
                f"--image-size {image_size} is not a multiple of {name}'s patch size {patch}; use e.g. {low} "
                f"or {low + patch}"
            )


#: Contenders the demo can train: name → (label, builder(steps) → (model, callbacks)).
DEMO_MODELS: dict[str, tuple[str, Callable[[int], tuple[object, tuple]]]] = {
    "geovae": ("GeoVAE (tiny-12)", _geovae),
    "svae": ("PatchSVAE (tiny)", _svae),
    "nosvd": ("NoSVD ablation (tiny)", _nosvd),
}


#: What the demo writes into its folder: a marker, one run folder per model, the summary and pictures.
DEMO_MARKER = ".pentachora-demo"
DEMO_FILES = ("summary.json", "reconstructions.png", "curves.png", ".lock")


def check_demo_folder(out: Path, also_ours: tuple[str, ...] = ()) -> None:
    """Refuse a demo folder that holds anything the demo did not write (a real run, a user's notes), and
    mark a new one as the demo's. Nothing is deleted here. ``also_ours`` names more files the demo
    writes there (the ``--results`` pair, when its stem is inside ``out``).

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
        name
        for name in entries
        if name not in DEMO_MODELS
        and name not in DEMO_FILES
        and name not in also_ours
        and name != DEMO_MARKER
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


@dataclass
class DemoModelRun:
    """One contender's demo run: the training run, its summary row and its held-out PSNR curve."""

    label: str
    run: AutoencoderRun
    result: dict[str, Any]
    psnr_curve: list[tuple[int, float]]  # (step, held-out PSNR) of the periodic evaluations


def train_demo_model(
    name: str,
    config: TrainConfig,
    data: DataSpec,
    eval_data: EvalData,
    image_size: int,
    seed: int,
    fresh: bool = True,
    describe: Callable[[Any], dict[str, Any]] = lambda model: {},
    on_built: Callable[[str, Any], None] = lambda label, model: None,
) -> DemoModelRun:
    """Build contender ``name`` (seeded), score it untrained, train it in ``config.out_dir`` under
    the run lock (``fresh`` clears the demo's earlier run there first) and summarise it.

    ``describe(model)`` adds fields to the summary row; ``on_built(label, model)`` is called once the
    model exists (the CLI prints its size there).
    """
    label, build = DEMO_MODELS[name]
    run_dir = Path(config.out_dir)
    torch.manual_seed(seed)
    model, callbacks = build(config.steps)
    before = evaluate_autoencoder(model, eval_data.subset(max_tiles=24, n_noise=4))
    on_built(label, model)
    with run_folder_lock(run_dir):  # a live training there is refused before anything is deleted
        if fresh:
            clear_demo_run(run_dir)
        run = train_autoencoder(
            model, data, config, image_size=image_size, name=label, eval_data=eval_data, callbacks=callbacks
        )
    result = {
        **run.evaluation,
        **describe(run.model),
        "psnr_heldout_before_training": before.get("psnr_heldout"),
    }
    curve = [
        (r["step"], r["psnr_heldout"])
        for r in run.metrics
        if r.get("split") == "eval" and "psnr_heldout" in r
    ]
    return DemoModelRun(label, run, result, curve)


def write_demo_summary(out: Path, summary: dict[str, Any], results_stem: Path | None, command: str) -> None:
    """``OUT/summary.json``, and with ``results_stem`` the results pair STEM.json + STEM.md."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    if results_stem is not None:
        from pentachora.recipes.reporting import run_meta, write_results

        meta = run_meta("pentachora demo", [])
        meta["command"] = command
        meta["wall_s"] = summary["wall_time_s"]
        write_results(results_stem, {"meta": meta, **summary}, demo_markdown(summary))


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
